"""How a patch store is made: the frozen parameter sets of the build, written into every store.

``BuildParams.to_dict()`` is stored verbatim in the store attributes (``brainprep.params``), in the
manifest and in brainnet checkpoints, so any store or model says exactly how its patches were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from brainprep.config import Params
from brainprep.errors import ConfigError

SAMPLERS = ("exact", "rejection")
STANDARDIZE_METHODS = ("patch-slice", "volume-nonzero")
STORE_DTYPES = ("float16", "float32")
#: ``patches``: K standardized patches per case (the course-faithful store); ``volumes``: each case's raw
#: image cropped to the brain, from which training cuts fresh windows (:mod:`brainprep.store.volume_schema`).
STORE_KINDS = ("patches", "volumes")
#: ``uniform``: refuse a dataset of mixed voxel spacing; ``resample``: resample every case off the target
#: spacing to it; ``allow-mixed``: build every case at its own spacing (see :class:`SpacingParams`).
SPACING_POLICIES = ("uniform", "resample", "allow-mixed")


@dataclass(frozen=True)
class SamplingParams(Params):
    """Where patches are cut.

    Attributes:
        patch_size: (X, Y, Z) voxels of a patch; the course uses 160x160x16.
        patches_per_case: K, patches drawn per case.
        background_threshold: keep a patch only when its background share is strictly below this
            (the course's ``get_sub_volume``: 0.95).
        sampler: ``exact`` draws uniformly among all valid corners (summed-area table); ``rejection``
            reproduces the course's loop of random corners, giving up after ``max_tries``.
        max_tries: tries per patch of the rejection sampler (course: 1000).
    """

    patch_size: tuple[int, int, int] = (160, 160, 16)
    patches_per_case: int = 20
    background_threshold: float = 0.95
    sampler: str = "exact"
    max_tries: int = 1000

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or any(int(s) < 1 for s in self.patch_size):
            raise ConfigError(f"patch_size must be three positive ints, got {self.patch_size}")
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        if self.patches_per_case < 1:
            raise ConfigError(f"patches_per_case must be >= 1, got {self.patches_per_case}")
        if not 0.0 < self.background_threshold <= 1.0:
            raise ConfigError(f"background_threshold must be in (0, 1], got {self.background_threshold}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.max_tries < 1:
            raise ConfigError(f"max_tries must be >= 1, got {self.max_tries}")

    @property
    def min_tumour_fraction(self) -> float:
        """A patch is valid when its tumour fraction is strictly above this (1 - threshold)."""
        return 1.0 - self.background_threshold


@dataclass(frozen=True)
class StandardizeParams(Params):
    """How intensities are standardized.

    Attributes:
        method: ``patch-slice`` (course: each channel of each z-slice of the patch to mean 0 / std 1,
            a slice with std 0 stays 0) or ``volume-nonzero`` (nnU-Net: per channel over the nonzero
            brain voxels of the whole volume).
    """

    method: str = "patch-slice"

    def __post_init__(self) -> None:
        if self.method not in STANDARDIZE_METHODS:
            raise ConfigError(f"standardize method must be one of {STANDARDIZE_METHODS}, got {self.method!r}")


#: lz4hc level of a Zarr volume store's case arrays (brainprep/store/volume_schema.py "Chunks and codecs")
DEFAULT_LEVEL_VOLUMES_ZARR = 3


@dataclass(frozen=True)
class StoreParams(Params):
    """How patches are laid out on disk.

    Attributes:
        format: ``zarr`` (Zarr v3, sharded) or ``hdf5``.
        dtype: image dtype in the store, ``float16`` (default) or ``float32``.
        kind: ``patches`` (default) or ``volumes`` (see :data:`STORE_KINDS`).
        compression_level: the level of the store's compressor: zstd (a Zarr patch store), lz4hc (a Zarr
            volume store, :data:`brainprep.store.volume_schema.BLOSC_CNAME`) or gzip (HDF5). ``None``
            (the default) resolves to :data:`DEFAULT_LEVEL_VOLUMES_ZARR` for a Zarr volume store and to 1
            otherwise. Patch stores, level 1: on the course's real patches (standardized, float16, blosc
            zstd + shuffle) it encodes about 3.4x faster than level 3, for a ratio of 2.66 instead of
            2.75 (3% more bytes; synthetic 240x240x155 patches: 1.78 vs 1.82) and the same decode
            speed; at level 3 encoding was up to half of a case's build time. HDF5 (shuffle + gzip):
            ratio 2.78 vs 2.84, encoding 1.25x faster. Volume stores: see the schema's "Chunks and codecs".
    """

    format: str = "zarr"
    dtype: str = "float16"
    compression_level: int | None = None
    kind: str = "patches"

    def __post_init__(self) -> None:
        # imported here: brainprep.store imports this module (its reader reads BuildParams)
        from brainprep.store.locations import STORE_FORMATS

        if self.format not in STORE_FORMATS:
            raise ConfigError(f"store format must be one of {STORE_FORMATS}, got {self.format!r}")
        if self.dtype not in STORE_DTYPES:
            raise ConfigError(f"store dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
        if self.kind not in STORE_KINDS:
            raise ConfigError(f"store kind must be one of {STORE_KINDS}, got {self.kind!r}")
        if self.compression_level is None:  # resolved here: the stored parameters always hold the level
            volumes_zarr = self.kind == "volumes" and self.format == "zarr"
            object.__setattr__(self, "compression_level", DEFAULT_LEVEL_VOLUMES_ZARR if volumes_zarr else 1)
        level = self.compression_level
        # 1-9: the levels gzip knows (zstd and lz4hc know more; 9 bounds what the CLI offers for every store)
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise ConfigError(f"store compression_level must be an int from 1 to 9, got {level!r}")

    def with_layout(self, *, fmt: str | None = None, kind: str | None = None) -> StoreParams:
        """These parameters for a store of another format (the store path's suffix decides it) or kind (a
        recipe's parameters built as volumes): a default compression level follows them (lz4hc 3 for a
        Zarr volume store is zstd 1 for a Zarr patch store and gzip 1 for HDF5)."""
        default = StoreParams(kind=self.kind, format=self.format).compression_level
        level = None if self.compression_level == default else self.compression_level
        return self.replace(format=fmt or self.format, kind=kind or self.kind, compression_level=level)

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`Params.to_dict`, without ``kind`` for a patch store: the parameters (and so the
        metadata, content id and manifests) of a patch store stay what they were before volume stores
        existed; a dict without ``kind`` reads back as ``patches``."""
        data = super().to_dict()
        if self.kind == "patches":
            del data["kind"]
        return data


