"""Volume stage: what a volume store keeps of a case, as pure array functions.

A volume store (:mod:`brainprep.store.volume_schema`) keeps each case's raw image cropped to the brain,
its label, and the tables that make train-time sampling exact: the corners (in the crop) whose patch
holds enough tumour, and a sample of each tumour class's voxels.

- :func:`brain_crop`: the crop box (offset on the source grid, shape, padding) of one case;
- :func:`cut_crop`: that box cut out of an image or label (zeros where the box leaves the volume);
- :func:`tumour_corner_table` / :func:`crop_corner_table`: the corners of the source grid (in crop
  coordinates) whose patch passes the course's threshold, with their tumour voxel counts;
- :func:`class_locations`: nnU-Net's per-class foreground locations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainprep.errors import ShapeMismatchError
from brainprep.sample import corner_tumour_counts, valid_from_counts
from brainprep.standardize import brain_mask

#: nnU-Net v2's foreground sampling budget (``DefaultPreprocessor._sample_foreground_locations``,
#: nnunetv2/preprocessing/preprocessors/default_preprocessor.py): at most 10,000 voxels per class, but at
#: least 1% of the class's voxels.
CLASS_SAMPLES = 10_000
CLASS_MIN_COVERAGE = 0.01


@dataclass(frozen=True)
class Crop:
    """Where a case's crop lies on its source (RAS) grid.

    Attributes:
        offset: (x, y, z) source voxel of the crop's voxel (0, 0, 0); negative where the crop is padded
            before the volume. A corner ``c`` in the crop is ``offset + c`` on the source grid.
        shape: (X, Y, Z) of the crop, at least the patch size along every axis.
        padding: ((before, after) per axis): crop voxels outside the source volume (zeros).
    """

    offset: tuple[int, int, int]
    shape: tuple[int, int, int]
    padding: tuple[tuple[int, int], ...]

    @property
    def padded(self) -> bool:
        return any(before or after for before, after in self.padding)


def _axis_extent(first: int, last: int, size: int, patch: int) -> tuple[int, int]:
    """(start, length) along one axis: the box [first, last], widened to ``patch`` when shorter --
    centred, kept inside the volume when it can be, padded beyond it when the volume is shorter."""
    length = last - first + 1
    if length >= patch:
        return first, length
    if size >= patch:
        start = first - (patch - length) // 2
        return min(max(start, 0), size - patch), patch
    return -((patch - size) // 2), patch


def axis_hits(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """bool (X,), (Y,), (Z,): which planes along each axis hold a True voxel of ``mask`` (X, Y, Z), any
    memory order. The projections of a union are the union of the projections, so a crop can be found
    from each channel's mask apart (:func:`crop_from_hits`), never making their union."""
    return tuple(mask.any(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3))


def crop_from_hits(
    hits: tuple[np.ndarray, ...], shape: tuple[int, ...], patch_size: tuple[int, int, int]
) -> Crop | None:
    """The :class:`Crop` of the voxels whose planes :func:`axis_hits` found (``None`` when none)."""
    offset, extent, padding = [], [], []
    for axis in range(3):
        planes = np.flatnonzero(hits[axis])
        if len(planes) == 0:
            return None
        start, length = _axis_extent(int(planes[0]), int(planes[-1]), int(shape[axis]), int(patch_size[axis]))
        offset.append(start)
        extent.append(length)
        padding.append((max(0, -start), max(0, start + length - int(shape[axis]))))
    return Crop(tuple(offset), tuple(extent), tuple(padding))  # type: ignore[arg-type]


