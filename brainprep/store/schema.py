"""The patch store schema (version 1): array names, shapes, dtypes and metadata keys.

The same names are used by the Zarr v3 group (``STORE.zarr``) and the HDF5 file (``STORE.h5``), so either
opens with plain ``zarr`` / ``h5py`` / ``dask`` and no brainprep import.

Slots. A store with ``C`` cases and ``K`` patches per case has ``N = C * K`` slots; slot ``s`` belongs to
case ``s // K``. A slot holds a patch when ``patch_valid[s]`` is true (a skipped case, or a rejection
sampler that gave up, leaves slots empty; they read as zeros). Giving every case the same ``K`` slots is
why a Zarr shard holds exactly one case: workers write disjoint shards, so a parallel build needs no
locking, a resumed build rewrites whole cases, and a manifest can hash one shard per case.

Arrays (``X, Y, Z`` is the patch size, ``N`` the slot count):

=========================  =====================  ===========  =====================================
name                       shape                  dtype        meaning
=========================  =====================  ===========  =====================================
images                     (N, 4, X, Y, Z)        float16/32   standardized FLAIR, T1w, T1gd, T2w
labels                     (N, X, Y, Z)           uint8        MSD labels 0..3 (one-hot is the loader's)
patch_valid                (N,)                   bool         slot holds a patch
patch_case                 (N,)                   int32        case index into ``cases``; -1 if empty
patch_corner               (N, 3)                 int32        (x, y, z) corner on the case's RAS grid
patch_tumour_fraction      (N,)                   float32      share of voxels with label > 0
patch_class_fractions      (N, 3)                 float32      share of edema, non-enhancing, enhancing
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
  valid_corner_share, best_tumour_fraction, skip_reason``
- ``complete``: ``true`` only once the last byte of the last case is written; readers refuse others
- ``summary``: cases, patches, skipped, bytes, seconds of the build
"""

from __future__ import annotations

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

PATCH_TABLE_ARRAYS: tuple[str, ...] = (
    PATCH_VALID,
    PATCH_CASE,
    PATCH_CORNER,
    PATCH_TUMOUR_FRACTION,
    PATCH_CLASS_FRACTIONS,
    PATCH_SPLIT,
)
