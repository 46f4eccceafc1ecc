"""Sample stage: where patches may be cut, from the label map alone.

The course's ``get_sub_volume`` keeps a random corner when the patch's background share is below 0.95.
A summed-area table over the tumour mask gives the tumour voxel count of *every* corner in one pass,
so the exact sampler can draw uniformly among the valid corners and never gives up while one exists.
"""

from __future__ import annotations

import numpy as np


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """Zero-padded 3D cumulative sum.

    Args:
        mask: bool or integer (X, Y, Z).

    Returns:
        int64 (X+1, Y+1, Z+1) ``S`` with ``S[i, j, k] = mask[:i, :j, :k].sum()``.
    """
    table = np.zeros(tuple(s + 1 for s in mask.shape), dtype=np.int64)
    table[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    return table


def corner_tumour_counts(label: np.ndarray, patch_size: tuple[int, int, int]) -> np.ndarray:
    """Tumour voxel count (label > 0) of the patch at every corner that fits.

    Args:
        label: uint8 (X, Y, Z), MSD convention.
        patch_size: (px, py, pz).

    Returns:
        int64 (X-px+1, Y-py+1, Z-pz+1); empty along an axis where the patch does not fit.
    """
    px, py, pz = patch_size
    nx, ny, nz = (label.shape[i] - patch_size[i] + 1 for i in range(3))
    if min(nx, ny, nz) <= 0:
        return np.zeros((max(nx, 0), max(ny, 0), max(nz, 0)), dtype=np.int64)
    s = summed_area_table(label > 0)
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


def valid_corner_share(
    label: np.ndarray, patch_size: tuple[int, int, int], background_threshold: float = 0.95
) -> float:
    """Share of all fitting corners that are valid (0.0 when the patch does not fit)."""
    mask = valid_corner_mask(label, patch_size, background_threshold)
    return float(mask.mean()) if mask.size else 0.0