@dataclass(frozen=True)
class SplitParams(Params):
    """How cases are split into train / val (always by case, never one case in two splits).

    Attributes:
        val_fraction: share of cases in the validation split (ignored with ``split_file``).
        split_file: JSON file ``{"train": [ids], "val": [ids]}`` fixing the split; ``None`` draws it
            (:func:`~brainprep.builder.build_patches` records it resolved to an absolute path).
    """

    val_fraction: float = 0.2
    split_file: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class SpacingParams(Params):
    """What a build does with cases of different voxel spacing (:mod:`brainprep.spacing`).

    Attributes:
        policy: ``uniform`` (default: a case whose spacing differs from the dataset's majority stops the
            build before anything is written), ``resample`` (such cases are resampled to ``target``:
            images trilinearly, labels nearest-neighbour) or ``allow-mixed`` (built as they are).
        target: (x, y, z) mm on the RAS grid that ``resample`` resamples to; ``None``: the dataset's
            majority spacing, which the build records here (so the store says what it resampled to).
    """

    policy: str = "uniform"
    target: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.policy not in SPACING_POLICIES:
            raise ConfigError(f"spacing policy must be one of {SPACING_POLICIES}, got {self.policy!r}")
        if self.target is not None:
            if len(self.target) != 3 or not all(float(v) > 0 for v in self.target):
                raise ConfigError(f"spacing target must be three positive mm values, got {self.target}")
            object.__setattr__(self, "target", tuple(float(v) for v in self.target))


@dataclass(frozen=True)
class BuildParams(Params):
    """Everything that determines the content of a store (worker count and scheduler do not)."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    standardize: StandardizeParams = field(default_factory=StandardizeParams)
    store: StoreParams = field(default_factory=StoreParams)
    split: SplitParams = field(default_factory=SplitParams)
    seed: int = 0
    spacing: SpacingParams = field(default_factory=SpacingParams)

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`Params.to_dict`, without ``spacing`` when it is the default (``uniform``): the
        parameters (and so the metadata, content id and manifests) of a uniform-spacing store stay what
        they were before the spacing policy existed; a dict without it reads back as ``uniform``."""
        data = super().to_dict()
        if self.spacing == SpacingParams():
            del data["spacing"]
        return data
