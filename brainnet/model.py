"""The course's 3D U-Net, ported layer for layer from Keras to PyTorch.

Source: ``unet_model_3d`` of ellisdg/3DUnetCNN as used in the course (Keras, ``channels_first``)::

    for d in range(depth):                         # encoder
        conv(base * 2**d) -> conv(base * 2**d * 2) -> MaxPool3D(2)   (no pooling at the bottom)
    for d in range(depth - 2, -1, -1):             # decoder
        UpSampling3D(2) | Conv3DTranspose(k=2, s=2, filters = current channels)
        concat([up, encoder level d second conv], axis=1)
        conv(channels of that skip) -> conv(channels of that skip)
    Conv3D(n_labels, 1x1x1) -> sigmoid

Every ``conv`` is ``Conv3D(3x3x3, padding="same")`` (with bias, as Keras' default) -> optional
BatchNormalization / InstanceNormalization -> ReLU. The port keeps Keras' defaults where they differ
from PyTorch's: ``UpSampling3D`` repeats voxels (nearest neighbour), weights are Glorot-uniform with zero
biases, and both normalizations use ``epsilon=1e-3`` (BatchNorm with Keras' momentum 0.99, i.e. PyTorch
``momentum=0.01``; keras-contrib's InstanceNormalization is affine).

Parameter count of the default config (in 4, out 3, depth 4, base 32, no normalization, upsample):
16,318,307 (:data:`DEFAULT_PARAMETER_COUNT`, equal to the layer-by-layer Keras arithmetic of
:func:`expected_parameter_count`); ``upsampling="transpose"`` adds the three transposed convolutions
(19,071,715); normalization adds 2 parameters per channel of every 3x3x3 conv (16,322,979).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from brainprep.config import Params
from brainprep.errors import ConfigError, ShapeMismatchError

NORMALIZATIONS = ("none", "batch", "instance")
UPSAMPLINGS = ("upsample", "transpose")

#: Trainable parameters of ``UNet3D(ModelConfig())``; pinned by tests/test_model.py.
DEFAULT_PARAMETER_COUNT = 16_318_307

# Keras defaults (BatchNormalization / keras-contrib InstanceNormalization), kept for a faithful port.
_KERAS_NORM_EPS = 1e-3
_KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 == PyTorch momentum 0.01


@dataclass(frozen=True)
class ModelConfig(Params):
    """Architecture of :class:`UNet3D`; stored verbatim in checkpoints.

    Attributes:
        in_channels: input channels (FLAIR, T1w, T1gd, T2w = 4).
        out_channels: output channels, one sigmoid per foreground class of the dataset spec (3 for gliomas).
        depth: number of resolution levels; the input is pooled ``depth - 1`` times.
        base_filters: filters of the first convolution; level ``d`` uses ``base * 2**d`` and ``* 2``.
        normalization: ``none`` (course default), ``batch`` or ``instance`` after every 3x3x3 conv.
        upsampling: ``upsample`` (course default, Keras ``UpSampling3D``: nearest-neighbour repetition)
            or ``transpose`` (``Conv3DTranspose`` k=2 s=2, the course's ``deconvolution=True``).
    """

    in_channels: int = 4
    out_channels: int = 3
    depth: int = 4
    base_filters: int = 32
    normalization: str = "none"
    upsampling: str = "upsample"

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "depth", "base_filters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"ModelConfig.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.upsampling not in UPSAMPLINGS:
            raise ConfigError(f"ModelConfig.upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this (``2 ** (depth - 1)`` poolings)."""
        return 2 ** (self.depth - 1)

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raise :class:`ShapeMismatchError` unless ``shape`` fits the network.

        Args:
            shape: ``(B, C, X, Y, Z)``, ``(C, X, Y, Z)`` or the spatial ``(X, Y, Z)`` alone.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (3, 4, 5):
            raise ShapeMismatchError(
                f"model input must be (B, C, X, Y, Z), (C, X, Y, Z) or (X, Y, Z), got {shape}"
            )
        if len(shape) >= 4 and shape[-4] != self.in_channels:
            raise ShapeMismatchError(
                f"model input must have {self.in_channels} channels, found {shape[-4]} in shape {shape}"
            )
        spatial = shape[-3:]
        bad = [s for s in spatial if s % self.divisor != 0]
        if bad:
            raise ShapeMismatchError(
                f"model input spatial size must be a multiple of {self.divisor} (2**(depth-1), depth "
                f"{self.depth}) on every axis, found {spatial}"
            )


def _conv_block(in_channels: int, out_channels: int, normalization: str) -> nn.Sequential:
    """Course's ``create_convolution_block``: Conv3d 3x3x3 same (with bias) -> [norm] -> ReLU."""
    layers: list[nn.Module] = [nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)]
    if normalization == "batch":
        layers.append(nn.BatchNorm3d(out_channels, eps=_KERAS_NORM_EPS, momentum=_KERAS_BN_MOMENTUM))
    elif normalization == "instance":
        layers.append(nn.InstanceNorm3d(out_channels, eps=_KERAS_NORM_EPS, affine=True))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _up(channels: int, upsampling: str) -> nn.Module:
    """Course's ``get_up_convolution`` with pool size 2."""
    if upsampling == "transpose":
        return nn.ConvTranspose3d(channels, channels, kernel_size=2, stride=2)
    return nn.Upsample(scale_factor=2, mode="nearest")


