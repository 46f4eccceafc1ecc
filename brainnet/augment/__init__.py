"""Augmentation of training batches on their device: nnU-Net's transforms, batched (see compose.py)."""

from brainnet.augment.compose import (
    BatchAugment,
    BatchParams,
    apply_parameters,
    draw_parameters,
    generator_for,
)
from brainnet.augment.config import PRESETS, AugmentConfig, augment_preset, flips_config, with_overrides
from brainnet.augment.context import context_margin

__all__ = [
    "PRESETS",
    "AugmentConfig",
    "BatchAugment",
    "BatchParams",
    "apply_parameters",
    "augment_preset",
    "context_margin",
    "draw_parameters",
    "flips_config",
    "generator_for",
    "with_overrides",
]
