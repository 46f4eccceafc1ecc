"""Standardize stage: intensities to mean 0 / std 1, as pure array functions.

Two methods (``StandardizeParams.method``):

- ``patch-slice`` (:func:`standardize_patch_slices`): the course's ``standardize``, each channel of each
  z-slice of a *patch* to mean 0 / std 1; a slice with std 0 stays all zeros.
- ``volume-nonzero`` (:func:`nonzero_statistics` + :func:`standardize_with_statistics`): nnU-Net's
  z-score, one mean / std per channel over the brain voxels of the whole *volume*, background set to 0.

``patch-slice`` works through a patch a few slices at a time, so its float64 temporaries stay in cache;
``volume-nonzero`` loops over channels, to keep float64 temporaries to one channel at a time (a float64
channel of a 240x240x155 volume is ~71 MB).
"""

from __future__ import annotations

import numpy as np

from brainprep.errors import ShapeMismatchError

#: Floor of the divisor in :func:`standardize_with_statistics` (nnU-Net's ``max(std, 1e-8)``).
MIN_STD = 1e-8
#: float64 values :func:`standardize_channel_slices` works on at once (256 KiB: stays in the L2 cache).
BLOCK_VALUES = 1 << 15


def _check_channels_first(array: np.ndarray, name: str) -> None:
    if array.ndim != 4:
        raise ShapeMismatchError(f"{name} must be (C, X, Y, Z), found shape {tuple(array.shape)}")


def standardize_patch_slices(
    patch: np.ndarray, out: np.ndarray | None = None, region: tuple[slice, slice] | None = None
) -> np.ndarray:
    """The course's standardization: each channel of each z-slice to mean 0 / std 1.

    Equals the course's loop (``for c: for z: centered = s - mean(s); if std(centered) != 0: centered /
    std(centered)``) bit for bit, rounded to the output dtype: the same float64 operations in the same
    order, with each slice summed as the course sums it (numpy's pairwise sum over the slice with x
    fastest, the memory order of the course's nibabel arrays), whatever the layout of ``patch``.

    Why float64 and not float32 with float64 sums: the centering must be float64. In a near-constant
    slice (one voxel one float32 ulp above the rest) the centered values are ~1e-7 of the intensities;
    ``float32(x) - float32(mean)`` rounds them all to 0 except one, and the rest would standardize to 0
    instead of the course's ``-1 / sqrt(n - 1)`` (tests/test_standardize.py pins this).

    Constant slices. A slice whose values are all equal stays all zeros. For float32/integer input this is
    exactly the course's ``std != 0`` test (the float64 mean of n <= 2**29 equal float32 values is exact,
    so the centered slice and its std are exactly 0). For wider input a rounded mean could in principle
    leave a constant slice with a std of a few ulp, and the course would then divide rounding noise by
    rounding noise; we also test ``max == min``, so a constant slice always stays exactly 0.

    Range (and float16 storage). Every standardized slice of ``n = X * Y`` voxels satisfies
    ``|value| <= sqrt(n - 1)`` (Samuelson's inequality: 159.997 for 160x160, 239.998 for 240x240), however
    small the std, so the output is always finite in float16 (max 65504); a near-constant slice (one voxel
    one ulp off) standardizes to one value near ``sqrt(n - 1)`` and the rest near ``-1 / sqrt(n - 1)``,
    which is what the course computes too. Nothing is clipped.

    Speed. The float64 work runs on a few slices at a time (:data:`BLOCK_VALUES`), so its temporaries stay
    in the CPU cache; only the input and the output travel through memory, once each.

    Args:
        patch: (C, X, Y, Z) or (K, C, X, Y, Z) (K patches at once), any float or integer dtype, any
            layout (a strided view of a volume is fine and is not copied).
        out: where to write, same shape, float32 (default, a new C-contiguous array) or float16 (the
            store dtype: the float32 result rounded once more, as ``result.astype(float16)`` rounds it).
        region: (X slice, Y slice): take each slice's mean and std over this part of it only (the patch
            inside a larger window read around it, for context), and apply them to the whole slice. The
            region then standardizes exactly as the patch alone would (the same float64 sums); ``None``:
            the whole slice.

    Returns:
        ``out``.
    """
    if out is None:
        out = np.empty(patch.shape, dtype=np.float32)
    elif out.shape != patch.shape or out.dtype.kind != "f":
        raise ShapeMismatchError(
            f"out must be a float array of shape {tuple(patch.shape)}, found {out.dtype} {tuple(out.shape)}"
        )
    if patch.ndim == 5:
        for one, one_out in zip(patch, out, strict=True):
            standardize_patch_slices(one, one_out, region)
        return out
    _check_channels_first(patch, "patch")
    for channel, channel_out in zip(patch, out, strict=True):
        standardize_channel_slices(channel, channel_out, region)
    return out


