"""The patch store schema (version 1): array names, shapes, dtypes and metadata keys.

The same names are used by the Zarr v3 group (``STORE.zarr``) and the HDF5 file (``STORE.h5``), so either
opens with plain ``zarr`` / ``h5py`` / ``dask`` and no brainprep import.

Slots. A store with ``C`` cases and ``K`` patches per case has ``N = C * K`` slots; slot ``s`` belongs to
case ``s // K``. A slot holds a patch when ``patch_valid[s]`` is true (a skipped case, or a rejection
sampler that gave up, leaves slots empty; they read as zeros, without their chunks being read). Giving
every case the same ``K`` slots is
why a Zarr shard holds exactly one case: workers write disjoint shards, so a parallel build needs no
locking, a resumed build rewrites whole cases, and a manifest can hash one shard per case.

Arrays (``X, Y, Z`` is the patch size, ``N`` the slot count):

=========================  =====================  ===========  =====================================
name                       shape                  dtype        meaning
=========================  =====================  ===========  =====================================
images                     (N, 4, X, Y, Z)        float16/32   standardized FLAIR, T1w, T1gd, T2w
labels                     (N, X, Y, Z)           uint8        spec classes 0..n_classes (glioma: 0..3)
patch_valid                (N,)                   bool         slot holds a patch
patch_case                 (N,)                   int32        case index into ``cases``; -1 if empty
patch_corner               (N, 3)                 int32        (x, y, z) corner on the case's RAS grid
patch_tumour_fraction      (N,)                   float32      share of voxels with label > 0
patch_class_fractions      (N, n_classes)         float32      share of each foreground class of the spec
patch_split                (N,)                   int8         0 train, 1 val, -1 empty slot
case_mean                  (C, 4)                 float32      volume-nonzero means (NaN otherwise)
case_std                   (C, 4)                 float32      volume-nonzero stds (NaN otherwise)
=========================  =====================  ===========  =====================================

``images`` and ``labels`` use one patch per chunk; Zarr v3 groups the K chunks of a case into one shard.

Metadata: the group's (file's) attribute ``brainprep`` holds a JSON object (in HDF5 a JSON string):

- ``schema_version``: 1
- ``tool_version``: brainprep version that wrote the store
- ``params``: ``BuildParams.to_dict()`` -- sampling, standardization, store layout, split, seed
- ``source``: ``{"root", "layout", "fingerprint"}``, fingerprint = sha256 over the sorted per-file hashes
- ``channel_names``, ``class_names``, ``split_names`` (``["train", "val"]``)
- ``cases``: one object per case: ``index, case_id, split, files [{path, size, sha256}], n_patches,
  valid_corner_share, best_tumour_fraction, skip_reason`` and the grid (:data:`GEOMETRY_KEYS`)
- ``complete``: ``true`` only once the last byte of the last case is written; readers refuse others
- ``summary``: cases, patches, skipped, bytes, seconds of the build

Refinements (schema version 1, written by :mod:`brainprep.builder`):

- ``cases[i].files[j].path`` is relative to ``source.root``; ``source.fingerprint`` is the sha256 of the
  per-file sha256 hex digests of all cases, sorted and joined by newlines (so it does not depend on where
  the data folder lives). ``cases[i]`` also holds ``n_slots`` (= K) and, for ``volume-nonzero``, the
  float64 ``mean`` / ``std`` that standardized it (``case_mean`` / ``case_std`` hold them as float32).
- ``skip_reason`` is ``null`` for a case that got its K patches; otherwise one line saying why not (a bad
  case, no valid corner, a rejection sampler that gave up on some patches). A case is counted as skipped in
  ``summary`` when it has no patch at all.
- ``summary`` also holds ``patches_per_second`` and ``workers``; it is the only part of the metadata that
  differs between two builds of the same data and parameters.
- Codecs. Zarr: ``BloscCodec(cname="zstd", clevel=StoreParams.compression_level, shuffle="shuffle",
  typesize=itemsize, blocksize=1 MiB)``, a core Zarr v3 codec that every v3 reader decodes (measured on 20
  course patches, standardized float16, one core: ratio 2.81 at the default level 1; it decodes about 6x
  faster than gzip). HDF5: the
  shuffle filter + gzip at ``compression_level`` (ratio 2.73; lzf decodes barely faster, about 1.3x, at
  ratio 2.24), both built into every HDF5 library, so plain h5py reads the file.
- While a build runs, ``STORE.build/`` next to the store holds its state (``build.json``: parameters and
  case list; ``done/NNNNNN.json``: one marker per finished case, written after the case's data files are
  whole: renamed into place, so a kill -9 leaves whole files or none; nothing is fsynced, so after a power
  loss run ``brainprep verify``; ``parts/``: staged HDF5 chunks) and ``STORE.lock`` the lock. Both
  disappear when the build completes.
  An HDF5 store is assembled from the staged chunks at the end into ``STORE.h5.partial`` and renamed, so
  ``STORE.h5`` only ever exists complete.
- Integrity (written since brainprep 0.1 stores gained checksums; older stores lack both and still read):
  every Zarr chunk is ``bytes -> blosc -> crc32c`` (tables: ``bytes -> zstd -> crc32c``), every HDF5
  dataset has fletcher32; ``cases[i].data_digest`` is ``{"images", "labels"}``, the
  :func:`~brainprep.store.shards.checksum_digest` of the case's stored chunks (``null`` for a case without
  patches); ``integrity`` holds ``version``, ``tables`` (sha256 of each table array), ``content_id`` and
  ``metadata_sha256`` (see :mod:`brainprep.store.integrity`).
"""