class UNet3D(nn.Module):
    """The course's 3D U-Net (``unet_model_3d``), channels first.

    ``forward`` maps float32 ``(B, in_channels, X, Y, Z)`` to sigmoid probabilities of shape
    ``(B, out_channels, X, Y, Z)``; ``forward_logits`` returns the pre-sigmoid values (use it with
    ``torch.sigmoid`` in float32 or a logits loss under mixed precision). ``X, Y, Z`` must be multiples
    of ``config.divisor``.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        cfg = self.config
        self.encoder = nn.ModuleList()
        channels = cfg.in_channels
        skip_channels: list[int] = []
        for d in range(cfg.depth):
            first = cfg.base_filters * 2**d
            self.encoder.append(
                nn.Sequential(
                    _conv_block(channels, first, cfg.normalization),
                    _conv_block(first, first * 2, cfg.normalization),
                )
            )
            channels = first * 2
            skip_channels.append(channels)
        self.pool = nn.MaxPool3d(kernel_size=2)
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for d in range(cfg.depth - 2, -1, -1):
            skip = skip_channels[d]
            self.ups.append(_up(channels, cfg.upsampling))
            self.decoder.append(
                nn.Sequential(
                    _conv_block(channels + skip, skip, cfg.normalization),
                    _conv_block(skip, skip, cfg.normalization),
                )
            )
            channels = skip
        self.head = nn.Conv3d(channels, cfg.out_channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: Glorot-uniform kernels, zero biases, norm scale 1 / shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm3d | nn.InstanceNorm3d):
                module.reset_parameters()

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs ``(B, out_channels, X, Y, Z)`` of float input ``(B, in_channels, X, Y, Z)``."""
        self.config.check_input_shape(x.shape)
        skips: list[torch.Tensor] = []
        for d, level in enumerate(self.encoder):
            x = level(x)
            if d < self.config.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, level, skip in zip(self.ups, self.decoder, reversed(skips), strict=True):
            x = level(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities ``(B, out_channels, X, Y, Z)`` (the course's final activation)."""
        return torch.sigmoid(self.forward_logits(x))


def build_model(config: ModelConfig | None = None) -> UNet3D:
    """A freshly initialised :class:`UNet3D` for ``config`` (default: the course's network)."""
    return UNet3D(config if config is not None else ModelConfig())


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def expected_parameter_count(config: ModelConfig) -> int:
    """Closed-form parameter count of :class:`UNet3D` for ``config`` (cross-checks the module)."""

    def conv(cin: int, cout: int, k: int = 3) -> int:
        norm = 2 * cout if config.normalization != "none" else 0
        return cin * cout * k**3 + cout + norm

    total, channels, skips = 0, config.in_channels, []
    for d in range(config.depth):
        first = config.base_filters * 2**d
        total += conv(channels, first) + conv(first, 2 * first)
        channels = 2 * first
        skips.append(channels)
    for d in range(config.depth - 2, -1, -1):
        if config.upsampling == "transpose":
            total += channels * channels * 8 + channels
        total += conv(channels + skips[d], skips[d]) + conv(skips[d], skips[d])
        channels = skips[d]
    return total + channels * config.out_channels + config.out_channels


__all__ = [
    "DEFAULT_PARAMETER_COUNT",
    "NORMALIZATIONS",
    "UPSAMPLINGS",
    "ModelConfig",
    "UNet3D",
    "build_model",
    "count_parameters",
    "expected_parameter_count",
]
