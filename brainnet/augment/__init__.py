"""Augmentation of training batches on their device: nnU-Net's transforms, batched (see compose.py)."""

from brainnet.augment.compose import (
    BatchAugment,
    BatchParams,
    apply_parameters,
    draw_parameters,
    generator_for,
)
from brainnet.augment.config import PRESETS, AugmentConfig, augment_preset, flips_config, with_overrides

__all__ = [
    "PRESETS",
    "AugmentConfig",
    "BatchAugment",
    "BatchParams",
    "apply_parameters",
    "augment_preset",
    "draw_parameters",
    "flips_config",
    "generator_for",
    "with_overrides",
]