from __future__ import annotations

from dataclasses import dataclass

from brainprep.store import locations

SCHEMA_VERSION = 1
ATTRS_KEY = "brainprep"
SPLIT_NAMES: tuple[str, ...] = ("train", "val")
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1}
EMPTY_SLOT = -1

IMAGES = "images"
LABELS = "labels"
PATCH_VALID = "patch_valid"
PATCH_CASE = "patch_case"
PATCH_CORNER = "patch_corner"
PATCH_TUMOUR_FRACTION = "patch_tumour_fraction"
PATCH_CLASS_FRACTIONS = "patch_class_fractions"
PATCH_SPLIT = "patch_split"
CASE_MEAN = "case_mean"
CASE_STD = "case_std"
#: what every case entry (of either store kind) records of the grid its corners and crop refer to
#: (:func:`brainprep.spacing.case_geometry`): the files' RAS spacing, the grid's spacing, the grid's (4, 4)
#: RAS affine, and whether the case was resampled to it (``--resample``); ``null`` for a bad case.
GEOMETRY_KEYS: tuple[str, ...] = ("source_spacing", "spacing", "affine", "resampled")

PATCH_TABLE_ARRAYS: tuple[str, ...] = (
    PATCH_VALID,
    PATCH_CASE,
    PATCH_CORNER,
    PATCH_TUMOUR_FRACTION,
    PATCH_CLASS_FRACTIONS,
    PATCH_SPLIT,
)

CHANNEL_AXIS_NAMES: tuple[str, ...] = ("slot", "channel", "x", "y", "z")
LABEL_AXIS_NAMES: tuple[str, ...] = ("slot", "x", "y", "z")
N_CHANNELS = 4


def table_shapes(
    n_slots: int, n_cases: int, n_classes: int, n_channels: int = N_CHANNELS
) -> dict[str, tuple[int, ...]]:
    """The shape of each table array of a patch store of ``n_slots`` slots and ``n_cases`` cases (the
    :data:`PATCH_TABLE_ARRAYS`, then :data:`CASE_MEAN` and :data:`CASE_STD`)."""
    per_case = (n_cases, n_channels)
    return {
        PATCH_VALID: (n_slots,),
        PATCH_CASE: (n_slots,),
        PATCH_CORNER: (n_slots, 3),
        PATCH_TUMOUR_FRACTION: (n_slots,),
        PATCH_CLASS_FRACTIONS: (n_slots, n_classes),
        PATCH_SPLIT: (n_slots,),
        CASE_MEAN: per_case,
        CASE_STD: per_case,
    }


#: Blosc block size of the Zarr image/label codec. Measured on 20 float16 patches (one thread, zstd level 1,
#: byte shuffle): on the real course patches 1 MiB blocks compress as well as 256 KiB ones (35.6% vs 35.5%)
#: and encode 14% faster; on the synthetic benchmark cases they compress better (44.1% vs 47.0% for
#: Blosc's automatic choice), encode 20% faster and decode 36% faster than 256 KiB blocks.
BLOSC_BLOCKSIZE = 1024 * 1024

# Store suffixes belong to brainprep.store.locations; these names stay for the writers that import them here.
ZARR_SUFFIXES = locations.ZARR_SUFFIXES
HDF5_SUFFIXES = locations.HDF5_SUFFIXES
BUILD_DIR_SUFFIX = ".build"
LOCK_SUFFIX = ".lock"
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class StoreLayout:
    """Shapes and dtypes of one store: C cases of K slots each, patches of ``patch_size``.

    Attributes:
        n_cases: C, cases in the case table (skipped ones included: their slots stay empty).
        patches_per_case: K, slots per case (= patches per Zarr shard).
        patch_size: (X, Y, Z).
        dtype: image dtype, ``float16`` or ``float32``.
        compression_level: zstd level (Zarr) or gzip level (HDF5).
    """

    n_cases: int
    patches_per_case: int
    patch_size: tuple[int, int, int]
    dtype: str = "float16"
    compression_level: int = 1

    @property
    def n_slots(self) -> int:
        return self.n_cases * self.patches_per_case

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(N, 4, X, Y, Z)."""
        return (self.n_slots, N_CHANNELS, *self.patch_size)

    @property
    def label_shape(self) -> tuple[int, ...]:
        """(N, X, Y, Z)."""
        return (self.n_slots, *self.patch_size)

    def case_slots(self, index: int) -> slice:
        """The K slots of case ``index``."""
        return slice(index * self.patches_per_case, (index + 1) * self.patches_per_case)
