"""Standardize stage: intensities to mean 0 / std 1, as pure array functions.

Two methods (``StandardizeParams.method``):

- ``patch-slice`` (:func:`standardize_patch_slices`): the course's ``standardize``, each channel of each
  z-slice of a *patch* to mean 0 / std 1; a slice with std 0 stays all zeros.
- ``volume-nonzero`` (:func:`nonzero_statistics` + :func:`standardize_with_statistics`): nnU-Net's
  z-score, one mean / std per channel over the brain voxels of the whole *volume*, background set to 0.

The brain (:func:`brain_mask`) is what differs from the volume's background (:func:`background_values`:
0 for skull-stripped BraTS data, another constant for already-normalized inputs); standardization, the
volume store's crop and ``brainnet predict`` all take it from here.

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


def standardize_patch_slices(patch: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
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
            standardize_patch_slices(one, one_out)
        return out
    _check_channels_first(patch, "patch")
    for channel, channel_out in zip(patch, out, strict=True):
        standardize_channel_slices(channel, channel_out)
    return out


def standardize_channel_slices(channel: np.ndarray, out: np.ndarray) -> None:
    """:func:`standardize_patch_slices` of one channel, written into ``out``.

    Args:
        channel: (X, Y, Z), any float or integer dtype and layout.
        out: float (X, Y, Z), written in place.
    """
    nx, ny, nz = channel.shape
    n = nx * ny
    if channel.size == 0:
        return
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
        mean = np.add.reduce(rows, axis=1, keepdims=True)
        mean /= n
        rows -= mean  # centered, as the course's ``s - np.mean(s)``
        # np.std(centered): the mean of the centered rows is removed again, then squared and averaged
        centered_mean = np.add.reduce(rows, axis=1, keepdims=True)
        centered_mean /= n
        deviation = rows - centered_mean
        np.multiply(deviation, deviation, out=deviation)
        std = np.add.reduce(deviation, axis=1, keepdims=True)
        std /= n
        np.sqrt(std, out=std)
        flat = std[:, 0] == 0
        if test_constant:
            flat |= block.max(axis=(0, 1)) == block.min(axis=(0, 1))
        # Slices with std 0 stay zeros: dividing by 0 would give NaN, and a constant slice (e.g. a slice
        # entirely outside the skull-stripped brain) carries no information.
        std[flat] = 1.0
        slices = result[:depth]
        np.divide(rows, std, out=slices, casting="same_kind")
        slices[flat] = 0
        out[:, :, z0 : z0 + depth] = slices.reshape(depth, ny, nx).transpose(2, 1, 0)


#: A border value is the volume's background when at least this share of the border voxels hold it.
BACKGROUND_MIN_SHARE = 0.5


def border_voxels(channel: np.ndarray) -> np.ndarray:
    """The voxels on the six faces of an (X, Y, Z) array, as one 1D array (edge voxels appear more than
    once, which does not move a majority by more than the edges' few voxels)."""
    faces = (channel[0], channel[-1], channel[:, 0], channel[:, -1], channel[:, :, 0], channel[:, :, -1])
    return np.concatenate([np.asarray(face).ravel() for face in faces])


def channel_background(border: np.ndarray) -> float:
    """The background of one channel from its :func:`border_voxels`: their most frequent value when it
    holds at least :data:`BACKGROUND_MIN_SHARE` of them, else 0 (see :func:`background_values`)."""
    if border.size == 0:
        return 0.0
    values, counts = np.unique(border, return_counts=True)
    best = int(np.argmax(counts))
    return float(values[best]) if counts[best] >= BACKGROUND_MIN_SHARE * border.size else 0.0


def background_values(image: np.ndarray) -> np.ndarray:
    """The background intensity of each channel of a whole volume: float64 (C,).

    Definition: a channel's background is the most frequent value on the volume's border (its six faces)
    when at least :data:`BACKGROUND_MIN_SHARE` of the border voxels hold exactly that value, else 0.

    Why the border and why a majority: a skull-stripped BraTS volume is exactly 0 around the head, and the
    head does not fill the field of view (every real case in ../shared/data has an all-zero border), so
    the rule gives 0 there and :func:`brain_mask` is today's "nonzero in any channel", bit for bit. An
    input that was already normalized (z-scored over the whole volume, shifted, min-max scaled with an
    offset) keeps a constant background of another value, e.g. -0.7: the border shows it, and the brain is
    then what differs from it. A volume without a constant background (not skull-stripped, or noise) has
    no value holding half its border: the rule falls back to 0, the old behaviour. Only the border is
    looked at (a few percent of the voxels), so it costs a ``np.unique`` of ~0.3 M values for 240x240x155.

    nnU-Net v2 only knows 0 (``create_nonzero_mask`` in nnunetv2/preprocessing/cropping/cropping.py is
    ``data != 0``); for such inputs its mask covers the whole volume, and its planner then stops using the
    mask for normalization (``determine_whether_to_use_mask_for_norm`` in
    nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py: only when cropping
    to the mask shrinks the images below 3/4 of their size).

    Args:
        image: (C, X, Y, Z), any dtype: the whole volume (a patch's border is not the volume's).

    Returns:
        float64 (C,) background of each channel (0 where no value holds half of the border).
    """
    _check_channels_first(image, "image")
    if image[0].size == 0:
        return np.zeros(image.shape[0], dtype=np.float64)
    return np.array([channel_background(border_voxels(channel)) for channel in image], dtype=np.float64)


def brain_mask(image: np.ndarray, background: np.ndarray | float | None = None) -> np.ndarray:
    """Brain voxels: those that differ from their channel's background in any channel.

    With a background of 0 (every skull-stripped BraTS volume) this is "nonzero in any channel", as
    nnU-Net's ``create_nonzero_mask`` (without its hole filling).

    Args:
        image: (C, X, Y, Z), any dtype.
        background: (C,) per-channel background (or one value for all); ``None``: the whole volume's,
            :func:`background_values` of ``image``. Give it for a patch or window, whose own border is
            not the volume's (the mask is then voxelwise: a patch's mask is the volume's mask cut there).

    Returns:
        bool (X, Y, Z).
    """
    _check_channels_first(image, "image")
    if background is None:
        background = background_values(image)
    background = np.broadcast_to(np.asarray(background, dtype=np.float64), (image.shape[0],))
    mask = np.zeros(image.shape[1:], dtype=bool)
    for channel, value in zip(image, background, strict=True):
        # a Python number compares in the channel's own dtype (a background found in a float32 or int16
        # channel is exactly one of its values), so no float64 copy of the channel is made
        mask |= channel != (float(value) if value else 0)
    return mask


def nonzero_statistics(
    image: np.ndarray, background: np.ndarray | float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net style per-channel statistics over the brain.

    Mask: :func:`brain_mask`, the voxels where *any* channel differs from its background (the union over
    channels; the background is 0 for BraTS, see :func:`background_values`), shared by all channels. Why
    the union and not each channel's own nonzero voxels: BraTS volumes are skull-stripped with the
    background exactly 0 in every modality, so the union is the brain; a brain voxel that happens to be 0
    in one modality (a dark T1 voxel, an integer-rounded intensity) is real signal and must count in that
    channel's statistics, and one mask for all channels is what nnU-Net does too (its
    ``create_nonzero_mask`` is the union over channels; we skip its hole filling, which only matters for
    holes fully enclosed by brain and exactly 0 in all four channels).

    Args:
        image: (C, X, Y, Z), any float or integer dtype (the whole volume, not a patch).
        background: as for :func:`brain_mask` (``None``: the volume's own).

    Returns:
        (mean, std): float64 (C,) each, population std (``ddof=0``); both 0 for an all-background image.
    """
    _check_channels_first(image, "image")
    mask = brain_mask(image, background)
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


def resolved_std(mean: np.ndarray, std: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """float64 (C,): ``std``, with 0 where it is below what values of ``dtype`` near ``mean`` resolve.

    Values rounded to a float ``dtype`` carry an error of up to half an ulp, ``|mean| * eps / 2`` near the
    mean (2**-11 of it for float16). A brain std below that (a channel constant over the brain, whose
    statistics were taken before the values were rounded) is rounding noise, and ``max(std, 1e-8)`` would
    blow it up to huge or non-finite values; such a channel is flat, and standardizes to 0 as a slice of
    std 0 does in the course (:func:`standardize_patch_slices`). Integer values are exact: only a std of
    0 is flat.

    Args:
        mean, std: (C,) channel statistics; dtype: the dtype of the values they standardize.
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    dtype = np.dtype(dtype)
    half_ulp = np.finfo(dtype).eps / 2 if dtype.kind == "f" else 0.0
    return np.where(std <= np.abs(mean) * half_ulp, 0.0, std)


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
