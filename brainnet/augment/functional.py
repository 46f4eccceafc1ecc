"""Augmentation transforms as pure tensor functions on batches, on whatever device the tensors are on.

Spatial functions take a batch ``(B, C, X, Y, Z)`` (labels ``(B, X, Y, Z)``) and per-sample parameters;
intensity functions take a stack of channel volumes ``(P, X, Y, Z)`` (the (sample, channel) pairs a
transform applies to) and one parameter per pair. Nothing here draws random numbers: parameters come in
(:mod:`brainnet.augment.compose` draws them), so each function is exact and testable on its own, and the
one source of noise voxels, :func:`hash_normal`, is a pure function of integer keys that gives the same
numbers on the CPU and on CUDA.

Parameter tensors may live on the CPU (where they are drawn); they are moved to the data's device here.
On the CPU, the noise and the upsampling of the simulated low resolution run in numba kernels
(:mod:`brainnet.augment.cpu_kernels`, whose docstring says why), with the same numbers as the tensor code
here to float rounding; the tests hold the two together.
The transforms follow batchgeneratorsv2 (github.com/MIC-DKFZ/batchgeneratorsv2 at 3cb4f07, the library
nnU-Net v2 augments with), transform by transform: the file each one follows is named in its docstring.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from brainnet.augment import cpu_kernels as CK

MASK32 = 0xFFFFFFFF
#: Floor of a range or std divisor (batchgeneratorsv2's ``eps`` in ``intensity/gamma.py``).
EPS = 1e-7
#: Half-width of the blur kernel in sigmas: batchgeneratorsv2's ``blur_dimension(..., truncate=6)`` builds a
#: kernel of ``round_to_odd(6 sigma + 0.5)`` taps (``noise/gaussian_blur.py``).
BLUR_TRUNCATE = 6.0


# ---------------------------------------------------------------------------------------------- spatial
def mirror(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip each sample along the axes it asks for.

    Args:
        x: (B, ..., X, Y, Z) images (B, C, X, Y, Z) or labels (B, X, Y, Z), any dtype.
        flips: bool (B, 3), whether sample b is flipped along X, Y, Z.

    Returns:
        A new tensor like ``x`` (``x`` itself when nothing flips).
    """
    return mirror_(x.clone(), flips) if bool(flips.any()) else x


