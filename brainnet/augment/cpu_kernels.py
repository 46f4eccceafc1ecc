"""CPU kernels of the augmentation (numba): resampling, hash noise and linear upsampling, each in one pass.

Why hand-written (measured by ``benchmarks/bench_augment.py``, whose brainnet rows run with and without
them, ``BRAINNET_CPU_KERNELS=0``):

- resampling (:func:`warp_sample`): ``F.grid_sample`` of a 3D volume on the CPU is a scalar loop
  (``aten/src/ATen/native/GridSampler.cpp``, ``grid_sampler_3d_cpu_impl``) fed by a grid tensor of three
  floats per output voxel, built and reflected at the faces in several passes over memory, and called a
  second time on that grid for the labels. The kernel computes each output voxel's input position from
  the matrix inline, reflects or clips it, and writes the trilinear (bilinear for a slice stack) image
  values and the nearest label together, in cubes of output voxels whose input stays in the cache.
- noise (:func:`add_hash_normal_`): the tensor path makes a dozen passes over int32 and float32
  temporaries (hash rounds, three table lookups, the products); the kernel adds each pair of numbers
  where it computes them.
- upsampling (:func:`upsample`): the tensor path gathers through index and weight tables of four
  entries per output voxel; the kernel reads the taps of each row and column from small per-axis tables.

Every value is computed as the tensor path (:mod:`brainnet.augment.functional`, used on other devices
and as these kernels' reference in the tests) computes it, in float32 and in the same order: for the
resampling :func:`~brainnet.augment.functional.sampling_grid`'s sum over output axes, then
:func:`~brainnet.augment.functional.reflect_grid`, then ``grid_sample``'s unnormalization (a volume,
``GridSampler.h``) or :func:`~brainnet.augment.functional.bilinear_taps`' (a slice stack), so a label
voxel reads the tensor path's input voxel and image values agree to float rounding (a sum of products
may differ in its last bit); for the noise the same 32-bit hash and tables. Each output value is written
by one thread from its own inputs: results do not depend on the thread count.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency of brainnet; the tensor path needs none
    numba = None

#: Padding codes of the kernels (``SpatialParams.padding``; reflection is folded like ``reflect_grid``).
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_FOUR = np.float32(4.0)
_HALF = np.float32(0.5)
#: Side of the output cubes a thread resamples at a time (:func:`_warp_volume`).
TILE = 16


#: Whether the kernels run at all (numba imports, and the environment variable ``BRAINNET_CPU_KERNELS`` is
#: not ``0``); the tests switch it to compare with the tensor path.
ENABLED = numba is not None and os.environ.get("BRAINNET_CPU_KERNELS", "1") != "0"


def runs_on(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x``: float32 on the CPU, kernels enabled; the tensor path otherwise."""
    return ENABLED and x.device.type == "cpu" and x.dtype == torch.float32


