"""Parameters of a synthetic BraTS-like dataset."""

from __future__ import annotations

from dataclasses import dataclass

from brainprep.config import Params
from brainprep.errors import ConfigError

SYNTH_LAYOUTS: tuple[str, ...] = ("msd", "brats2021", "brats2023")

#: shape of the real BraTS / MSD Task01 grid (1 mm voxels); geometry is defined in its millimetres.
REFERENCE_SHAPE: tuple[int, int, int] = (240, 240, 155)

#: the patch the course cuts; ``small_tumour_every`` cases are too small for any patch of this size
#: (scaled down per axis to the volume) to hold more than ``SMALL_TUMOUR_MAX_FRACTION`` tumour.
REFERENCE_PATCH: tuple[int, int, int] = (160, 160, 16)
SMALL_TUMOUR_MAX_FRACTION: float = 0.05


@dataclass(frozen=True)
class SynthParams(Params):
    """How a synthetic dataset is made; same parameters -> same bytes on disk.

    Attributes:
        n_cases: number of cases (ids ``BRATS_001`` ...).
        shape: (X, Y, Z) voxels; anatomy is defined on the 240x240x155 1 mm grid and scaled per axis.
        seed: base seed; case ``index`` draws from ``SeedSequence([seed, index])`` so a case does
            not depend on ``n_cases``.
        layout: ``msd`` (imagesTr/labelsTr 4D), ``brats2021`` or ``brats2023`` (per-case folders).
        small_tumour_every: every k-th case (BRATS_00k, BRATS_00(2k), ...) gets a tumour too small for
            any patch to hold more than 5 % tumour; 0 = never. Ignored with ``labels_from``.
        labels_from: folder of real MSD label maps (``labelsTr``); case ``index`` takes the label map
            ``sorted(files)[index % n_files]`` (centre-cropped/zero-padded to ``shape``) as its tumour.
        mimics: tumour mimics per case (:mod:`brainprep.synth.mimics`: FLAIR/T2 hyperintensities and
            T1gd-enhancing foci in healthy brain, label 0), clear of the tumour; 0 = none (the default:
            the same bytes as before mimics existed).
        skull_stripped: like the distributed MSD Task01 / BraTS images, every voxel outside the brain
            (CSF, grey and white matter, tumour) is exactly 0; False keeps the whole head (scalp, skull).
    """

    n_cases: int = 8
    shape: tuple[int, int, int] = REFERENCE_SHAPE
    seed: int = 0
    layout: str = "msd"
    small_tumour_every: int = 4
    labels_from: str | None = None
    skull_stripped: bool = True
    mimics: int = 0

    def __post_init__(self) -> None:
        if self.n_cases < 1:
            raise ConfigError(f"n_cases must be >= 1, got {self.n_cases}")
        if len(self.shape) != 3 or any(int(s) < 8 for s in self.shape):
            raise ConfigError(f"shape must be three ints >= 8, got {self.shape}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.layout not in SYNTH_LAYOUTS:
            raise ConfigError(f"layout must be one of {SYNTH_LAYOUTS}, got {self.layout!r}")
        if self.small_tumour_every < 0:
            raise ConfigError(f"small_tumour_every must be >= 0, got {self.small_tumour_every}")
        if self.labels_from is not None:
            object.__setattr__(self, "labels_from", str(self.labels_from))
        if isinstance(self.mimics, bool) or not isinstance(self.mimics, int) or self.mimics < 0:
            raise ConfigError(f"mimics must be an int >= 0, got {self.mimics!r}")
        if not isinstance(self.skull_stripped, bool):
            raise ConfigError(f"skull_stripped must be true or false, got {self.skull_stripped!r}")

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The course patch scaled to the volume: min(160, X) x min(160, Y) x min(16, Z)."""
        return tuple(min(p, s) for p, s in zip(REFERENCE_PATCH, self.shape, strict=True))  # type: ignore[return-value]

    def is_small_tumour_case(self, index: int) -> bool:
        """True for the (0-based) ``index`` of every ``small_tumour_every``-th case."""
        k = self.small_tumour_every
        return self.labels_from is None and k > 0 and (index + 1) % k == 0

    def case_id(self, index: int) -> str:
        """MSD-style id of the 0-based ``index``: 0 -> ``BRATS_001``."""
        return f"BRATS_{index + 1:03d}"
