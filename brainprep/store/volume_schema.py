"""The volume store schema (version 1): one raw, brain-cropped volume per case, for fresh windows.

``brainprep build-patches DATA STORE.zarr --kind volumes`` (or ``STORE.h5``) writes it; the patch store
(:mod:`brainprep.store.schema`) stays the course-faithful artefact. The same names are used by the Zarr v3
group and the HDF5 file, so either opens with plain ``zarr`` / ``h5py``. ``params.store.kind`` of the
``brainprep`` attribute says ``"volumes"`` (a patch store's params have no ``kind``).

Per case ``i`` (``NNNNNN`` = ``i`` as six digits; a skipped case has none of them):

===========================  ====================  ========  ==============================================
name                         shape                 dtype     meaning
===========================  ====================  ========  ==============================================
images/NNNNNN                (4, X, Y, Z)          float16   RAW (not standardized) FLAIR, T1w, T1gd, T2w,
                                                   /float32  the crop of the RAS image (see below)
labels/NNNNNN                (X, Y, Z)             uint8     MSD labels 0..3 of the same crop
tumour_corners/NNNNNN        (M, 3)                int32     corners (crop coordinates, of the whole
                                                             source grid: may lie before or past the
                                                             crop) whose patch's tumour fraction passes
                                                             the course's threshold
tumour_voxels/NNNNNN         (M,)                  int32     tumour voxels (label > 0) of each such patch:
                                                             fraction = count / (px * py * pz)
class_locations/NNNNNN       (L, 4)                int32     ``(class, x, y, z)`` (in the crop): nnU-Net's
                                                             sample of each class's voxels
===========================  ====================  ========  ==============================================

Tables over the C cases (one chunk each, sealed by the integrity block like a patch store's):

===========================  ====================  ========  ==============================================
case_split                   (C,)                  int8      0 train, 1 val, -1 skipped
case_crop_offset             (C, 3)                int32     source voxel of crop voxel (0, 0, 0)
case_crop_shape              (C, 3)                int32     (X, Y, Z) of the crop (0 when skipped)
case_padding                 (C, 3, 2)             int32     (before, after) crop voxels outside the volume
case_brain_corners           (C,)                  int64     corners of the crop: prod(crop - patch + 1)
case_tumour_corners          (C,)                  int64     M, corners passing the threshold
case_mean, case_std          (C, 4)                float32   volume-nonzero statistics per channel
===========================  ====================  ========  ==============================================

The crop (:func:`brainprep.volume.brain_crop`): the bounding box of the brain (any channel differs from
its background, :func:`brainprep.standardize.brain_mask`) and of the tumour, widened to the build's patch
size along any axis where it is shorter (centred, inside the volume when the volume allows it, else padded
with zeros beyond it, recorded in ``case_padding``). Each channel is stored less its background
(``cases[i].background``: 0 for skull-stripped BraTS data, whose crop is then the raw image bit for bit;
the constant of an already-normalized input, e.g. -0.7), so every voxel outside the crop is 0 in every
channel and in the label, and a window that leaves the crop reads zeros there: any source-grid window
can be served, and a corner ``c`` in the crop is ``case_crop_offset[i] + c`` on the source grid.
"Brain corners" are the corners whose patch fits the crop (``case_brain_corners``). The corner table is
the course's over the whole source grid (:func:`brainprep.volume.crop_corner_table`: the crop's label
placed in the source grid, with the patch store's own test, :func:`brainprep.sample.valid_from_counts`),
so tumour windows are drawn from exactly the corners the course and the patch store draw from, those
whose patch reaches past the brain's bounding box included; along an axis where the volume itself is
shorter than the patch the region is the padded crop.

Why raw float16. Standardization happens at read time (``patch-slice`` on the window cut, or
``volume-nonzero`` with ``case_mean`` / ``case_std``; :class:`brainprep.store.volume_reader.VolumeStore`),
so the store keeps intensities. float16 holds integers exactly up to 2048, then keeps 11 significant bits
(a rounding error <= 2**-12 = 0.024% of the value); a standardized value moves by ~|x| * 2**-12 / std.
Measured on the real cases in ../shared/data (``python benchmarks/measure_float16_raw.py``, 20 random
160x160x16 windows each): BraTS-GLI-00001-000 (int16, T1gd up to 15462) moves by at most 0.013 (patch-slice)
and 0.0046 (volume-nonzero) standard deviations, the size of the float16 rounding the patch store applies
to its standardized values (0.012); brats2023-with-seg (all below 2048) does not move at all. So float16
costs no more than the patch store's own float16, at half of float32's bytes. What float16 cannot hold
is refused per case, never altered silently: an intensity beyond 65504 (it would become infinite) or a
nonzero intensity below 2**-24 (it would become 0 and leave the brain mask); such a case needs
``--dtype float32``.

Chunks and codecs. Images are chunked ``(4, cx, cy, cz)`` (all channels in one chunk: a window needs all
four), labels ``(cx, cy, cz)``: whole planes of the crop (up to 256 x 256) by 4 slices
(:func:`volume_chunk_shape`); each chunk is stored slice-major (a ``transpose`` codec,
:func:`stored_axis_order`) and compressed with Blosc lz4hc at level 3 (``StoreParams.compression_level``),
bit-shuffled for the images, unshuffled for the labels. Chosen with ``python
benchmarks/measure_volume_chunks.py`` (bytes, build time and window read time of each candidate side by
side; its latest table is in ``benchmarks/README.md``).

Why each choice:

- **Whole planes**: a brain crop is barely wider than the course's 160 x 160 patch, so a window covers
  most of each plane anyway; whole planes cost little extra decoding and few chunks per window.
- **4 slices**: a window of 16 slices decodes on average 19 slices with chunks of 4, 23 with 8, 31 with
  16; below 4 the chunks' own costs (a checksum, a decode call, a copy each) outweigh what is saved.
- **Slice-major chunks**: with x, y, z order (z fastest) a window is copied out of a chunk in runs of a
  chunk's z values (8 bytes), the largest single cost of a raw read; slice-major, in runs of whole rows of
  x. And ``patch-slice`` standardizes each z-slice on its own: slice-major, a slice is one contiguous block
  (the loader's windows keep that layout, :func:`slice_major`). It is also the NIfTI's own order, so the
  build cuts each chunk out of the decoded file without a transposition
  (:func:`~brainprep.store.volume_chunks.write_volume_shard`).
- **lz4hc 3, bit shuffle**: decoding is most of a raw read, and lz4hc decodes about twice as fast as zstd 1
  for about 1.2 times its bytes. Bit shuffle makes the float16 intensities about 5 % smaller than byte
  shuffle, which is what keeps the store at or under 0.75 of nnU-Net's own preprocessed data
  (``benchmarks/bench_build.py``, 16 cases), for windows about 10 % slower to decode. It is a trade:
  issue 12 asks for a store <= 0.75x nnU-Net's (bit shuffle: about 0.72-0.74; byte shuffle 0.77), a build
  <= 1.5x a nibabel load (about 1.25x) and fresh windows >= 0.7x the patch store's rate
  (``benchmarks/bench_streaming.py --volumes-only``: about 0.8x with bit shuffle on a quiet machine).
  Labels are unshuffled: bit shuffle saves a few KB per case there and costs ten times the decode.

Zarr: each case array is one shard (``sharding_indexed``, index at the end with its crc32c) of chunks
``transpose -> bytes -> blosc(lz4hc, level, shuffle) -> crc32c``, every chunk written (a missing one is
damage, not zeros); the small per-case tables are ``bytes -> zstd -> crc32c``. HDF5: shuffle + gzip +
fletcher32 on every dataset (h5py keeps C order; :mod:`.volume_chunks` reads only Zarr directly).
``cases[i].data_digest`` holds the :func:`~brainprep.store.shards.checksum_digest` of the
case's image and label chunks and the :func:`~brainprep.store.integrity.array_digest` of its three
sampling tables, so the content id covers them and a reader checks each table when it loads it.

Parameters. ``params`` is the whole ``BuildParams`` as given; of ``sampling`` only ``patch_size`` (the
crop's minimum and the corner table's window) and ``background_threshold`` (the table's test) shape a
volume store, and ``standardize.method`` is the default of read-time standardization. ``patches_per_case``,
``sampler`` and ``max_tries`` change nothing in its arrays, but as recorded parameters they do change its
content id, as every parameter does.

Metadata (the ``brainprep`` attribute): as a patch store's (``schema_version``, ``tool_version``,
``params``, ``source``, names, ``complete``, ``summary``, ``integrity``), with ``cases[i]`` holding
``index, case_id, split, files, source_shape, crop_offset, crop_shape, padding, n_brain_corners,
n_tumour_corners, best_tumour_fraction`` (the highest tumour fraction of any corner, passing or not, as a
patch store's), ``mean, std`` (float64 volume-nonzero statistics, over the brain
voxels of the whole volume, less the background), ``background`` (what was subtracted from each channel),
``skip_reason``, ``data_digest`` and the grid (:data:`brainprep.store.schema.GEOMETRY_KEYS`; under
``--resample`` ``source_shape`` and the crop are on the resampled grid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brainprep.store import schema

#: Blosc compressor of the case arrays, shuffle of the images and of the labels (see "Chunks and codecs")
BLOSC_CNAME = "lz4hc"
BLOSC_SHUFFLE = "bitshuffle"
LABEL_SHUFFLE = "noshuffle"

IMAGES = "images"
LABELS = "labels"
#: what the corner tables cover, in the ``corner_table`` key of a volume store's metadata. Stores built
#: before it existed (2026-12-03) tabled only the corners whose patch fits the crop, a sliver of the
#: course's where the brain is narrower than the patch; they are refused at open (rebuild them).
CORNER_TABLE = "source-grid"
TUMOUR_CORNERS = "tumour_corners"
TUMOUR_VOXELS = "tumour_voxels"
CLASS_LOCATIONS = "class_locations"
#: the per-case sampling tables, each a small array per case
SAMPLING_TABLES: tuple[str, ...] = (TUMOUR_CORNERS, TUMOUR_VOXELS, CLASS_LOCATIONS)

CASE_SPLIT = "case_split"
CASE_CROP_OFFSET = "case_crop_offset"
CASE_CROP_SHAPE = "case_crop_shape"
CASE_PADDING = "case_padding"
CASE_BRAIN_CORNERS = "case_brain_corners"
CASE_TUMOUR_CORNERS = "case_tumour_corners"
CASE_MEAN = "case_mean"
CASE_STD = "case_std"
CASE_TABLE_ARRAYS: tuple[str, ...] = (
    CASE_SPLIT,
    CASE_CROP_OFFSET,
    CASE_CROP_SHAPE,
    CASE_PADDING,
    CASE_BRAIN_CORNERS,
    CASE_TUMOUR_CORNERS,
    CASE_MEAN,
    CASE_STD,
)

#: keys of each ``cases[i]`` entry of a volume store's metadata
CASE_KEYS: tuple[str, ...] = (
    "index",
    "case_id",
    "split",
    "files",
    "source_shape",
    "crop_offset",
    "crop_shape",
    "padding",
    "n_brain_corners",
    "n_tumour_corners",
    "best_tumour_fraction",
    "mean",
    "std",
    "background",
    "skip_reason",
    "data_digest",
    *schema.GEOMETRY_KEYS,
)

#: the float16 range: larger magnitudes become infinite
FLOAT16_MAX = 65504.0
#: largest chunk edge along x and y (a whole plane of a brain crop) and along z (see the measurement above)
CHUNK_XY = 256
CHUNK_Z = 4


def case_key(name: str, index: int) -> str:
    """``images/000003``: the array of case ``index``."""
    return f"{name}/{int(index):06d}"


def stored_axis_order(ndim: int) -> tuple[int, ...]:
    """The ``TransposeCodec`` order of a case array's chunks: ``(0, 3, 2, 1)`` for images (channel, z,
    y, x), ``(2, 1, 0)`` for labels. The arrays stay (4, X, Y, Z) / (X, Y, Z) to every reader; only a
    chunk's bytes run slice by slice, x fastest, so a window's rows are copied in runs of its whole x
    extent (instead of runs of a chunk's 8 z values) and each z-slice, which ``patch-slice``
    standardizes on its own, is one contiguous block (see :func:`slice_major`)."""
    return (0, 3, 2, 1) if ndim == 4 else (2, 1, 0)


def slice_major(shape: tuple[int, ...], dtype: Any, memory: np.ndarray | None = None) -> np.ndarray:
    """An array of logical ``shape`` (…, X, Y, Z) laid out z-slice by z-slice, x fastest (the memory
    order of :func:`stored_axis_order`): ``np.empty(reversed spatial shape).transpose(...)``, or a view of
    ``memory`` (uint8, at least the array's bytes; reused memory, its content undefined)."""
    lead, spatial = tuple(shape[:-3]), tuple(shape[-3:])
    if memory is None:
        memory = np.empty((*lead, *spatial[::-1]), dtype=dtype)
    else:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        memory = memory[:nbytes].view(dtype).reshape((*lead, *spatial[::-1]))
    n = len(lead)
    return memory.transpose(*range(n), n + 2, n + 1, n)


def memory_order(array: np.ndarray) -> np.ndarray:
    """The (…, Z, Y, X) C-contiguous view of a slice-major array (:func:`slice_major`), or ``array``
    itself when it is not slice-major: its voxels in memory order, for a pass whose order only matters
    to float rounding (a sum)."""
    n = array.ndim - 3
    view = array.transpose(*range(n), n + 2, n + 1, n)
    return view if view.flags.c_contiguous and not array.flags.c_contiguous else array


def volume_chunk_shape(crop_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(cx, cy, cz) spatial chunk of a case's arrays: ``min(edge, crop)`` per axis (no chunk larger than
    its array), with edges :data:`CHUNK_XY` x :data:`CHUNK_XY` x :data:`CHUNK_Z`."""
    edges = (CHUNK_XY, CHUNK_XY, CHUNK_Z)
    return tuple(max(1, min(int(e), int(n))) for e, n in zip(edges, crop_shape, strict=True))  # type: ignore[return-value]


def case_array_layout(
    name: str, store_dtype: str, crop_shape: tuple[int, ...]
) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) of case array ``name`` (:data:`IMAGES`: the store dtype, (4, X, Y, Z); :data:`LABELS`:
    uint8, (X, Y, Z)) for a case whose crop is ``crop_shape``."""
    if name == IMAGES:
        return np.dtype(store_dtype), (schema.N_CHANNELS, *(int(s) for s in crop_shape))
    return np.dtype(np.uint8), tuple(int(s) for s in crop_shape)


def layout_problem(
    dtype: np.dtype, shape: tuple[int, ...], want_dtype: np.dtype, want_shape: tuple[int, ...]
) -> str | None:
    """Why an array of ``dtype`` and ``shape`` is not one of ``want_dtype`` and ``want_shape`` (one phrase,
    e.g. ``"shape [4, 36, 46, 24], expected [4, 36, 46, 25]"``), ``None`` when it is."""
    problems = []
    if dtype != want_dtype:
        problems.append(f"dtype {dtype}, expected {want_dtype}")
    if tuple(shape) != tuple(want_shape):
        problems.append(f"shape {list(shape)}, expected {list(want_shape)}")
    return " and ".join(problems) or None
