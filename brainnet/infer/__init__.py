"""Inference over whole scans: sliding windows blended into one prediction (pure tensor code)."""

from brainnet.infer.sliding_window import (
    BLEND_MODES,
    DEFAULT_WINDOW,
    gaussian_weights,
    sliding_window,
    window_starts,
)

__all__ = ["BLEND_MODES", "DEFAULT_WINDOW", "gaussian_weights", "sliding_window", "window_starts"]
