"""Augmentation parameters: a frozen :class:`AugmentConfig` (one nested block per transform) and its presets.

Presets (:func:`augment_preset`):

- ``none``: no augmentation (the course trains without any).
- ``flips``: random flips along X, Y and Z, each with probability 1/2 (brainnet's former ``--flips``).
- ``nnunet``: nnU-Net v2's default training augmentation. Every probability and range below is the one of
  ``nnUNetTrainer.get_training_transforms`` (``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py`` of
  nnunetv2 2.8.1 = github.com/MIC-DKFZ/nnUNet at 0e49508, lines 739-839, cited as ``trainer.py:LINE``)
  and of the batchgeneratorsv2 transforms it builds (github.com/MIC-DKFZ/batchgeneratorsv2 at 3cb4f07,
  cited by file). ``MaskImageTransform`` (``trainer.py:838-842``), which zeroes the image outside the
  brain after the other transforms, is not a block of the config: it follows the standardization, as in
  nnU-Net, where it runs whenever the normalization used the brain mask. Batches standardized
  ``volume-nonzero`` (0 outside the brain, as nnU-Net's: a patch store built so, or a volume store's
  windows) are masked after augmentation (:mod:`brainnet.augment.brain_mask`,
  ``BatchAugment(mask_background=True)``); the course's ``patch-slice`` standardization maps the
  background with its slice (at training and inference), so its batches are not.

Every field of a preset can be overridden (:func:`with_overrides`, ``brainnet train --augment-set
noise.p=0.2``). Defaults of each block are nnU-Net's ranges with probability 0, so a block is off until a
preset or an override gives it a probability.

Patch anisotropy: nnU-Net augments a patch whose longest side exceeds 3x its first side
(``ANISO_THRESHOLD = 3``, ``nnunetv2/configuration.py:7``; ``trainer.py:490``) in 2D slices ("dummy 2D"):
rotation only in-plane, by up to +-180 degrees (``trainer.py:493``), scaling only in-plane and no simulated
low resolution along the short axis (``ignore_axes``, ``trainer.py:753, 807``). brainnet applies the same rule
to the patch's shortest axis (its voxels are isotropic, so shape is what makes a patch anisotropic): the
course's 160x160x16 patch is augmented in the X-Y plane, nnU-Net's 112x160x128 BraTS patch in 3D.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brainprep.config import Params
from brainprep.errors import ConfigError

PADDINGS: tuple[str, ...] = ("reflection", "zeros", "border")
PRESETS: tuple[str, ...] = ("none", "flips", "nnunet")


def _check_probability(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{owner}.{name} must be a probability in [0, 1], got {value}")


def _check_range(owner: str, name: str, value: tuple[float, float], low: float | None = None) -> None:
    if len(value) != 2 or not all(math.isfinite(float(v)) for v in value) or value[0] > value[1]:
        raise ConfigError(f"{owner}.{name} must be a range (low, high) with low <= high, got {value}")
    if low is not None and value[0] < low:
        raise ConfigError(f"{owner}.{name} must lie above {low}, got {value}")


def _validate(block: Params, ranges: Mapping[str, float | None]) -> None:
    """Check every ``p*`` field is a probability and every named range is ordered (above its floor)."""
    owner = type(block).__name__
    for f in dataclasses.fields(block):  # type: ignore[arg-type]
        value = getattr(block, f.name)
        if f.name == "p" or f.name.startswith("p_"):
            _check_probability(owner, f.name, value)
        elif f.name in ranges:
            object.__setattr__(block, f.name, tuple(float(v) for v in value))
            _check_range(owner, f.name, getattr(block, f.name), ranges[f.name])


@dataclass(frozen=True)
class MirrorParams(Params):
    """Flips along each of ``axes`` (0 X, 1 Y, 2 Z) with probability ``p`` per axis and sample.

    nnU-Net: every axis, probability 1/2 each (``trainer.py:832-836``; ``spatial/mirroring.py``:
    ``torch.rand(1) < 0.5`` per axis), applied to every sample (no ``RandomTransform`` around it).
    """

    axes: tuple[int, ...] = ()
    p: float = 0.5

    def __post_init__(self) -> None:
        axes = (self.axes,) if isinstance(self.axes, int) else self.axes  # "--augment-set mirror.axes=2"
        if any(isinstance(a, bool) or float(a) != int(a) for a in axes):  # 1.7 is no axis, nor True
            raise ConfigError(f"MirrorParams.axes must be distinct among 0, 1, 2, got {tuple(axes)}")
        object.__setattr__(self, "axes", tuple(int(a) for a in axes))
        if any(a not in (0, 1, 2) for a in self.axes) or len(set(self.axes)) != len(self.axes):
            raise ConfigError(f"MirrorParams.axes must be distinct among 0, 1, 2, got {self.axes}")
        _validate(self, {})

    @property
    def active(self) -> bool:
        return bool(self.axes) and self.p > 0


@dataclass(frozen=True)
class SpatialParams(Params):
    """Rotation, scaling and elastic deformation: one sampling grid per sample, about the patch centre.

    Attributes:
        p_rotation: probability of a rotation (nnU-Net 0.2, ``trainer.py:762``).
        rotation_degrees: angle range about each axis for a 3D patch (nnU-Net +-30, ``trainer.py:495``).
        rotation_degrees_2d: in-plane range for an anisotropic patch (nnU-Net +-180, ``trainer.py:493``).
        p_scaling: probability of a scaling (nnU-Net 0.2, ``trainer.py:763``).
        scaling: factor range, one factor for all axes (nnU-Net (0.7, 1.4) with
            ``p_synchronize_scaling_across_axes=1``, ``trainer.py:763``); a factor above 1 samples a larger
            field of view, so structures shrink (``spatial/spatial.py``: "larger numbers = smaller objects").
        p_elastic: probability of an elastic deformation (nnU-Net 0, ``trainer.py:761``).
        elastic_magnitude: range of the standard deviation, in voxels, of the random displacement of the
            control points (brainnet's own; nnU-Net leaves elastic deformation off).
        elastic_spacing: voxels between control points of the displacement field (interpolated trilinearly).
        anisotropy_threshold: longest / shortest patch side above which the patch is augmented in-plane
            (nnU-Net 3, ``nnunetv2/configuration.py:7``).
        padding: what a grid point outside the patch reads, for image and labels alike: ``reflection``
            (the patch mirrored at its faces), ``zeros`` (image 0, label background) or ``border`` (the
            nearest face voxel). See :mod:`brainnet.augment.compose` for why a patch store reflects.
    """

    p_rotation: float = 0.0
    rotation_degrees: tuple[float, float] = (-30.0, 30.0)
    rotation_degrees_2d: tuple[float, float] = (-180.0, 180.0)
    p_scaling: float = 0.0
    scaling: tuple[float, float] = (0.7, 1.4)
    p_elastic: float = 0.0
    elastic_magnitude: tuple[float, float] = (0.0, 2.0)
    elastic_spacing: float = 16.0
    anisotropy_threshold: float = 3.0
    padding: str = "reflection"

    def __post_init__(self) -> None:
        _validate(
            self,
            {
                "rotation_degrees": None,
                "rotation_degrees_2d": None,
                "scaling": 1e-3,
                "elastic_magnitude": 0.0,
            },
        )
        if self.padding not in PADDINGS:
            raise ConfigError(f"SpatialParams.padding must be one of {PADDINGS}, got {self.padding!r}")
        if not self.elastic_spacing >= 2:
            raise ConfigError(
                f"SpatialParams.elastic_spacing must be >= 2 voxels, got {self.elastic_spacing}"
            )
        if not self.anisotropy_threshold >= 1:
            raise ConfigError(
                f"SpatialParams.anisotropy_threshold must be >= 1, got {self.anisotropy_threshold}"
            )

    @property
    def probabilities(self) -> tuple[float, float, float]:
        """(rotation, scaling, elastic) probabilities."""
        return self.p_rotation, self.p_scaling, self.p_elastic

    @property
    def active(self) -> bool:
        return max(self.probabilities) > 0


@dataclass(frozen=True)
class NoiseParams(Params):
    """Additive Gaussian noise, one standard deviation per sample for all channels.

    nnU-Net: probability 0.1 (``trainer.py:778``), standard deviation uniform in (0, 0.1) (the argument is
    named ``noise_variance`` but ``intensity/gaussian_noise.py`` uses the draw as the std), shared by the
    channels (``synchronize_channels=True``, ``trainer.py:777``).
    """

    p: float = 0.0
    std: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        _validate(self, {"std": 0.0})


@dataclass(frozen=True)
class BlurParams(Params):
    """Gaussian blur, a separable kernel per channel with its own sigma per axis.

    nnU-Net: probability 0.2 (``trainer.py:786``), sigma uniform in (0.5, 1) voxels drawn per channel and axis
    (``synchronize_channels=False, synchronize_axes=False``), each channel blurred with probability 0.5
    (``p_per_channel=0.5``, ``trainer.py:781-785``); kernel truncated at 3 sigma on either side with mirrored
    borders (``noise/gaussian_blur.py``: ``truncate=6``, ``pad(..., mode="reflect")``).
    """

    p: float = 0.0
    sigma: tuple[float, float] = (0.5, 1.0)
    p_per_channel: float = 0.5

    def __post_init__(self) -> None:
        _validate(self, {"sigma": 1e-3})


@dataclass(frozen=True)
class BrightnessParams(Params):
    """Multiplicative brightness: each channel times a factor.

    nnU-Net: probability 0.15 (``trainer.py:793``), factor from ``BGContrast((0.75, 1.25))`` (half the time
    uniform below 1, half above: ``intensity/contrast.py``), one per channel (``trainer.py:789-792``).
    """

    p: float = 0.0
    multiplier: tuple[float, float] = (0.75, 1.25)

    def __post_init__(self) -> None:
        _validate(self, {"multiplier": 0.0})


@dataclass(frozen=True)
class ContrastParams(Params):
    """Contrast about each channel's mean, clipped to the channel's former range.

    nnU-Net: probability 0.15 (``trainer.py:801``), factor from ``BGContrast((0.75, 1.25))`` per channel,
    ``preserve_range=True`` (``trainer.py:796-800``).
    """

    p: float = 0.0
    factor: tuple[float, float] = (0.75, 1.25)
    preserve_range: bool = True

    def __post_init__(self) -> None:
        _validate(self, {"factor": 0.0})


@dataclass(frozen=True)
class LowResolutionParams(Params):
    """Simulated low resolution: nearest-neighbour downsampling by a factor, then trilinear upsampling.

    nnU-Net: probability 0.25 (``trainer.py:811``), factor uniform in (0.5, 1) per channel, the same on every
    axis (``synchronize_axes=True``), each channel with probability 0.5 (``trainer.py:804-810``); the short
    axis of an anisotropic patch is left alone (``ignore_axes``).
    """

    p: float = 0.0
    scale: tuple[float, float] = (0.5, 1.0)
    p_per_channel: float = 0.5

    def __post_init__(self) -> None:
        _validate(self, {"scale": 1e-3})
        if self.scale[1] > 1:
            raise ConfigError(f"LowResolutionParams.scale must be <= 1, got {self.scale}")


@dataclass(frozen=True)
class GammaParams(Params):
    """Gamma on each channel rescaled to [0, 1], optionally of the inverted image, then its stats restored.

    nnU-Net has two: the inverted one with probability 0.1 (``p_invert_image=1``, ``trainer.py:813-820``) and
    the plain one with probability 0.3 (``trainer.py:822-829``); gamma from ``BGContrast((0.7, 1.5))`` per
    channel; mean and std restored (``p_retain_stats=1``).
    """

    p: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)
    invert: bool = False
    retain_stats: bool = True

    def __post_init__(self) -> None:
        _validate(self, {"gamma": 1e-3})


@dataclass(frozen=True)
class AugmentConfig(Params):
    """The whole augmentation of a training batch, in nnU-Net's order: spatial, noise, blur, brightness,
    contrast, low resolution, inverted gamma, gamma, mirroring (``trainer.py:757-837``).

    The default is no augmentation; build one with :func:`augment_preset`.
    """

    spatial: SpatialParams = SpatialParams()
    noise: NoiseParams = NoiseParams()
    blur: BlurParams = BlurParams()
    brightness: BrightnessParams = BrightnessParams()
    contrast: ContrastParams = ContrastParams()
    low_resolution: LowResolutionParams = LowResolutionParams()
    gamma_inverted: GammaParams = GammaParams(invert=True)
    gamma: GammaParams = GammaParams()
    mirror: MirrorParams = MirrorParams()

    @property
    def active(self) -> bool:
        """Whether any transform can fire (an inactive config leaves every batch untouched)."""
        blocks = (self.noise, self.blur, self.brightness, self.contrast, self.low_resolution)
        return (
            self.spatial.active
            or self.mirror.active
            or any(b.p > 0 for b in (*blocks, self.gamma_inverted, self.gamma))
        )


#: nnU-Net's default probabilities (the ranges are every block's defaults); citations in each block.
_NNUNET: dict[str, Any] = {
    "spatial.p_rotation": 0.2,  # trainer.py:762
    "spatial.p_scaling": 0.2,  # trainer.py:763
    "noise.p": 0.1,  # trainer.py:778
    "blur.p": 0.2,  # trainer.py:786
    "brightness.p": 0.15,  # trainer.py:793
    "contrast.p": 0.15,  # trainer.py:801
    "low_resolution.p": 0.25,  # trainer.py:811
    "gamma_inverted.p": 0.1,  # trainer.py:820
    "gamma.p": 0.3,  # trainer.py:829
    "mirror.axes": (0, 1, 2),  # trainer.py:496 (mirror_axes of a 3D configuration), 832-836
}


def with_overrides(config: AugmentConfig, overrides: Mapping[str, Any]) -> AugmentConfig:
    """``config`` with fields replaced, named ``block.field`` (``{"noise.p": 0.5, "mirror.axes": (0,)}``).

    Raises:
        ConfigError: an unknown block or field, a value not of the field's type, or one its block refuses.
    """
    changes: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        block, _, name = key.partition(".")
        if block not in {f.name for f in dataclasses.fields(AugmentConfig)}:
            raise ConfigError(f"AugmentConfig has no block {block!r} (in override {key!r})")
        fields = {f.name for f in dataclasses.fields(getattr(config, block))}
        if name not in fields:
            raise ConfigError(f"AugmentConfig.{block} has no field {name!r}; fields: {sorted(fields)}")
        changes.setdefault(block, {})[name] = _typed(key, getattr(getattr(config, block), name), value)
    return config.replace(**{block: getattr(config, block).replace(**c) for block, c in changes.items()})


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _typed(key: str, current: Any, value: Any) -> Any:
    """``value`` as the field ``key``, whose value now is ``current``, takes it: true/false for a flag, a
    number for a number, numbers for a range or axes (one number: a 1-tuple), a word for a word.

    Raises:
        ConfigError: ``value`` is not of that type (``noise.p="abc"``), naming the field and the type.
    """
    if isinstance(current, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif _is_number(current):
        ok, expected = _is_number(value), "a number"
    elif isinstance(current, tuple):
        value = (value,) if _is_number(value) else value
        ok = isinstance(value, tuple | list) and all(_is_number(v) for v in value)
        expected, value = "numbers separated by commas", tuple(value) if ok else value
    else:
        ok, expected = isinstance(value, str), "a word"
    if not ok:
        raise ConfigError(f"AugmentConfig.{key} must be {expected}, got {value!r}")
    return value


def augment_preset(name: str, overrides: Mapping[str, Any] | None = None) -> AugmentConfig:
    """The preset ``name`` (one of :data:`PRESETS`) with ``overrides`` (see :func:`with_overrides`)."""
    if name not in PRESETS:
        raise ConfigError(f"augmentation preset must be one of {PRESETS}, got {name!r}")
    base = AugmentConfig()
    if name == "flips":
        base = with_overrides(base, {"mirror.axes": (0, 1, 2)})
    elif name == "nnunet":
        base = with_overrides(base, _NNUNET)
    return with_overrides(base, overrides or {})


def flips_config(axes: tuple[int, ...]) -> AugmentConfig:
    """The augmentation of a former ``TrainConfig.flip_axes``: flips along ``axes`` (none when empty)."""
    return with_overrides(AugmentConfig(), {"mirror.axes": tuple(axes)}) if axes else AugmentConfig()