if numba is not None:
    _jit = numba.njit(parallel=True, cache=True, nogil=True, fastmath=False, error_model="numpy")
    _inline = numba.njit(cache=True, inline="always", fastmath=False, error_model="numpy")

    @_inline
    def _tap(position, side):
        """Index (clamped into the axis) and whether an integer-valued ``position`` lies on it."""
        index = min(max(position, 0), side - 1)
        return index, index == position

    @_inline
    def _fold(g, inner):
        """``reflect_grid`` of one normalized coordinate (float32): a triangle wave, clamped to ``inner``."""
        a = g + _ONE
        if _ZERO <= a < _FOUR:  # fmod is exact, and the identity on [0, 4): no libm call for most points
            r = a
        else:
            r = np.fmod(a, _FOUR)
            if r != 0 and r < 0:  # torch.remainder: the sign of the divisor
                r = r + _FOUR
        f = _ONE - abs(r - _TWO)
        return min(max(f, -inner), inner)

    @_inline
    def _volume_coordinate(g, side, padding, inner):
        """Input voxel coordinate of normalized ``g`` along an axis of ``side`` voxels, as ``grid_sample``
        (``align_corners=False``) after the tensor path's reflection or with its border clip."""
        if padding == 2:
            g = _fold(g, inner)
        x = ((g + _ONE) * np.float32(side) - _ONE) / _TWO
        if padding == 1:
            x = min(max(x, np.float32(0.0)), np.float32(side - 1))
        return x

    @_jit
    def _warp_volume(image, label, has_label, columns, shift, inner, padding, out_image, out_label):
        """Trilinear ``image`` (X, Y, Z, C) and nearest ``label`` (X, Y, Z) at ``M p + t`` into the outputs
        (C, X', Y', Z') and (X', Y', Z'), in cubes of :data:`TILE` output voxels (a rotated cube reads a
        small block of the input, which stays in the cache; rows of the output would stream it).

        ``columns`` float32 (3, 3): row a (input axis), column j (output axis) of the normalized matrix;
        ``shift`` float32 (3,), ``inner`` float32 (3,) the reflection's clamp per input axis.
        """
        xi, yi, zi, _ = image.shape
        xo, yo, zo = out_image.shape[1:]
        sides = (xi, yi, zi)
        ti, tj, tk = (xo + TILE - 1) // TILE, (yo + TILE - 1) // TILE, (zo + TILE - 1) // TILE
        for tile in numba.prange(ti * tj * tk):
            bi, rest = divmod(tile, tj * tk)
            bj, bk = divmod(rest, tk)
            for i in range(bi * TILE, min(bi * TILE + TILE, xo)):
                p0 = np.float32(i) - np.float32((xo - 1) / 2)
                a0 = shift[0] + p0 * columns[0, 0]
                b0 = shift[1] + p0 * columns[1, 0]
                c0 = shift[2] + p0 * columns[2, 0]
                for j in range(bj * TILE, min(bj * TILE + TILE, yo)):
                    p1 = np.float32(j) - np.float32((yo - 1) / 2)
                    a1 = a0 + p1 * columns[0, 1]
                    b1 = b0 + p1 * columns[1, 1]
                    c1 = c0 + p1 * columns[2, 1]
                    for k in range(bk * TILE, min(bk * TILE + TILE, zo)):
                        p2 = np.float32(k) - np.float32((zo - 1) / 2)
                        # grid_sample's x, y, z are the last, middle and first axis: z = X, y = Y, x = Z
                        fz = _volume_coordinate(a1 + p2 * columns[0, 2], sides[0], padding, inner[0])
                        fy = _volume_coordinate(b1 + p2 * columns[1, 2], sides[1], padding, inner[1])
                        fx = _volume_coordinate(c1 + p2 * columns[2, 2], sides[2], padding, inner[2])
                        _trilinear(image, out_image, i, j, k, fx, fy, fz)
                        if has_label:
                            nx, ny, nz = int(np.rint(fx)), int(np.rint(fy)), int(np.rint(fz))
                            inside = 0 <= nx < zi and 0 <= ny < yi and 0 <= nz < xi
                            out_label[i, j, k] = label[nz, ny, nx] if inside else 0

    @_inline
    def _trilinear(image, out_image, i, j, k, ix, iy, iz):
        """``grid_sampler_3d_cpu_impl``'s corners, weights and their order, for every channel of a
        channels-last ``image`` (X, Y, Z, C): a corner's C values are adjacent (a corner outside the
        volume reads a clamped one with weight 0)."""
        depth, height, width, channels = image.shape
        x0, y0, z0 = np.floor(ix), np.floor(iy), np.floor(iz)
        wx1, wy1, wz1 = ix - x0, iy - y0, iz - z0
        wx0, wy0, wz0 = (x0 + _ONE) - ix, (y0 + _ONE) - iy, (z0 + _ONE) - iz
        ax, in_ax = _tap(int(x0), width)
        bx, in_bx = _tap(int(x0) + 1, width)
        ay, in_ay = _tap(int(y0), height)
        by, in_by = _tap(int(y0) + 1, height)
        az, in_az = _tap(int(z0), depth)
        bz, in_bz = _tap(int(z0) + 1, depth)
        w0 = wx0 * wy0 * wz0 if in_ax and in_ay and in_az else _ZERO
        w1 = wx1 * wy0 * wz0 if in_bx and in_ay and in_az else _ZERO
        w2 = wx0 * wy1 * wz0 if in_ax and in_by and in_az else _ZERO
        w3 = wx1 * wy1 * wz0 if in_bx and in_by and in_az else _ZERO
        w4 = wx0 * wy0 * wz1 if in_ax and in_ay and in_bz else _ZERO
        w5 = wx1 * wy0 * wz1 if in_bx and in_ay and in_bz else _ZERO
        w6 = wx0 * wy1 * wz1 if in_ax and in_by and in_bz else _ZERO
        w7 = wx1 * wy1 * wz1 if in_bx and in_by and in_bz else _ZERO
        for c in range(channels):
            total = image[az, ay, ax, c] * w0
            total += image[az, ay, bx, c] * w1
            total += image[az, by, ax, c] * w2
            total += image[az, by, bx, c] * w3
            total += image[bz, ay, ax, c] * w4
            total += image[bz, ay, bx, c] * w5
            total += image[bz, by, ax, c] * w6
            total += image[bz, by, bx, c] * w7
            out_image[c, i, j, k] = total

    @_inline
    def _plane_coordinate(g, side, padding, inner):
        """:func:`~brainnet.augment.functional.bilinear_taps`'s position of normalized ``g`` (float32)."""
        if padding == 2:
            g = _fold(g, inner)
        x = (g + _ONE) * np.float32(side / 2) - _HALF
        if padding == 1:
            x = min(max(x, np.float32(0.0)), np.float32(side - 1))
        return x

    @_jit
    def _warp_slices(image, label, has_label, columns, shift, inner, padding, out_image, out_label):
        """Bilinear ``image`` (C, H, W, S) and nearest ``label`` (H, W, S), every slice alike, into the
        outputs; ``columns`` float32 (2, 2), ``shift`` and ``inner`` float32 (2,) as :func:`_warp_volume`."""
        hi, wi = image.shape[1:3]
        ho, wo = out_image.shape[1:3]
        for i in numba.prange(ho):
            p0 = np.float32(i) - np.float32((ho - 1) / 2)
            a0 = shift[0] + p0 * columns[0, 0]
            b0 = shift[1] + p0 * columns[1, 0]
            for j in range(wo):
                p1 = np.float32(j) - np.float32((wo - 1) / 2)
                row = _plane_coordinate(a0 + p1 * columns[0, 1], hi, padding, inner[0])
                column = _plane_coordinate(b0 + p1 * columns[1, 1], wi, padding, inner[1])
                _bilinear_slices(image, out_image, i, j, row, column)
                if has_label:
                    nr, nc = np.rint(row), np.rint(column)
                    if 0 <= nr <= hi - 1 and 0 <= nc <= wi - 1:
                        out_label[i, j, :] = label[int(nr), int(nc), :]
                    else:
                        out_label[i, j, :] = 0

    @_inline
    def _bilinear_slices(image, out_image, i, j, row, column):
        """:func:`~brainnet.augment.functional.warp_slices`'s four taps (NW, NE, SW, SE; an index clamped
        into the plane and weight 0 outside it), summed in that order."""
        channels, hi, wi, slices = image.shape
        north, west = np.floor(row), np.floor(column)
        south_w, east_w = row - north, column - west
        r0, in_r0 = _tap(int(north), hi)
        r1, in_r1 = _tap(int(north) + 1, hi)
        q0, in_q0 = _tap(int(west), wi)
        q1, in_q1 = _tap(int(west) + 1, wi)
        w_r0 = (_ONE - south_w) if in_r0 else _ZERO
        w_r1 = south_w if in_r1 else _ZERO
        w_q0 = (_ONE - east_w) if in_q0 else _ZERO
        w_q1 = east_w if in_q1 else _ZERO
        w00, w01, w10, w11 = w_r0 * w_q0, w_r0 * w_q1, w_r1 * w_q0, w_r1 * w_q1
        for c in range(channels):
            for s in range(slices):
                total = image[c, r0, q0, s] * w00
                total += image[c, r0, q1, s] * w01
                total += image[c, r1, q0, s] * w10
                total += image[c, r1, q1, s] * w11
                out_image[c, i, j, s] = total

    @_jit
    def _upsample_plane(small, rows, row_w, columns, column_w, out):
        """:func:`~brainnet.augment.functional.upsample_slices` of ``small`` (h, w, S) into ``out`` (H, W, S):
        output row i reads rows ``rows[i]`` with weights ``row_w[i]`` (int64 / float32 (H, 2)), likewise
        for columns; every slice alike, the four taps in ``upsample_slices``' order."""
        height, width, slices = out.shape
        for i in numba.prange(height):
            r0, r1, a0, a1 = rows[i, 0], rows[i, 1], row_w[i, 0], row_w[i, 1]
            for j in range(width):
                c0, c1, b0, b1 = columns[j, 0], columns[j, 1], column_w[j, 0], column_w[j, 1]
                w00, w01, w10, w11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
                for s in range(slices):
                    total = small[r0, c0, s] * w00
                    total += small[r0, c1, s] * w01
                    total += small[r1, c0, s] * w10
                    total += small[r1, c1, s] * w11
                    out[i, j, s] = total

    @_jit
    def _upsample_volume(small, taps_x, weights_x, taps_y, weights_y, taps_z, weights_z, out):
        """Trilinear upsampling of ``small`` into ``out`` (X, Y, Z) from per-axis taps (int64 (N, 2)) and
        weights (float32 (N, 2)); an axis kept at its size has taps (i, i) and weights (1, 0)."""
        xo, yo, zo = out.shape
        for i in numba.prange(xo):
            x0, x1, u0, u1 = taps_x[i, 0], taps_x[i, 1], weights_x[i, 0], weights_x[i, 1]
            for j in range(yo):
                y0, y1, v0, v1 = taps_y[j, 0], taps_y[j, 1], weights_y[j, 0], weights_y[j, 1]
                for k in range(zo):
                    z0, z1, w0, w1 = taps_z[k, 0], taps_z[k, 1], weights_z[k, 0], weights_z[k, 1]
                    near = v0 * (w0 * small[x0, y0, z0] + w1 * small[x0, y0, z1])
                    near += v1 * (w0 * small[x0, y1, z0] + w1 * small[x0, y1, z1])
                    far = v0 * (w0 * small[x1, y0, z0] + w1 * small[x1, y0, z1])
                    far += v1 * (w0 * small[x1, y1, z0] + w1 * small[x1, y1, z1])
                    out[i, j, k] = u0 * near + u1 * far

    @_jit
    def _channels_last(image, out):
        """``out`` (X, Y, Z, C) = ``image`` (C, X, Y, Z): each row of Z read from C streams, written once."""
        channels, xs, ys, zs = image.shape
        for i in numba.prange(xs):
            for j in range(ys):
                for k in range(zs):
                    for c in range(channels):
                        out[i, j, k, c] = image[c, i, j, k]

    _LOW32 = np.uint64(0xFFFFFFFF)

    @_inline
    def _mix32(x):
        """:func:`~brainnet.augment.functional._mix32_` of a uint64 holding 32 bits (products masked to
        their low 32 bits, the ones an unsigned 32-bit product keeps)."""
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x7FEB352D)) & _LOW32
        x ^= x >> np.uint64(15)
        x = (x * np.uint64(0x2C1B3C6D)) & _LOW32
        return x ^ (x >> np.uint64(16))

    @_jit
    def _add_hash_normal(flat, key, scale, radii, cosines, sines):
        """``flat`` (N,) plus ``scale`` times :func:`~brainnet.augment.functional.hash_normal` of ``key``
        (uint64, the key's 32 bits), in place: the same hash, table lookups and float32 products."""
        count = flat.shape[0]
        pairs = (count + 1) // 2
        key_hash = _mix32(key)
        for pair in numba.prange(pairs):
            bits = _mix32(_mix32(np.uint64(pair)) ^ key_hash)
            radius = radii[bits >> np.uint64(16)] * scale
            angle = bits & np.uint64(0xFFFF)
            flat[pair] += cosines[angle] * radius
            if pairs + pair < count:
                flat[pairs + pair] += sines[angle] * radius