def mirror_(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """:func:`mirror` in place (for a tensor the caller owns): each flipped volume (a channel of a
    sample) is flipped into a new tensor and copied back, a volume at a time so that the copy is read from
    the cache (a gather of the flipped samples first would be a third pass)."""
    for sample, row in enumerate(flips.tolist()):
        dims = [axis - 3 for axis in range(3) if row[axis]]
        if dims:
            volumes = x[sample] if x.ndim == 5 else x[sample : sample + 1]
            for volume in volumes:
                volume.copy_(volume.flip(dims))
    return x


def rotation_scaling_matrices(angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Per-sample 3x3 matrices ``R2 @ R1 @ R0 @ diag(scales)`` in voxel units (output -> input position).

    ``Rk`` rotates about axis k (0 X, 1 Y, 2 Z) by ``angles[:, k]`` radians, composed in the order of
    batchgeneratorsv2's ``create_affine_matrix_3d`` (``Rz @ Ry @ Rx @ S``, ``spatial/spatial.py``). A scale
    above 1 samples a larger field of view (structures shrink). A positive angle about Z takes the sample
    of output voxel (x, y) from input (c x - s y, s x + c y): +90 degrees is ``torch.rot90(x, -1, (X, Y))``.

    Args:
        angles: float (B, 3) radians.
        scales: float (B, 3).

    Returns:
        float64 (B, 3, 3).
    """
    angles, scales = angles.double(), scales.double()
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def rotation(k: int, a: int, b: int) -> torch.Tensor:
        """Rotation about axis k acting on axes (a, b)."""
        entries = {(a, a): cos[:, k], (a, b): -sin[:, k], (b, a): sin[:, k], (b, b): cos[:, k]}
        rows = [entries.get((i, j), one if i == j else zero) for i in range(3) for j in range(3)]
        return torch.stack(rows, dim=1).view(-1, 3, 3)

    # Ry of batchgeneratorsv2 is [[c, 0, s], [0, 1, 0], [-s, 0, c]]: axes (2, 0) in this notation.
    r0, r1, r2 = rotation(0, 1, 2), rotation(1, 2, 0), rotation(2, 0, 1)
    return r2 @ r1 @ r0 @ torch.diag_embed(scales)


def centered_coordinates(shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 (*shape, D): each voxel's position relative to the grid centre, in voxels (D = len(shape))."""
    axes = [torch.arange(s, dtype=torch.float32, device=device) - (s - 1) / 2 for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def sampling_grid(
    matrices: torch.Tensor,
    out_shape: Sequence[int],
    in_shape: Sequence[int] | None = None,
    *,
    translation: torch.Tensor | None = None,
    displacement: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The ``grid_sample`` grid that reads output voxel p from input position ``M (p + d(p)) + t``.

    Positions are in voxels about each grid's centre (the deformation first, then the matrix, as
    batchgeneratorsv2's ``SpatialTransform``), so rotations are isotropic whatever the patch's shape, and an
    input larger than the output (a context window) is read about its centre. D = 3 for volumes, 2 for
    in-plane transforms of slices.

    Args:
        matrices: (B, D, D) output -> input (:func:`rotation_scaling_matrices`).
        out_shape: the D output sides, e.g. (X, Y, Z).
        in_shape: the D input sides (default ``out_shape``).
        translation: (B, D) shift t in voxels (+1 along X: output voxel i reads input voxel i + 1).
        displacement: (B, *out_shape, D) deformation d in voxels (:func:`elastic_displacement`).
        device: where the grid is made.

    Returns:
        float32 (B, *out_shape, D) normalized coordinates, last axis first (``grid_sample``'s order), for
        ``align_corners=False``.
    """
    in_shape = tuple(out_shape if in_shape is None else in_shape)
    batch, dims = matrices.shape[0], len(out_shape)
    columns, shift = normalized_affine(matrices, in_shape, translation, device)
    if displacement is not None:
        scale = torch.tensor([2.0 / s for s in in_shape], dtype=torch.float32, device=device)
        points = centered_coordinates(out_shape, device).reshape(1, -1, dims)
        points = points + displacement.to(device, torch.float32).reshape(batch, -1, dims)
        points = (points @ matrices.to(device, torch.float32).transpose(1, 2)) * scale + shift[:, None, :]
        return points.flip(-1).reshape(batch, *out_shape, dims)
    # affine: the grid is a sum of one term per output axis, broadcast (one pass over the full grid)
    columns = columns.flip(1)  # row k: the input axis read as grid component k
    grid = shift.flip(-1).view(batch, *[1] * dims, dims)
    for axis, size in enumerate(out_shape):
        position = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
        view = [1] * dims
        view[axis] = size
        grid = grid + position.view(1, *view, 1) * columns[:, :, axis].reshape(batch, *[1] * dims, dims)
    return grid


def normalized_affine(
    matrices: torch.Tensor,
    in_shape: Sequence[int],
    translation: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map of :func:`sampling_grid` in ``grid_sample``'s normalized input units.

    ``align_corners=False``: input voxel j sits at normalized ``(2 j + 1) / S - 1 = (j - (S - 1) / 2) 2 / S``.

    Returns:
        float32 (B, D, D) matrices (row: input axis, column: output axis, times 2 / S of the input axis) and
        float32 (B, D) shifts (``translation`` times 2 / S, zero without one).
    """
    scale = torch.tensor([2.0 / s for s in in_shape], dtype=torch.float32, device=device)
    columns = matrices.to(device, torch.float32) * scale[:, None]
    shift = torch.zeros(matrices.shape[0], len(in_shape), device=device)
    if translation is not None:
        shift = translation.to(device, torch.float32) * scale
    return columns, shift


def reflect_grid(grid: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    """``grid`` mirrored at the faces and clamped to the voxel centres, so that sampling it with ``zeros``
    padding equals sampling ``grid`` with ``reflection`` padding (to rounding), ``align_corners=False``.

    ``grid_sample`` reflects about the outer edges of the border voxels (a triangle wave of period 4 in
    normalized units), then clamps to the first and last voxel centres (``GridSampler.h``:
    ``reflect_coordinates``, ``clip_coordinates``). The CPU kernels do that for every coordinate in
    each call (a large part of a trilinear call, most of a nearest one) and ``zeros`` skips even the
    clamp: reflected once here, the image and the labels share it.

    Args:
        grid: float (B, *out, D) normalized coordinates, last axis first.
        in_shape: the D sides of the input.
    """
    folded = torch.remainder(grid + 1, 4).sub_(2).abs_().neg_().add_(1)
    inner = torch.tensor([1 - 1 / s for s in in_shape[::-1]], dtype=grid.dtype, device=grid.device)
    return folded.clamp_(-inner, inner)


def _chunks(batch: int, rows: int, device: torch.device) -> int:
    """Into how many pieces to cut each sample's grid along its first axis for ``grid_sample`` on the CPU,
    whose kernels share out work by sample only (``GridSampler.cpp``, ``cpu/GridSamplerKernel.cpp``:
    ``parallel_for`` over N): one piece per thread when a batch has fewer samples than threads."""
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    if batch >= threads:
        return 1
    return max(k for k in range(1, threads // batch + 1) if rows % k == 0)


def _grid_sample(
    x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.grid_sample(x, grid, align_corners=False)`` of (N, K, *spatial) on (N, *out, D), on every CPU
    thread: a sample's grid is cut into pieces along its first axis that read the same input (expanded,
    not copied) as extra samples; each output voxel is computed exactly as in one call.

    Args:
        out: where to write the (N, K, *out) result (any strides and dtype), instead of a new tensor.
    """
    batch, rows = grid.shape[0], grid.shape[1]
    pieces = _chunks(batch, rows, x.device)
    if pieces == 1:
        result = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)
        return result if out is None else out.copy_(result)
    if out is None:
        out = torch.empty(batch, x.shape[1], *grid.shape[1:-1], dtype=x.dtype, device=x.device)
    grid = grid.reshape(batch, pieces, rows // pieces, *grid.shape[2:])
    for n in range(batch):
        source = x[n : n + 1].expand(pieces, *x.shape[1:])
        result = F.grid_sample(source, grid[n], mode=mode, padding_mode=padding, align_corners=False)
        # (pieces, K, rows / pieces, ...) into (K, rows, ...)
        out[n].unflatten(1, (pieces, rows // pieces)).copy_(result.transpose(0, 1))
    return out


def warp(
    x: torch.Tensor, grid: torch.Tensor, padding: str = "reflection", out: torch.Tensor | None = None
) -> torch.Tensor:
    """Trilinear (bilinear for D = 2) resampling of ``x`` (B, C, *spatial) on ``grid`` (B, *out, D).

    With D = 2, ``x`` may be (B, C, S, *plane): every slice S is warped alike (any strides, e.g. a view with
    the slice axis moved; the slices are read in place as channels).

    Args:
        out: where to write the result instead of a new tensor; it may be ``x`` itself (each sample is
            read before it is written).

    Returns:
        (B, C, *out) or (B, C, S, *out) in ``x``'s dtype (``out`` when given).
    """
    dims = grid.shape[-1]
    grid = grid.to(x.dtype)
    if x.ndim == dims + 3:
        # the S slices as channels of B C samples (a view of x, no copy; the small 2D grid is repeated)
        shape = (*x.shape[:3], *grid.shape[1:-1])
        target = torch.empty(shape, dtype=x.dtype, device=x.device) if out is None else out
        repeated = grid.repeat_interleave(x.shape[1], dim=0)
        _grid_sample(x.flatten(0, 1), repeated, "bilinear", padding, target.view(-1, *shape[2:]))
        return target
    return _grid_sample(x, grid, "bilinear", padding, out)


def warp_labels(
    label: torch.Tensor, grid: torch.Tensor, padding: str = "reflection", out: torch.Tensor | None = None
) -> torch.Tensor:
    """Nearest-neighbour resampling of label maps (B, *spatial) or (B, S, *plane) for D = 2, on ``grid``
    as :func:`warp` (``out`` too): every output value is an input value (``zeros`` padding reads
    background 0)."""
    dims = grid.shape[-1]
    shape = (*label.shape[: label.ndim - dims], *grid.shape[1:-1])
    target = torch.empty(shape, dtype=label.dtype, device=label.device) if out is None else out
    channels = label.ndim == dims + 1  # (B, *spatial): one channel
    stacked = (label[:, None] if channels else label).float()
    _grid_sample(stacked, grid.float(), "nearest", padding, target[:, None] if channels else target)
    return target


def _plane_coordinates(grid: torch.Tensor, in_sides: Sequence[int], padding: str):
    """Input positions (rows, columns) in voxels of a 2D ``grid`` (B, H, W, 2), as ``grid_sample``'s CPU
    kernel computes them (``align_corners=False``: ``(g + 1) * size / 2 - 0.5``, clipped for ``border``)."""
    if padding == "reflection":
        grid, padding = reflect_grid(grid, in_sides), "zeros"
    rows, columns = ((grid[..., 1 - k].float() + 1) * (in_sides[k] / 2) - 0.5 for k in range(2))
    if padding == "border":
        rows, columns = rows.clamp_(0, in_sides[0] - 1), columns.clamp_(0, in_sides[1] - 1)
    return rows.flatten(1), columns.flatten(1)


def _axis_taps(position: torch.Tensor, side: int, stride: int, weight: torch.Tensor):
    """Index part (int64, clamped into ``[0, side)``, times ``stride``) and weight (0 outside) of
    integer-valued positions along one axis."""
    inner = position.clamp(0, side - 1)
    return inner.mul(stride).long(), torch.where(inner == position, weight, 0.0)


def bilinear_taps(
    grid: torch.Tensor, in_sides: Sequence[int], padding: str = "zeros"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The four input voxels and weights ``F.grid_sample`` (bilinear, ``align_corners=False``) combines
    at each point of a 2D grid: north-west, north-east, south-west, south-east, as its CPU kernel.

    Args:
        grid: float (B, H, W, 2) normalized coordinates, last axis first (:func:`sampling_grid`, D = 2).
        in_sides: (H_in, W_in), the plane it reads.
        padding: ``zeros`` (a tap outside the plane weighs 0), ``border`` or ``reflection``.

    Returns:
        int64 (B, H W, 4) row-major indices into the plane (clamped into it), float32 (B, H W, 4) weights.
    """
    rows, columns = _plane_coordinates(grid, in_sides, padding)
    north, west = rows.floor(), columns.floor()
    south_w, east_w = rows - north, columns - west
    row_taps = [
        _axis_taps(north + k, in_sides[0], in_sides[1], w) for k, w in enumerate((1 - south_w, south_w))
    ]
    column_taps = [_axis_taps(west + k, in_sides[1], 1, w) for k, w in enumerate((1 - east_w, east_w))]
    index = torch.empty(*rows.shape, 4, dtype=torch.int64, device=grid.device)
    weights = torch.empty(*rows.shape, 4, dtype=torch.float32, device=grid.device)
    # written a tap at a time (strided writes): stacking along a last axis of 4 is several times slower
    for tap, ((r, r_w), (c, c_w)) in enumerate(itertools.product(row_taps, column_taps)):
        torch.add(r, c, out=index[..., tap])
        torch.mul(r_w, c_w, out=weights[..., tap])
    return index, weights


def nearest_taps(
    grid: torch.Tensor, in_sides: Sequence[int], padding: str = "zeros"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input voxel ``F.grid_sample`` (nearest, ``align_corners=False``) reads at each point of a 2D
    grid (positions rounded half to even), and whether it lies in the plane (``zeros`` padding reads 0).

    Returns:
        int64 (B, H W) row-major indices (clamped into the plane), bool (B, H W).
    """
    rows, columns = (p.round_() for p in _plane_coordinates(grid, in_sides, padding))
    inner_rows, inner_columns = rows.clamp(0, in_sides[0] - 1), columns.clamp(0, in_sides[1] - 1)
    inside = (inner_rows == rows).logical_and_(inner_columns == columns)
    return inner_rows.mul_(in_sides[1]).add_(inner_columns).long(), inside


def warp_slices(
    x: torch.Tensor,
    grid: torch.Tensor,
    samples: torch.Tensor,
    padding: str = "reflection",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bilinear in-plane resampling of the slices of ``samples`` of a batch whose slice axis is last.

    Every slice along S is warped alike (2D grids: nnU-Net's dummy 2D). A voxel's S values are one row of
    contiguous memory, so each output row is a weighted sum of four input rows: an ``embedding_bag`` per
    channel over the selected samples, which reads in place the layout ``grid_sample`` would need moved
    (the taps are computed once and stay in cache for every channel).

    Args:
        x: float (B, C, H_in, W_in, S), contiguous.
        grid: (N, H, W, 2) one grid per selected sample (:func:`sampling_grid`, D = 2).
        samples: int64 (N,) the samples of ``x`` the grids are for.
        padding: as :func:`bilinear_taps`.
        out: (B', C, H, W, S) where to write the result, at the rows ``samples`` (others untouched); it
            may be ``x`` itself (a channel is read before it is written). Default: a new (N, ...) tensor.

    Returns:
        ``out``, or the (N, C, H, W, S) result; equal to ``grid_sample`` on each slice to float rounding.
    """
    _, channels, *in_sides, slices = x.shape
    count, out_sides = len(samples), grid.shape[1:3]
    index, weights = bilinear_taps(grid.to(x.device), in_sides, padding)
    plane = in_sides[0] * in_sides[1]
    samples_on_host, samples = samples.tolist(), samples.to(x.device)
    # rows of x as (B C H_in W_in, S), from channel 0 of each sample; channel c reads the table c planes on
    rows = index.add_((samples * (channels * plane))[:, None, None])
    rows = rows.view(-1, 4).to(torch.int32 if x.numel() < 2**31 else torch.int64)
    weights = weights.to(x.dtype).view(-1, 4)
    table = x.view(-1, slices)
    target = out
    if out is None:
        target = torch.empty(count, channels, *out_sides, slices, dtype=x.dtype, device=x.device)
    places = [(0, count, 0)] if out is None else sample_runs(samples_on_host)
    for c in range(channels):
        warped = F.embedding_bag(rows, table[c * plane :], per_sample_weights=weights, mode="sum")
        warped = warped.view(count, *out_sides, slices)
        for start, stop, first in places:
            target[start:stop, c].copy_(warped[first : first + stop - start])
    return target


def sample_runs(samples: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs ``(start, stop, first)`` of consecutive values of sorted distinct ``samples``: positions
    ``first`` .. of the list hold samples ``start`` .. ``stop - 1`` (plain slice copies: ``index_copy_``
    into a strided view is several times slower on the CPU)."""
    runs: list[tuple[int, int, int]] = []
    for position, sample in enumerate(samples):
        if runs and runs[-1][1] == sample:
            runs[-1] = (runs[-1][0], sample + 1, runs[-1][2])
        else:
            runs.append((sample, sample + 1, position))
    return runs


def warp_slice_labels(
    label: torch.Tensor,
    grid: torch.Tensor,
    samples: torch.Tensor,
    padding: str = "reflection",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Nearest-neighbour :func:`warp_slices` of label maps (B, H_in, W_in, S) (contiguous), into ``out``
    (B', H, W, S) at the rows ``samples`` or a new (N, H, W, S): every output value an input value (or
    background 0 outside the plane with ``zeros``)."""
    _, *in_sides, slices = label.shape
    out_sides = grid.shape[1:3]
    index, inside = nearest_taps(grid.to(label.device), in_sides, padding)
    rows = index + samples.to(label.device)[:, None] * (in_sides[0] * in_sides[1])
    warped = label.view(-1, slices).index_select(0, rows.flatten())
    if padding == "zeros":  # reflected or clipped positions lie in the plane
        warped.mul_(inside.flatten()[:, None].to(warped.dtype))
    warped = warped.view(len(samples), *out_sides, slices)
    if out is None:
        return warped
    for start, stop, first in sample_runs(samples.tolist()):
        out[start:stop].copy_(warped[first : first + stop - start])
    return out


def elastic_displacement(control: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A smooth displacement field from displacements at a coarse grid of control points.

    Args:
        control: float (B, D, G1, ..., GD) displacements in voxels at control points spread evenly from
            face to face (every G >= 2), D = 3 (or 2 for slices).
        shape: the D sides of the field.

    Returns:
        float32 (B, *shape, D), trilinear (bilinear) between the control points.
    """
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    field = F.interpolate(control.float(), size=tuple(shape), mode=mode, align_corners=True)
    return field.movedim(1, -1)


# ------------------------------------------------------------------------------------------------ noise
def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds, Wellons' lowbias32 form), in place, on int32
    tensors holding the 32 bits (two's complement).

    int32 products wrap to their low 32 bits on the CPU and CUDA alike, the bits an unsigned 32-bit
    product keeps; right shifts are arithmetic, so each is masked to the bits a logical shift keeps.
    (int32 rather than int64 with a mask: the CPU multiplies 16 lanes at a time instead of emulating
    64-bit products, about 10x faster.)
    """
    shifted = torch.empty_like(x)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=shifted).bitwise_and_(0xFFFF))
    x.mul_(0x7FEB352D)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15, out=shifted).bitwise_and_(0x1FFFF)).mul_(0x2C1B3C6D)
    return x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=shifted).bitwise_and_(0xFFFF))


def _as_int32(x: torch.Tensor) -> torch.Tensor:
    """int32 with the low 32 bits of int64 values below 2**32."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


@functools.lru_cache(maxsize=4)
def _position_hash(pairs: int, device: torch.device) -> torch.Tensor:
    """int32 (pairs,) hash of each position: the same for every key and batch, so made once per shape."""
    return _mix32_(torch.arange(pairs, dtype=torch.int32, device=device))


@functools.lru_cache(maxsize=4)
def _box_muller_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 (65536,) each: the radius ``sqrt(-2 log u)`` and the cosine and sine of the angle
    ``2 pi u`` of every 16-bit uniform ``u = (k + 0.5) / 65536`` (looked up: a quarter of the cost of
    evaluating them per voxel)."""
    k = torch.arange(65536, dtype=torch.float32, device=device).add_(0.5)
    angle = k.mul(2.0 * math.pi / 65536.0)
    radius = k.div(65536.0).log_().mul_(-2.0).sqrt_()
    return radius, torch.cos(angle), torch.sin(angle)


def _normal_pairs(
    keys: torch.Tensor, pairs: int, device: torch.device, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-Muller pairs of :func:`hash_normal`: the radius (P, pairs), times ``scale``, and the int32
    (P pairs,) table index of the angle of each pair."""
    keys = _as_int32(keys.to(device, torch.int64) & MASK32)
    bits = _mix32_(torch.bitwise_xor(_position_hash(pairs, device)[None, :], _mix32_(keys)[:, None]))
    radii = _box_muller_tables(device)[0]
    angle = (bits & 0xFFFF).flatten()
    radius = radii.index_select(0, bits.bitwise_right_shift_(16).bitwise_and_(0xFFFF).flatten())
    radius = radius.view(len(keys), pairs)
    if scale is not None:
        radius.mul_(scale.to(device, torch.float32)[:, None])
    return radius, angle


def hash_normal(
    keys: torch.Tensor,
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard normal numbers that are a pure function of ``(key, position)``, the same on every device.

    One 32-bit hash per pair of numbers, split into two 16-bit uniforms for a Box-Muller transform; the
    16-bit resolution caps |z| at 4.7 (ample for augmentation noise). A volume holds the pairs' cosine
    parts first, then their sine parts.

    Args:
        keys: int (P,) one key per output volume (values below 2**31).
        shape: the volume shape.
        scale: float (P,) standard deviations to multiply each volume by (on the pairs' radius: half
            the work of scaling the numbers).

    Returns:
        float32 (P, *shape).
    """
    count, device = math.prod(shape), torch.device(device)
    z = torch.zeros(len(keys), *shape, device=device)
    return _add_normal_(z.view(len(keys), count), keys, scale).view(z.shape)


def _add_normal_(flat: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``flat`` (P, N) plus :func:`hash_normal` of its volumes, in place (no tensor of the numbers)."""
    count = flat.shape[1]
    pairs = (count + 1) // 2
    radius, angle = _normal_pairs(keys, pairs, flat.device, scale)
    _, cosines, sines = _box_muller_tables(flat.device)
    radius = radius.to(flat.dtype)
    flat[:, :pairs].addcmul_(cosines.index_select(0, angle).view_as(radius).to(flat.dtype), radius)
    sine = sines.index_select(0, angle).view_as(radius)[:, : count - pairs].to(flat.dtype)
    flat[:, pairs:].addcmul_(sine, radius[:, : count - pairs])
    return flat


def gaussian_noise(x: torch.Tensor, std: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``x + std * N(0, 1)`` (``intensity/gaussian_noise.py``).

    Args:
        x: float (P, X, Y, Z).
        std: (P,) standard deviations.
        keys: int (P,) keys of :func:`hash_normal` (one per volume: distinct keys, independent noise).
    """
    return gaussian_noise_(x.clone(), std, keys)


def gaussian_noise_(x: torch.Tensor, std: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_noise` in place, the noise added as it is made (``addcmul_``: no noise tensor; on
    the CPU :func:`~brainnet.augment.cpu_kernels.add_hash_normal_`, one pass)."""
    if CK.runs_on(x) and x.is_contiguous():
        CK.add_hash_normal_(x.view(len(x), -1), keys, std, _box_muller_tables(x.device))
        return x
    if x.is_contiguous():
        _add_normal_(x.view(len(x), -1), keys, std)
        return x
    return x.add_(hash_normal(keys, x.shape[1:], x.device, scale=std).to(x.dtype))


# ------------------------------------------------------------------------------------------------- blur
def _round_to_odd(n: torch.Tensor) -> torch.Tensor:
    """batchgeneratorsv2's ``_round_to_nearest_odd`` (Python's ``round`` is half-to-even, as torch's)."""
    rounded = torch.round(n)
    even_fix = torch.where(n - rounded >= 0, rounded + 1, rounded - 1)
    return torch.where(rounded % 2 == 1, rounded, even_fix)


def gaussian_kernels(sigma: torch.Tensor, max_radius: int | None = None) -> torch.Tensor:
    """One normalized 1D Gaussian per sigma, centred in a common odd length (zeros beyond each own support).

    Each kernel has batchgeneratorsv2's taps: ``round_to_odd(6 sigma + 0.5)`` of them, at integer offsets
    (``noise/gaussian_blur.py``: ``_build_kernel(sigma, truncate=6)``).

    Args:
        sigma: float (P,) on the CPU.
        max_radius: cut every kernel to at most this many taps on each side (then renormalized).

    Returns:
        float32 (P, 2 R + 1) with R the largest radius.
    """
    sigma = sigma.double().cpu()
    radius = (_round_to_odd(sigma * BLUR_TRUNCATE + 0.5) - 1) / 2
    if max_radius is not None:
        radius = radius.clamp(max=max_radius)
    reach = int(radius.max())
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    pdf = torch.where(offsets.abs()[None, :] <= radius[:, None], pdf, torch.zeros_like(pdf))
    return (pdf / pdf.sum(dim=1, keepdim=True)).float()


#: The longest last axis :func:`gaussian_blur` convolves as a matrix product (a course patch's 16 slices).
DENSE_BLUR_SIDE = 32


def reflected_convolution_matrices(kernels: torch.Tensor, size: int) -> torch.Tensor:
    """The (P, size, size) matrices ``A`` with ``A @ v`` = ``v`` (size,) padded by reflection (``F.pad``'s
    ``reflect``: index -j reads j) and convolved with each centred kernel of (P, 2 R + 1), R < size."""
    radius = (kernels.shape[1] - 1) // 2
    taps = torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]  # (size, 2 R + 1)
    taps = torch.where(taps < 0, -taps, torch.where(taps >= size, 2 * (size - 1) - taps, taps))
    matrices = torch.zeros(len(kernels), size, size, dtype=kernels.dtype, device=kernels.device)
    columns = taps.to(kernels.device).expand(len(kernels), -1, -1)
    return matrices.scatter_add_(2, columns, kernels[:, None, :].expand(-1, size, -1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each volume with its own sigma per axis, mirrored borders.

    X and Y: a weighted sum of shifted views of the padded stack per axis (one fused multiply-add per
    tap), faster on the CPU than a grouped ``conv3d`` with the same taps. A short last axis (at most
    :data:`DENSE_BLUR_SIDE`, e.g. a course patch's 16 slices) is one batched matrix product with the
    reflection folded into the matrix: shifted views of 16-value rows are the slowest of the three.

    Args:
        x: float (P, X, Y, Z).
        sigma: float (P, 3) in voxels, on the CPU.
    """
    out = x
    for axis in range(3):
        size = x.shape[1 + axis]
        kernel = gaussian_kernels(sigma[:, axis], max_radius=size - 1).to(x.device, x.dtype)
        radius = (kernel.shape[1] - 1) // 2
        if radius == 0:
            continue
        if axis == 2 and size <= DENSE_BLUR_SIDE:
            matrices = reflected_convolution_matrices(kernel, size)
            out = torch.bmm(out.reshape(len(x), -1, size), matrices.transpose(1, 2)).view(x.shape)
            continue
        out = _blur_axis(out, kernel, 1 + axis)
    return out


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` (P, ...) padded by reflection along ``dim`` and convolved with each symmetric centred kernel of
    (P, 2 R + 1), R < the side: the centre tap, then each pair of taps at distance d as shifted views of
    ``x`` itself, and the d planes by each face that read across it from the mirrored planes (no padded
    copy: ``F.pad``'s reflection costs more than a tap)."""
    size, radius = x.shape[dim], (kernel.shape[1] - 1) // 2
    weight = kernel.view(len(kernel), -1, *[1] * (x.ndim - 1))
    out = x * weight[:, radius]
    for d in range(1, radius + 1):
        w = weight[:, radius + d]  # = weight[:, radius - d]
        out.narrow(dim, d, size - d).addcmul_(x.narrow(dim, 0, size - d), w)  # from i - d
        out.narrow(dim, 0, size - d).addcmul_(x.narrow(dim, d, size - d), w)  # from i + d
        # i < d reads d - i; i >= size - d reads 2 (size - 1) - i - d
        out.narrow(dim, 0, d).addcmul_(x.narrow(dim, 1, d).flip(dim), w)
        out.narrow(dim, size - d, d).addcmul_(x.narrow(dim, size - 1 - d, d).flip(dim), w)
    return out


# -------------------------------------------------------------------------------------------- intensity
def _per_volume(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, x.dtype).view(-1, 1, 1, 1)


def multiply(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiplicative brightness: float (P, X, Y, Z) times ``factor`` (P,) (``intensity/brightness.py``)."""
    return multiply_(x.clone(), factor)


def multiply_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """:func:`multiply` in place."""
    return x.mul_(_per_volume(factor, x))


def contrast(x: torch.Tensor, factor: torch.Tensor, preserve_range: bool = True) -> torch.Tensor:
    """``(x - mean) * factor + mean`` per volume, clipped to the volume's former [min, max] when asked
    (``intensity/contrast.py``, ``ContrastTransform``).

    Args:
        x: float (P, X, Y, Z).
        factor: (P,).
    """
    return contrast_(x.clone(), factor, preserve_range)


def contrast_(x: torch.Tensor, factor: torch.Tensor, preserve_range: bool = True) -> torch.Tensor:
    """:func:`contrast` in place."""
    dims = (1, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    if preserve_range:
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    factor = _per_volume(factor, x)
    x.mul_(factor).add_(mean * (1 - factor))  # (x - mean) factor + mean in two passes
    if preserve_range:  # maximum and minimum: clamp_ with tensor bounds is 10x slower on the CPU
        torch.minimum(torch.maximum(x, low, out=x), high, out=x)
    return x


def low_resolution(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Simulated low resolution: nearest-exact downsampling to ``round(N * scale)`` per axis, then linear
    upsampling back (``spatial/low_resolution.py``: ``interpolate`` twice).

    Args:
        x: float (P, X, Y, Z).
        scale: float (P, 3) on the CPU, factors in (0, 1]; 1 leaves an axis alone.
    """
    return low_resolution_(x.clone(), scale)


def nearest_exact_index(size: int, down: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 (down,) the input index ``F.interpolate(..., mode="nearest-exact")`` reads for each output
    index along an axis of ``size`` voxels resampled to ``down``: ``floor((i + 0.5) size / down)`` in
    float32 as torch computes it (``UpSample.h``), clamped to the last voxel."""
    return _nearest_exact_index(size, down).to(device)


@functools.lru_cache(maxsize=1024)
def _nearest_exact_index(size: int, down: int) -> torch.Tensor:
    """:func:`nearest_exact_index` on the CPU, kept per (size, down): a batch asks for a few pairs, and
    their few small ops had cost more than the kernels that use them (read-only)."""
    scale = torch.tensor(size, dtype=torch.float32) / down
    index = (torch.arange(down, dtype=torch.float32) + 0.5).mul_(scale).floor_().clamp_(max=size - 1)
    return index.long()


def linear_taps(size: int, up: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """``F.interpolate(..., mode="linear", align_corners=False)``'s two input indices (int64) and weights
    for each of ``up`` outputs from ``size`` inputs along an axis (``UpSampleKernel.cpp``: source
    ``(i + 0.5) size / up - 0.5`` in float32, clamped at 0). The fraction of a source index near 100
    carries its float32 rounding (about 4e-6), so the weights can differ from ``interpolate``'s in that
    digit. Kept per (size, up) on the CPU (:func:`_nearest_exact_index`'s reason)."""
    return tuple(t.to(device) for t in _linear_taps(size, up))


@functools.lru_cache(maxsize=1024)
def _linear_taps(size: int, up: int) -> tuple[torch.Tensor, ...]:
    scale = torch.tensor(size, dtype=torch.float32) / up
    source = (torch.arange(up, dtype=torch.float32) + 0.5).mul_(scale).sub_(0.5).clamp_(min=0)
    first = source.floor().clamp_(max=size - 1)
    second_w = (source - first).clamp_(0, 1)
    first = first.long()
    second = (first + 1).clamp_(max=size - 1)
    return first, second, 1 - second_w, second_w


@functools.lru_cache(maxsize=1024)
def linear_tap_table(size: int, up: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`linear_taps` as the CPU kernels read them: int64 (up, 2) input indices and float32 (up, 2)
    weights, kept per (size, up) (shared: not to be written to)."""
    first, second, first_w, second_w = _linear_taps(size, up)
    return torch.stack((first, second), 1).numpy(), torch.stack((first_w, second_w), 1).float().numpy()


def upsample_slices(small: torch.Tensor, sides: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of a slice stack (H', W', S), slice axis last, to
    (H, W, S): as :func:`warp_slices`, four input rows per output row in one ``embedding_bag``, which
    reads the layout in place (``interpolate`` on it as channels-last copies it twice).

    Returns:
        (H W, S), equal to ``F.interpolate`` of each slice to float rounding.
    """
    (rows, columns), slices = small.shape[:2], small.shape[2]
    row_taps = linear_taps(rows, sides[0], small.device)
    column_taps = linear_taps(columns, sides[1], small.device)
    index = torch.empty(*sides, 4, dtype=torch.int64, device=small.device)
    weights = torch.empty(*sides, 4, dtype=small.dtype, device=small.device)
    for tap, (r, c) in enumerate(itertools.product(range(2), range(2))):
        torch.add(row_taps[r][:, None] * columns, column_taps[c][None, :], out=index[..., tap])
        torch.mul(row_taps[2 + r][:, None], column_taps[2 + c][None, :], out=weights[..., tap])
    return F.embedding_bag(
        index.view(-1, 4), small.reshape(-1, slices), per_sample_weights=weights.view(-1, 4), mode="sum"
    )


def low_resolution_(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """:func:`low_resolution` in place, a volume at a time: the nearest-exact downsampling as an
    ``index_select`` per resampled axis (the same voxels, several times faster than ``interpolate``); the
    upsampling of a slice stack (X and Y resampled, Z kept) with :func:`upsample_slices`, any other with
    ``interpolate``, the axes that keep their size as its channels."""
    sizes = list(x.shape[1:])
    kernels = CK.runs_on(x)
    for p, factors in enumerate(scale.double().tolist()):
        down = [min(max(round(size * f), 1), size) for size, f in zip(sizes, factors, strict=True)]
        axes = [a for a in range(3) if down[a] != sizes[a]]
        if not axes:
            continue
        small = x[p]
        for a in axes:
            small = small.index_select(a, nearest_exact_index(sizes[a], down[a], x.device))
        if kernels:  # the kept axes read their own index with weight 1
            tables = [linear_tap_table(n, size) for n, size in zip(small.shape, sizes, strict=True)]
            CK.upsample(small, x[p], tables)
            continue
        if axes == [0, 1]:
            x[p].view(-1, sizes[2]).copy_(upsample_slices(small, sizes[:2]))
            continue
        kept = [a for a in range(3) if a not in axes]
        small = small.permute(*kept, *axes).reshape(1, -1, *[down[a] for a in axes])
        mode = ("linear", "bilinear", "trilinear")[len(axes) - 1]
        volume = x[p].permute(*kept, *axes)  # (kept..., resampled...)
        volume.copy_(F.interpolate(small, [sizes[a] for a in axes], mode=mode)[0].view(volume.shape))
    return x


def gamma(
    x: torch.Tensor, gammas: torch.Tensor, invert: bool = False, retain_stats: bool = True
) -> torch.Tensor:
    """Gamma of each volume rescaled to [0, 1] and back, optionally of ``-x`` (``intensity/gamma.py``).

    With ``retain_stats`` the result gets the volume's former mean and (unbiased) std back.

    Args:
        x: float (P, X, Y, Z).
        gammas: (P,) exponents.
    """
    return gamma_(x.clone(), gammas, invert, retain_stats)


def gamma_(
    x: torch.Tensor, gammas: torch.Tensor, invert: bool = False, retain_stats: bool = True
) -> torch.Tensor:
    """:func:`gamma` in place, with the inversion and the rescaling folded into the affine maps around
    ``t ** g`` (the same values to rounding, in fewer passes than each step on its own).

    For ``y = sign x``: ``t = (y - min y) / spread`` is ``(x - low) / spread`` or ``(high - x) / spread``,
    and ``t ** g * spread + min y`` is an affine map of ``t ** g``. With ``retain_stats`` the result
    depends on ``t ** g`` only through its standardization, which a positive scale leaves alone: the
    volume's power ``u ** g`` of ``u = (x - low)`` or ``(high - x)`` is standardized instead (no
    division), its std rescaled to keep batchgeneratorsv2's floors (``spread`` at least ``EPS``, and
    ``spread * std(t ** g)`` at least ``EPS``).
    """
    dims = (1, 2, 3)
    sign = -1.0 if invert else 1.0
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    spread = high - low
    origin = high if invert else low
    floor = spread.clamp(min=EPS)
    gammas = _per_volume(gammas, x)
    if not retain_stats:
        # t ** g as exp2(g log2 t) (t in [0, 1]; log2 0 = -inf gives 0): pow with a tensor exponent is 3x
        # slower, exp 3x slower than exp2; (x - origin) first: the extreme voxel gives t = 0 exactly
        log2_(x.sub_(origin).div_(floor * sign)).mul_(gammas).exp2_()
        return x.mul_(spread * sign).add_(origin)
    scratch = torch.empty_like(x)
    mean, std = _mean_std(x, scratch)
    if invert:
        torch.sub(origin, x, out=x)
    else:
        x.sub_(origin)
    log2_(x).mul_(gammas).exp2_()  # u ** g = floor ** g t ** g
    now_mean, now_std = _mean_std(x, scratch)
    # batchgeneratorsv2's factor spread std / max(spread std(t ** g), EPS), for u ** g instead of t ** g
    factor = spread * std * sign / torch.maximum(spread * now_std, EPS * floor.pow(gammas))
    return x.mul_(factor).add_(mean - now_mean * factor)  # (x - now_mean) factor + mean in two passes


def log2_(x: torch.Tensor) -> torch.Tensor:
    """``x.log2_()`` (float, any shape; 0 gives -inf), on the CPU by numpy where numpy's loop is the fast one.

    Which library's CPU ``log2`` is fast depends on the CPU: numpy's float loops call Intel's SVML only
    where its dispatch found AVX512_SKX (``numpy/_core/src/umath/loops_umath_fp.dispatch.c.src``; libm's
    scalar loop otherwise), and torch's went through a several times slower path on the AVX-512 AMD CPU
    this was first measured on (``benchmarks/README.md``, augmentation). So numpy is used where it has
    AVX512_SKX, torch elsewhere: one fixed choice per machine (same values to an ulp), so a run and its
    resume take the same one. Other devices, dtypes numpy lacks and tensors that need gradients use torch.
    """
    if (
        not _NUMPY_SVML
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or x.requires_grad
    ):
        return x.log2_()
    values = x.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log2(values, out=values)
    return x


def _numpy_has_svml() -> bool:
    """Whether numpy's runtime dispatch found AVX512_SKX (its SVML loops for log2 and exp2).

    A numpy built without SVML (some distribution and Windows builds) would still pass: it then runs
    libm's loop, as torch's path would be faster; the values are the same either way."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2 named the module numpy.core
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return bool(__cpu_features__.get("AVX512_SKX", False))


_NUMPY_SVML = _numpy_has_svml()


def _mean_std(x: torch.Tensor, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std of each volume of (P, X, Y, Z), shaped (P, 1, 1, 1); ``scratch`` is a tensor
    like ``x`` to overwrite.

    Two passes, the second over the centred values (``vecdot`` of them with themselves, accumulated as
    accurately as ``sum``): the one-pass ``sum x^2 - n mean^2`` loses ``mean^2 / variance`` times more to
    cancellation (near 100 for a gamma-mapped volume), and torch's ``std`` over three trailing dims is
    several times slower on the CPU.
    """
    dims = (1, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    centred = torch.sub(x, mean, out=scratch).flatten(1)
    variance = torch.linalg.vecdot(centred, centred) / max(centred.shape[1] - 1, 1)
    return mean, variance.sqrt_().view(-1, 1, 1, 1)