def brain_crop(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: tuple[int, int, int],
    background: np.ndarray | None = None,
) -> Crop | None:
    """The crop of one case: the bounding box of its brain (:func:`~brainprep.standardize.brain_mask`:
    any channel differs from its background) and its tumour (label > 0, so no labelled voxel is ever cut
    off), widened to the patch size where shorter.

    Outside the box every channel holds its background and the label is 0; the volume store keeps the
    crop relative to the background (:func:`cut_crop` of ``image - background``), so a window that leaves
    the crop reads zeros there and equals the window of the source volume less its background.

    Args:
        image: (C, X, Y, Z) any dtype.
        label: uint8 (X, Y, Z).
        patch_size: (px, py, pz).
        background: (C,) per-channel background; ``None``: the volume's
            (:func:`~brainprep.standardize.background_values`).

    Returns:
        The :class:`Crop`, or ``None`` when the image is all background and the label all zero.
    """
    if image.shape[1:] != label.shape:
        raise ShapeMismatchError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ")
    mask = brain_mask(image, background) | (label > 0)
    return crop_from_hits(axis_hits(mask), label.shape, patch_size)


def window_parts(
    shape: tuple[int, ...], corner: tuple[int, ...] | np.ndarray, size: tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Where a window meets an array: (slices of the array, slices of the window), ``None`` if nowhere.

    Args:
        shape: the array's (X, Y, Z); corner: the window's first voxel (may be negative); size: its shape.
    """
    source, target = [], []
    for n, c, s in zip(shape, corner, size, strict=True):
        lo, hi = max(int(c), 0), min(int(c) + int(s), int(n))
        if hi <= lo:
            return None
        source.append(slice(lo, hi))
        target.append(slice(lo - int(c), hi - int(c)))
    return tuple(source), tuple(target)


def cut_crop(array: np.ndarray, crop: Crop, dtype: np.dtype | str | None = None) -> np.ndarray:
    """The crop of an image (C, X, Y, Z) or label (X, Y, Z): a new array, zeros where it is padded.

    Args:
        array: (..., X, Y, Z), the source volume.
        crop: from :func:`brain_crop`.
        dtype: of the result (default: ``array``'s).

    Returns:
        (..., *crop.shape), C-contiguous.
    """
    out = np.zeros((*array.shape[:-3], *crop.shape), dtype=dtype or array.dtype)
    parts = window_parts(array.shape[-3:], crop.offset, crop.shape)
    if parts is not None:
        source, target = parts
        out[(Ellipsis, *target)] = array[(Ellipsis, *source)]
    return out


def corner_region(crop: Crop, source_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The box, in crop coordinates, whose corners the tumour corner table covers: the source grid, and
    the crop beyond it along an axis where the volume is shorter than the patch (padded).

    The course draws its corners from the whole source grid, so a tumour patch may reach past the brain's
    bounding box (and always does along an axis where the brain is narrower than the patch, as a BraTS
    brain is narrower than 160 voxels in x); the table must hold those corners too.

    Returns:
        (start, stop) int64 (3,): ``start <= 0 <= crop.shape <= stop``.
    """
    offset, shape = np.asarray(crop.offset, dtype=np.int64), np.asarray(crop.shape, dtype=np.int64)
    source = np.asarray(source_shape[-3:], dtype=np.int64)
    return np.minimum(0, -offset), np.maximum(shape, source - offset)


def region_corners(crop: Crop, source_shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> int:
    """Corners of the :func:`corner_region` (the grid the tumour corner table is drawn from): the
    denominator of the share of corners that pass the course's threshold."""
    start, stop = corner_region(crop, source_shape)
    fits = stop - start - np.asarray(patch_size, dtype=np.int64) + 1
    return int(np.prod(np.maximum(fits, 0)))


def region_label(
    label: np.ndarray, crop: Crop, source_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The crop's label placed in its :func:`corner_region` (zeros elsewhere: the crop holds every
    tumour voxel), and the region's start in crop coordinates.

    Args:
        label: uint8 (X, Y, Z), the crop's label.
        crop: its :class:`Crop`; source_shape: (..., X, Y, Z) of the source volume.

    Returns:
        (uint8 region label, int64 (3,) start).
    """
    start, stop = corner_region(crop, source_shape)
    out = np.zeros(tuple(int(n) for n in stop - start), dtype=np.uint8)
    out[tuple(slice(int(-a), int(-a) + n) for a, n in zip(start, label.shape, strict=True))] = label
    return out, start


def tumour_corner_table(
    label: np.ndarray,
    patch_size: tuple[int, int, int],
    background_threshold: float,
    origin: np.ndarray | tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """The corners of ``label`` whose patch passes the course's threshold, with their tumour counts.

    A corner passes when its background share is strictly below ``background_threshold``
    (:func:`brainprep.sample.valid_from_counts`, the test the patch store's sampler uses), i.e. its
    tumour fraction ``count / (px * py * pz)`` is above ``1 - background_threshold``.

    Args:
        label: uint8 (X, Y, Z); the patch fits along every axis. A volume store passes the
            :func:`region_label` of a crop, so that the table is the course's over the source grid.
        patch_size: (px, py, pz).
        background_threshold: e.g. 0.95.
        origin: added to every corner (the region's start in crop coordinates: corners are the crop's,
            negative where the patch starts before it).

    Returns:
        (corners int32 (M, 3) in C order of (x, y, z), tumour voxel counts int32 (M,)).
    """
    return passing_corners(corner_tumour_counts(label, patch_size), patch_size, background_threshold, origin)


def passing_corners(
    counts: np.ndarray,
    patch_size: tuple[int, int, int],
    background_threshold: float,
    origin: np.ndarray | tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """The corners of a :func:`~brainprep.sample.corner_tumour_counts` array that pass the threshold, as
    :func:`tumour_corner_table` returns them."""
    valid = valid_from_counts(counts, patch_size, background_threshold)
    corners = np.argwhere(valid).reshape(-1, 3) + np.asarray(origin, dtype=np.int64)
    return corners.astype(np.int32), counts[valid].astype(np.int32)


def crop_corner_counts(
    label: np.ndarray, crop: Crop, source_shape: tuple[int, ...], patch_size: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The tumour count of every source-grid patch that reaches a crop (its :func:`corner_region`; every
    other patch counts 0), and the region's start in crop coordinates: (int counts (Rx, Ry, Rz), int64
    (3,))."""
    region, start = region_label(label, crop, source_shape)
    return corner_tumour_counts(region, patch_size), start


def crop_corner_table(
    label: np.ndarray,
    crop: Crop,
    source_shape: tuple[int, ...],
    patch_size: tuple[int, int, int],
    background_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tumour_corner_table` of a crop's label over its :func:`corner_region`: the corners (in
    crop coordinates) of every source-grid patch the course's rule accepts, and their tumour counts."""
    counts, start = crop_corner_counts(label, crop, source_shape, patch_size)
    return passing_corners(counts, patch_size, background_threshold, start)


def class_locations(label: np.ndarray, rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """A sample of each tumour class's voxels, for class-balanced foreground sampling (nnU-Net's rule).

    Per class, ``max(min(CLASS_SAMPLES, n), ceil(n * CLASS_MIN_COVERAGE))`` of its ``n`` voxels, drawn
    without replacement with ``rng`` (nnU-Net draws with its own fixed seed), kept in C order.

    Args:
        label: uint8 (X, Y, Z), canonical classes.
        rng: the case's generator.
        n_classes: foreground classes of the dataset spec (each gets its rows).

    Returns:
        int32 (L, 4) rows ``(class, x, y, z)``, by class then position.
    """
    rows = []
    for value in range(1, n_classes + 1):
        flat = np.flatnonzero(label == value)
        target = max(min(CLASS_SAMPLES, len(flat)), int(np.ceil(len(flat) * CLASS_MIN_COVERAGE)))
        if target < len(flat):
            flat = flat[np.sort(rng.choice(len(flat), size=target, replace=False))]
        coords = np.stack(np.unravel_index(flat, label.shape), axis=1)
        rows.append(np.concatenate([np.full((len(flat), 1), value), coords], axis=1))
    return np.concatenate(rows).astype(np.int32).reshape(-1, 4)