def add_hash_normal_(
    flat: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, tables: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """``flat`` (P, N) (float32, CPU, contiguous) plus each volume's hash noise times ``scale`` (P,), in
    place; ``keys`` int (P,) below 2**32, ``tables`` the radius, cosine and sine tables (float32)."""
    radii, cosines, sines = (t.numpy() for t in tables)
    _threads()
    for volume, key, std in zip(flat.numpy(), keys.tolist(), scale.float().tolist(), strict=True):
        _add_hash_normal(volume, np.uint64(key & 0xFFFFFFFF), np.float32(std), radii, cosines, sines)
    return flat


def _threads() -> None:
    """numba's thread count follows torch's (``torch.set_num_threads``): one setting for both."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def warp_sample(
    image: torch.Tensor,
    label: torch.Tensor | None,
    columns: torch.Tensor,
    shift: torch.Tensor,
    padding: str,
    out_image: torch.Tensor,
    out_label: torch.Tensor | None,
) -> None:
    """Resample one sample into ``out_image`` / ``out_label`` (CPU tensors, written in place).

    Args:
        image: float32 (C, X, Y, Z) volume (D = 3) or slice stack (C, H, W, S) (D = 2, slice axis last).
        label: integer (X, Y, Z) / (H, W, S) labels, or ``None``.
        columns: float32 (D, D) normalized matrix, row = input axis, column = output axis
            (:func:`~brainnet.augment.functional.normalized_affine`); shift float32 (D,).
        padding: ``zeros``, ``border`` or ``reflection``.
        out_image, out_label: the outputs, shaped like the inputs but for the D resampled sides; they may
            share memory with the inputs (the inputs are then read from copies).
    """
    dims = columns.shape[0]
    in_sides = image.shape[1 : 1 + dims]
    inner = np.array([1 - 1 / s for s in in_sides], dtype=np.float32)
    if dims == 2 and _shared(image, out_image):  # (a volume is read from its channels-last copy)
        image = image.clone()
    if label is not None and _shared(label, out_label):
        label = label.clone()
    has_label = label is not None
    label_in = label.numpy() if has_label else np.zeros((1, 1, 1), np.uint8)  # typed, never read
    label_out = out_label.numpy() if has_label else label_in
    _threads()
    kernel = _warp_volume if dims == 3 else _warp_slices
    kernel(
        _channels_last_copy(image) if dims == 3 else image.numpy(),
        label_in,
        has_label,
        columns.numpy().astype(np.float32),
        shift.numpy().astype(np.float32),
        inner,
        PADDING_CODES[padding],
        out_image.numpy(),
        label_out,
    )


def _channels_last_copy(image: torch.Tensor) -> np.ndarray:
    """float32 (X, Y, Z, C) copy of (C, X, Y, Z) ``image``: a resampled voxel's eight corners then read
    their C values from one cache line each (a kernel reading channels-first was measured slower)."""
    out = np.empty((*image.shape[1:], image.shape[0]), np.float32)
    _channels_last(image.numpy(), out)
    return out


def _shared(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether ``b`` is a view of the memory of ``a`` (in-place resampling reads a copy)."""
    return b is not None and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def upsample(
    small: torch.Tensor, out: torch.Tensor, tables: list[tuple[np.ndarray, np.ndarray]]
) -> torch.Tensor:
    """Linear upsampling of one volume ``small`` (float32 (x, y, z), CPU) into ``out`` (X, Y, Z), in place.

    Args:
        tables: per axis, the input indices (int64 (N, 2)) and weights (float32 (N, 2)) of each output
            index (:func:`~brainnet.augment.functional.linear_tap_table`); an axis whose ``small`` side is
            its ``out`` side is kept (no interpolation along it).

    Returns:
        ``out``: the bilinear (a slice stack: only the first two axes resampled) or trilinear upsampling,
        equal to ``F.interpolate(..., align_corners=False)`` to float rounding.
    """
    _threads()
    if small.shape[2] == out.shape[2]:
        (rows, row_w), (columns, column_w) = tables[:2]
        _upsample_plane(small.numpy(), rows, row_w, columns, column_w, out.numpy())
    else:
        _upsample_volume(small.numpy(), *tables[0], *tables[1], *tables[2], out.numpy())
    return out
