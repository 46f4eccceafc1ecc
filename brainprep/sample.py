"""Sample stage: where patches may be cut, from the label map alone.

The course's ``get_sub_volume`` keeps a random corner when the patch's background share is below 0.95.
A summed-area table over the tumour mask gives the tumour voxel count of *every* corner in one pass,
so the exact sampler can draw uniformly among the valid corners and never gives up while one exists.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from brainprep.errors import ShapeMismatchError
from brainprep.params import SamplingParams

logger = logging.getLogger(__name__)


def _count_dtype(n_voxels: int) -> type[np.signedinteger]:
    """int32 when every count fits: a summed-area entry is at most the voxel count (8.9e6 for 240x240x155,
    far below 2**31 - 1), so int32 is exact and halves the table (36 MB instead of 72 MB)."""
    return np.int32 if n_voxels < 2**31 else np.int64


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """Zero-padded 3D cumulative sum.

    Args:
        mask: bool or 0/1 integer (X, Y, Z).

    Returns:
        int32 (int64 beyond 2**31 voxels) (X+1, Y+1, Z+1) ``S`` with ``S[i, j, k] = mask[:i, :j, :k].sum()``.
    """
    table = np.zeros(tuple(s + 1 for s in mask.shape), dtype=_count_dtype(mask.size))
    inner = table[1:, 1:, 1:]
    # Accumulate in place into the table's interior: no full-size temporaries beyond the table itself.
    # (Casting first and summing int32 in place is ~4x faster than a cumsum that casts as it goes.)
    inner[...] = mask
    np.cumsum(inner, axis=0, out=inner)
    np.cumsum(inner, axis=1, out=inner)
    np.cumsum(inner, axis=2, out=inner)
    return table


def corner_tumour_counts(label: np.ndarray, patch_size: tuple[int, int, int]) -> np.ndarray:
    """Tumour voxel count (label > 0) of the patch at every corner that fits.

    Only the corners whose patch can reach the tumour's bounding box are computed (a summed-area table
    over that part of the volume); every other corner counts 0. In BraTS that part is a fraction of the
    volume, mostly along z.

    Args:
        label: uint8 (X, Y, Z), MSD convention.
        patch_size: (px, py, pz).

    Returns:
        int32 (int64 beyond 2**31 voxels) (X-px+1, Y-py+1, Z-pz+1); empty along an axis where the patch
        does not fit. Exact: every term is a summed-area entry <= X*Y*Z (see :func:`summed_area_table`)
        and the result is <= px*py*pz.
    """
    n_corners = tuple(max(label.shape[i] - patch_size[i] + 1, 0) for i in range(3))
    counts = np.zeros(n_corners, dtype=_count_dtype(label.size))
    if min(n_corners) == 0:
        return counts
    mask = label > 0
    box = _bounding_box(mask)
    if box is None:
        return counts
    # corners c with c <= last and c + p - 1 >= first: their patches overlap the box along that axis
    corners = tuple(
        slice(max(0, first - p + 1), min(last, n - 1) + 1)
        for (first, last), p, n in zip(box, patch_size, n_corners, strict=True)
    )
    voxels = tuple(slice(c.start, c.stop - 1 + p) for c, p in zip(corners, patch_size, strict=True))
    counts[corners] = _all_corner_counts(mask[voxels], patch_size)
    return counts


def _bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """((first, last) index of True along each axis), or None when ``mask`` is all False."""
    box: list[tuple[int, int]] = []
    window: list[slice] = [slice(None)] * mask.ndim
    for axis in reversed(range(mask.ndim)):  # z first: narrows the block the other axes look at
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask[tuple(window)].any(axis=others))
        if len(hits) == 0:
            return None
        start = window[axis].start or 0
        first, last = start + int(hits[0]), start + int(hits[-1])
        window[axis] = slice(first, last + 1)
        box.insert(0, (first, last))
    return tuple(box)


def _all_corner_counts(mask: np.ndarray, patch_size: tuple[int, int, int]) -> np.ndarray:
    """Tumour count of every corner of ``mask`` (bool (X, Y, Z), the patch fits along every axis)."""
    px, py, pz = patch_size
    nx, ny, nz = (mask.shape[i] - patch_size[i] + 1 for i in range(3))
    s = summed_area_table(mask)
    x0, y0, z0 = slice(0, nx), slice(0, ny), slice(0, nz)
    x1, y1, z1 = slice(px, px + nx), slice(py, py + ny), slice(pz, pz + nz)
    return (
        s[x1, y1, z1]
        - s[x0, y1, z1]
        - s[x1, y0, z1]
        - s[x1, y1, z0]
        + s[x0, y0, z1]
        + s[x0, y1, z0]
        + s[x1, y0, z0]
        - s[x0, y0, z0]
    )


def corner_background_ratio(label: np.ndarray, patch_size: tuple[int, int, int]) -> np.ndarray:
    """Background share of the patch at every corner, float64, computed as the course does
    (``background voxels / patch voxels``) so that threshold decisions match it bit for bit."""
    volume = int(np.prod(patch_size))
    counts = corner_tumour_counts(label, patch_size)
    return (volume - counts) / volume


def valid_corner_mask(
    label: np.ndarray, patch_size: tuple[int, int, int], background_threshold: float = 0.95
) -> np.ndarray:
    """bool (X-px+1, Y-py+1, Z-pz+1): corners whose background share is < ``background_threshold``."""
    return corner_background_ratio(label, patch_size) < background_threshold


def valid_from_counts(
    counts: np.ndarray, patch_size: tuple[int, int, int], background_threshold: float
) -> np.ndarray:
    """bool, the shape of ``counts``: which corners (tumour counts from :func:`corner_tumour_counts`) are
    valid, by the very float64 test of :func:`corner_background_ratio` (the course's)."""
    volume = int(np.prod(patch_size))
    return (volume - counts) / volume < background_threshold


def patch_misfit(shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> str | None:
    """Why no patch of ``patch_size`` fits a volume of ``shape`` (``None`` when one fits): one line."""
    if all(int(p) <= int(s) for p, s in zip(patch_size, shape, strict=True)):
        return None
    axes = [name for name, p, s in zip("XYZ", patch_size, shape, strict=True) if int(p) > int(s)]
    return (
        f"the {_patch_label(patch_size)} patch does not fit the {'x'.join(map(str, shape))} volume "
        f"(larger along {', '.join(axes)}): no corner to cut a patch from"
    )


def valid_corner_share(
    label: np.ndarray, patch_size: tuple[int, int, int], background_threshold: float = 0.95
) -> float:
    """Share of all fitting corners that are valid (0.0 when the patch does not fit)."""
    mask = valid_corner_mask(label, patch_size, background_threshold)
    return float(mask.mean()) if mask.size else 0.0


@dataclass(frozen=True)
class CaseSampling:
    """Where the patches of one case are cut, and why there may be fewer than K.

    Attributes:
        corners: int32 (n, 3), n <= K, (x, y, z) corners on the case grid, in drawing order.
        valid_corner_share: share of the fitting corners that are valid (0.0 when the patch does not fit).
        best_tumour_fraction: max tumour fraction over all fitting corners (0.0 when the patch does not fit).
        skip_reason: ``None`` when K corners were drawn, else one line saying why fewer.
    """

    corners: np.ndarray
    valid_corner_share: float
    best_tumour_fraction: float
    skip_reason: str | None


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The random generator of one case, from ``(seed, case_id)`` alone.

    Derived with sha256 (Python's ``hash`` of a str is salted per process), so the draws of a case do not
    depend on case order, worker count, scheduler or process.

    Args:
        seed: the build seed (``BuildParams.seed``).
        case_id: the case identifier, e.g. ``BRATS_002``.

    Returns:
        A fresh PCG64 ``np.random.Generator``.
    """
    digest = hashlib.sha256(f"brainprep.sample:{int(seed)}:{case_id}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "little")))


def _patch_label(patch_size: tuple[int, int, int]) -> str:
    return "x".join(str(s) for s in patch_size)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def sample_corners(label: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> CaseSampling:
    """Draw up to K patch corners of one case from its label map.

    ``params.sampler``:

    - ``exact``: K corners i.i.d. uniformly (with replacement) among *all* valid corners, found in one pass
      with a summed-area table. This is the distribution of the course's loop conditioned on success, but
      it never gives up while a valid corner exists; it returns 0 corners only when none exists.
    - ``rejection``: the course's ``get_sub_volume`` loop. For each of the K patches, up to ``max_tries``
      random corners, each ``start = rng.integers(0, dim - size + 1)`` for x, then y, then z (three scalar
      draws per try, in that order), keeping the first whose background share (``background voxels /
      patch voxels``, float64) is ``< background_threshold``; a patch that exhausts its tries is dropped
      and the next patch is tried. When no valid corner exists at all, no draws are made (the outcome, no
      corners, is the same; only the case's own generator state differs).

    A corner is valid when its background share is strictly below ``params.background_threshold``, i.e.
    its tumour fraction (label > 0) is above ``1 - threshold`` (:func:`valid_corner_mask`).

    Args:
        label: uint8 (X, Y, Z), MSD convention (0 background, 1..3 tumour).
        params: patch size, K, threshold, sampler, max_tries.
        rng: the case's generator (:func:`case_rng`).

    Returns:
        :class:`CaseSampling` with int32 (n, 3) corners, n <= K.
    """
    if label.ndim != 3:
        raise ShapeMismatchError(f"label must be (X, Y, Z), found shape {tuple(label.shape)}")
    size = params.patch_size
    k = params.patches_per_case
    no_corners = np.zeros((0, 3), dtype=np.int32)
    if any(label.shape[i] < size[i] for i in range(3)):
        reason = f"case shape {tuple(label.shape)} smaller than patch {tuple(size)}"
        return CaseSampling(no_corners, 0.0, 0.0, reason)

    volume = int(np.prod(size))
    counts = corner_tumour_counts(label, size)
    best = float(counts.max()) / volume
    valid = valid_from_counts(counts, size, params.background_threshold)
    del counts
    n_valid = int(np.count_nonzero(valid))
    share = n_valid / valid.size
    if n_valid == 0:
        reason = (
            f"no {_patch_label(size)} corner holds more than {_percent(params.min_tumour_fraction)} "
            f"tumour (best {_percent(best)})"
        )
        return CaseSampling(no_corners, share, best, reason)

    if params.sampler == "exact":
        flat = np.flatnonzero(valid)
        picks = flat[rng.integers(0, n_valid, size=k)]
        corners = np.stack(np.unravel_index(picks, valid.shape), axis=1).astype(np.int32)
        return CaseSampling(corners, share, best, None)

    # rejection: the course's loop, one scalar draw per axis per try; the valid mask holds the very
    # background-share test the course computes on the sliced one-hot patch.
    highs = valid.shape  # dim - size + 1 per axis
    found: list[tuple[int, int, int]] = []
    for _ in range(k):
        for _ in range(params.max_tries):
            x = int(rng.integers(0, highs[0]))
            y = int(rng.integers(0, highs[1]))
            z = int(rng.integers(0, highs[2]))
            if valid[x, y, z]:
                found.append((x, y, z))
                break
    corners = np.array(found, dtype=np.int32).reshape(-1, 3)
    reason = None
    if len(found) < k:
        reason = (
            f"rejection sampler gave up on {k - len(found)} of {k} patches after {params.max_tries} tries "
            f"each (valid {_patch_label(size)} corners: {_percent(share)})"
        )
    return CaseSampling(corners, share, best, reason)


def patch_fractions(label_patch: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
    """Tumour and per-class shares of a label patch.

    Args:
        label_patch: uint8 (X, Y, Z), canonical classes 0..n_classes.
        n_classes: foreground classes of the dataset spec (:attr:`brainprep.spec.DatasetSpec.n_classes`).

    Returns:
        (tumour fraction = share of label > 0, any foreground class, as a Python float, float32
        (n_classes,) shares of classes 1..n_classes); all 0 for an empty patch.
    """
    n = label_patch.size
    if n == 0:
        return 0.0, np.zeros(n_classes, dtype=np.float32)
    tumour = np.count_nonzero(label_patch) / n
    counts = np.array([np.count_nonzero(label_patch == value) for value in range(1, n_classes + 1)])
    classes = (counts / n).astype(np.float32)
    return float(tumour), classes


def cut_label_patches(label: np.ndarray, corners: np.ndarray, patch_size: tuple[int, int, int]) -> np.ndarray:
    """The label patches at ``corners``, stacked.

    Args:
        label: uint8 (X, Y, Z).
        corners: int (n, 3).
        patch_size: (px, py, pz).

    Returns:
        uint8 (n, px, py, pz), a new C-contiguous array.
    """
    patches = np.empty((len(corners), *patch_size), dtype=np.uint8)
    for i, corner in enumerate(corners):
        patches[i] = extract_patch(label, corner, patch_size)
    return patches


def extract_patch(
    array: np.ndarray, corner: tuple[int, int, int] | np.ndarray, patch_size: tuple[int, int, int]
) -> np.ndarray:
    """The patch at ``corner`` of the last three axes of ``array`` (a view, no copy).

    Args:
        array: (..., X, Y, Z), e.g. an image (4, X, Y, Z) or a label (X, Y, Z).
        corner: (x, y, z) start of the patch.
        patch_size: (px, py, pz).

    Returns:
        (..., px, py, pz) view of ``array``.
    """
    if array.ndim < 3:
        raise ShapeMismatchError(f"array must end in (X, Y, Z), found shape {tuple(array.shape)}")
    shape = array.shape[-3:]
    start = [int(c) for c in corner]
    size = [int(s) for s in patch_size]
    if len(start) != 3 or len(size) != 3:
        raise ShapeMismatchError(f"corner and patch_size need 3 values, found {start} and {size}")
    if any(start[i] < 0 or start[i] + size[i] > shape[i] for i in range(3)):
        raise ShapeMismatchError(
            f"patch {tuple(size)} at corner {tuple(start)} does not fit in (X, Y, Z) = {tuple(shape)}"
        )
    window = tuple(slice(start[i], start[i] + size[i]) for i in range(3))
    return array[(Ellipsis, *window)]
