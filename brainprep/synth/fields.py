"""Coordinates and smooth random fields on a voxel grid, in float32.

Anatomy is defined in millimetres of the 240x240x155 1 mm BraTS grid ("reference mm"); a volume of
another shape maps the same head onto its voxels, scaled per axis. Coordinates are kept as three 1D
arrays broadcast against each other, so building them costs nothing and every 3D expression is one
vectorized pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainprep.synth.params import REFERENCE_SHAPE


@dataclass(frozen=True)
class Grid:
    """Reference-mm coordinates of the voxel centres of a box of a volume.

    Attributes:
        shape: (X, Y, Z) voxels of the whole volume.
        start: first voxel index of the box along each axis.
        stop: one past the last voxel index of the box.
    """

    shape: tuple[int, int, int]
    start: tuple[int, int, int] = (0, 0, 0)
    stop: tuple[int, int, int] | None = None

    @property
    def box_shape(self) -> tuple[int, int, int]:
        stop = self.stop or self.shape
        return tuple(b - a for a, b in zip(self.start, stop, strict=True))  # type: ignore[return-value]

    @property
    def mm_per_voxel(self) -> tuple[float, float, float]:
        """Reference millimetres per voxel along each axis (1.0 at the reference shape)."""
        return tuple(r / s for r, s in zip(REFERENCE_SHAPE, self.shape, strict=True))  # type: ignore[return-value]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 coordinates (mm from the volume centre) shaped (x,1,1), (1,y,1), (1,1,z)."""
        stop = self.stop or self.shape
        out = []
        for axis in range(3):
            index = np.arange(self.start[axis], stop[axis], dtype=np.float32)
            mm = (index - (self.shape[axis] - 1) / 2.0) * np.float32(self.mm_per_voxel[axis])
            view = [1, 1, 1]
            view[axis] = -1
            out.append(mm.astype(np.float32).reshape(view))
        return out[0], out[1], out[2]

    def box(self, centre_mm: np.ndarray, half_mm: np.ndarray) -> Grid:
        """Sub-grid of the voxels within ``centre_mm +- half_mm`` (clipped to the volume)."""
        start, stop = [], []
        for axis in range(3):
            scale = self.mm_per_voxel[axis]
            centre = centre_mm[axis] / scale + (self.shape[axis] - 1) / 2.0
            half = half_mm[axis] / scale
            start.append(int(np.clip(np.floor(centre - half), 0, self.shape[axis] - 1)))
            stop.append(int(np.clip(np.ceil(centre + half) + 1, start[-1] + 1, self.shape[axis])))
        return Grid(self.shape, tuple(start), tuple(stop))  # type: ignore[arg-type]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        stop = self.stop or self.shape
        return tuple(slice(a, b) for a, b in zip(self.start, stop, strict=True))  # type: ignore[return-value]


def _basis(n_voxels: int, mm_per_voxel: float, length_mm: float) -> np.ndarray:
    """(n_voxels, n_nodes) float32 Gaussian bumps every ``length_mm``, sigma = ``length_mm``."""
    extent = n_voxels * mm_per_voxel
    n_nodes = int(np.ceil(extent / length_mm)) + 2
    nodes = (np.arange(n_nodes, dtype=np.float32) - 0.5) * np.float32(length_mm)
    position = (np.arange(n_voxels, dtype=np.float32) + 0.5) * np.float32(mm_per_voxel)
    basis = np.exp(-0.5 * ((position[:, None] - nodes[None, :]) / np.float32(length_mm)) ** 2)
    # Unit row norm: a field built from standard normal weights then has unit variance at every voxel.
    return (basis / np.sqrt((basis**2).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_field(grid: Grid, length_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field over the box of ``grid``, zero mean and unit variance at every voxel.

    A tensor product of 1D Gaussian bases applied to a coarse grid of standard normal weights: three
    matrix products, so a 240x240x155 field costs about as much as one elementwise pass.

    Args:
        grid: the box to fill.
        length_mm: correlation length in reference mm (node spacing and bump width).
        rng: the case's generator (draws the coarse weights).

    Returns:
        float32 (x, y, z) of the box shape.
    """
    shape = grid.box_shape
    bases = [_basis(n, s, length_mm) for n, s in zip(shape, grid.mm_per_voxel, strict=True)]
    weights = rng.standard_normal(tuple(b.shape[1] for b in bases)).astype(np.float32)
    field = np.tensordot(bases[0], weights, axes=(1, 0))  # (x, ny, nz)
    field = np.einsum("xbc,yb->xyc", field, bases[1], optimize=True)  # (x, y, nz)
    field = field.reshape(-1, field.shape[-1]) @ bases[2].T  # (x*y, z)
    return np.ascontiguousarray(field.reshape(shape), dtype=np.float32)