def standardize_channel_slices(
    channel: np.ndarray, out: np.ndarray, region: tuple[slice, slice] | None = None
) -> None:
    """:func:`standardize_patch_slices` of one channel, written into ``out``.

    Args:
        channel: (X, Y, Z), any float or integer dtype and layout.
        out: float (X, Y, Z), written in place.
        region: (X slice, Y slice) the statistics are taken over (see :func:`standardize_patch_slices`).
    """
    nx, ny, nz = channel.shape
    n = nx * ny
    if channel.size == 0:
        return
    if region is not None and channel[region].size == 0:
        raise ShapeMismatchError(f"statistics region {region} is empty in a slice of shape {(nx, ny)}")
    # Values with more than 24 mantissa bits: a rounded mean could leave a constant slice a std of a few
    # ulp (see standardize_patch_slices), so test constancy itself; for narrower dtypes std == 0 says it.
    test_constant = not (channel.dtype.kind in "fiub" and channel.dtype.itemsize <= 4)
    step = max(1, min(nz, BLOCK_VALUES // n))
    result = np.empty((step, n), dtype=np.float32)
    for z0 in range(0, nz, step):
        block = channel[:, :, z0 : z0 + step]
        depth = block.shape[2]
        # (z, y, x) rows, x fastest: each row is one slice in the course's summation order.
        rows = np.array(block.transpose(2, 1, 0), dtype=np.float64, order="C").reshape(depth, n)
        stats, part = rows, block  # the voxels the statistics come from (as rows, as a block)
        if region is not None:
            part = block[region]
            stats = np.array(part.transpose(2, 1, 0), dtype=np.float64, order="C").reshape(depth, -1)
        mean = np.add.reduce(stats, axis=1, keepdims=True)
        mean /= stats.shape[1]
        rows -= mean  # centered, as the course's ``s - np.mean(s)``
        if stats is not rows:
            stats -= mean
        # np.std(centered): the mean of the centered rows is removed again, then squared and averaged
        centered_mean = np.add.reduce(stats, axis=1, keepdims=True)
        centered_mean /= stats.shape[1]
        deviation = stats - centered_mean
        np.multiply(deviation, deviation, out=deviation)
        std = np.add.reduce(deviation, axis=1, keepdims=True)
        std /= stats.shape[1]
        np.sqrt(std, out=std)
        flat = std[:, 0] == 0
        if test_constant:
            flat |= part.max(axis=(0, 1)) == part.min(axis=(0, 1))
        # Slices with std 0 stay zeros: dividing by 0 would give NaN, and a constant slice (e.g. a slice
        # entirely outside the skull-stripped brain) carries no information.
        std[flat] = 1.0
        slices = result[:depth]
        np.divide(rows, std, out=slices, casting="same_kind")
        slices[flat] = 0
        out[:, :, z0 : z0 + depth] = slices.reshape(depth, ny, nx).transpose(2, 1, 0)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain voxels of a skull-stripped volume: nonzero in any channel.

    Args:
        image: (C, X, Y, Z), any dtype.

    Returns:
        bool (X, Y, Z).
    """
    _check_channels_first(image, "image")
    return np.any(image != 0, axis=0)


def nonzero_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net style per-channel statistics over the brain.

    Mask: :func:`brain_mask`, the voxels where *any* channel is nonzero (the union over channels), shared by
    all channels. Why the union and not each channel's own nonzero voxels: BraTS volumes are skull-stripped
    with the background exactly 0 in every modality, so the union is the brain; a brain voxel that happens
    to be 0 in one modality (a dark T1 voxel, an integer-rounded intensity) is real signal and must count in
    that channel's statistics, and one mask for all channels is what nnU-Net does too (its
    ``create_nonzero_mask`` is the union over channels; we skip its hole filling, which only matters for
    holes fully enclosed by brain and exactly 0 in all four channels).

    Args:
        image: (C, X, Y, Z), any float or integer dtype (the whole volume, not a patch).

    Returns:
        (mean, std): float64 (C,) each, population std (``ddof=0``); both 0 for an all-zero image.
    """
    _check_channels_first(image, "image")
    mask = brain_mask(image)
    n_channels = image.shape[0]
    mean = np.zeros(n_channels, dtype=np.float64)
    std = np.zeros(n_channels, dtype=np.float64)
    if not mask.any():
        return mean, std
    for c in range(n_channels):
        values = image[c][mask].astype(np.float64)
        mean[c] = values.mean()
        std[c] = values.std()
    return mean, std


def standardize_with_statistics(
    patch: np.ndarray, mean: np.ndarray, std: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Per-channel z-score with given statistics: ``(x - mean[c]) / max(std[c], 1e-8)``.

    Args:
        patch: (C, X, Y, Z), any float or integer dtype (a patch or a whole volume).
        mean: (C,) channel means (from :func:`nonzero_statistics` of the whole volume).
        std: (C,) channel stds.
        mask: bool (X, Y, Z); voxels outside it are set to 0 (nnU-Net keeps the background at 0).
            ``None`` standardizes every voxel.

    Returns:
        float32 (C, X, Y, Z), a new array (computed in float64 per channel).
    """
    _check_channels_first(patch, "patch")
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    n_channels = patch.shape[0]
    if mean.shape != (n_channels,) or std.shape != (n_channels,):
        raise ShapeMismatchError(
            f"mean and std must have shape ({n_channels},) for a patch of shape {tuple(patch.shape)}, "
            f"found {mean.shape} and {std.shape}"
        )
    if mask is not None and mask.shape != patch.shape[1:]:
        raise ShapeMismatchError(
            f"mask must have shape {tuple(patch.shape[1:])} for a patch of shape {tuple(patch.shape)}, "
            f"found {tuple(mask.shape)}"
        )
    out = np.empty(patch.shape, dtype=np.float32)
    divisor = np.maximum(std, MIN_STD)
    for c in range(n_channels):
        out[c] = (patch[c].astype(np.float64) - mean[c]) / divisor[c]
    if mask is not None:
        out[:, ~mask.astype(bool)] = 0
    return out
