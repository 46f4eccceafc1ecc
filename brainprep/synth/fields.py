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


#: the [1, 2, 1] / 4 kernel of :func:`interpolated_noise` along each axis; its lag-1 autocorrelation is
#: 2/3, near the 0.6-0.7 of the noise of real BraTS images (resampled onto the 1 mm atlas grid).
INTERPOLATION_KERNEL = np.array([0.25, 0.5, 0.25], dtype=np.float32)


def interpolated_noise(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise correlated over neighbouring voxels like the noise of an interpolated image.

    The BraTS / MSD images were co-registered and resampled onto a 1 mm grid, and the interpolation mixes
    the scanner's white noise of neighbouring voxels. A separable [1, 2, 1] / 4 filter per axis does the
    same. The white noise is drawn one voxel wider on every side and filtered without padding, so every
    voxel, the border included, has exactly the same variance. Correlation is in voxels, not millimetres:
    resampling happens on whatever grid the volume is stored on.

    Args:
        shape: (X, Y, Z) voxels.
        rng: the case's generator (draws (X+2)*(Y+2)*(Z+2) standard normals).

    Returns:
        float32 (X, Y, Z), mean 0, variance 1 at every voxel.
    """
    noise = rng.standard_normal(tuple(n + 2 for n in shape), dtype=np.float32)
    side, centre = INTERPOLATION_KERNEL[0], INTERPOLATION_KERNEL[1]
    for axis, n in enumerate(shape):
        moved = np.moveaxis(noise, axis, 0)  # a view: the filter runs along its first axis
        filtered = centre * moved[1 : n + 1]
        filtered += side * moved[:n]
        filtered += side * moved[2 : n + 2]
        noise = np.moveaxis(filtered, 0, axis)
    # Variance of the filtered noise: (sum of squared weights) ** 3.
    noise /= np.float32(np.sqrt(float((INTERPOLATION_KERNEL**2).sum()) ** 3))
    return np.ascontiguousarray(noise)
