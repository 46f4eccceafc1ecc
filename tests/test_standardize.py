"""Standardize stage: hand-worked values, equality with the course's loop, nnU-Net statistics."""

from __future__ import annotations

import numpy as np
import pytest

from brainprep.errors import ShapeMismatchError
from brainprep.standardize import (
    brain_mask,
    nonzero_statistics,
    standardize_patch_slices,
    standardize_with_statistics,
)


def course_standardize(image: np.ndarray) -> np.ndarray:
    """The course's ``standardize``, literally (week 3 of "AI for Medicine")."""
    standardized_image = np.zeros(image.shape)
    for c in range(image.shape[0]):
        for z in range(image.shape[3]):
            image_slice = image[c, :, :, z]
            centered = image_slice - np.mean(image_slice)
            if np.std(centered) != 0:
                standardized_image[c, :, :, z] = centered / np.std(centered)
    return standardized_image


def test_hand_worked_slices() -> None:
    patch = np.zeros((1, 2, 2, 3), dtype=np.float32)
    patch[0, :, :, 0] = [[1, 3], [1, 3]]  # mean 2, centered [-1, 1], std 1
    patch[0, :, :, 1] = 5  # constant: std 0 -> stays 0
    patch[0, :, :, 2] = [[0, 0], [0, 4]]  # mean 1, centered [-1, -1, -1, 3], std sqrt(3)
    out = standardize_patch_slices(patch)
    assert out.dtype == np.float32
    assert out.shape == patch.shape
    np.testing.assert_array_equal(out[0, :, :, 0], [[-1, 1], [-1, 1]])
    np.testing.assert_array_equal(out[0, :, :, 1], np.zeros((2, 2)))
    s3 = np.sqrt(3.0)
    np.testing.assert_allclose(out[0, :, :, 2], [[-1 / s3, -1 / s3], [-1 / s3, 3 / s3]], rtol=1e-6)


def test_channels_are_independent() -> None:
    patch = np.zeros((2, 2, 2, 1), dtype=np.int16)
    patch[0, :, :, 0] = [[1, 3], [1, 3]]
    patch[1, :, :, 0] = [[10, 10], [30, 30]]
    out = standardize_patch_slices(patch)
    np.testing.assert_array_equal(out[0, :, :, 0], [[-1, 1], [-1, 1]])
    np.testing.assert_array_equal(out[1, :, :, 0], [[-1, -1], [1, 1]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
def test_equals_course_loop_on_random_data(dtype: type) -> None:
    rng = np.random.default_rng(7)
    image = (rng.normal(300.0, 80.0, size=(4, 24, 20, 9)) * rng.uniform(0.5, 2.0, size=(4, 1, 1, 9))).astype(
        dtype
    )
    image[1, :, :, 3] = 42  # a constant slice
    image[2, :, :, 0] = 0  # an all-background slice
    expected = course_standardize(image.astype(np.float64))
    out = standardize_patch_slices(image)
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[1, :, :, 3], 0)
    np.testing.assert_array_equal(out[2, :, :, 0], 0)
    # every non-constant slice has mean 0 and std 1
    varying = np.ones((4, 9), dtype=bool)
    varying[1, 3] = varying[2, 0] = False
    np.testing.assert_allclose(out.mean(axis=(1, 2))[varying], 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2), dtype=np.float64)[varying], 1, rtol=1e-5)


def test_constant_float64_slice_with_inexact_mean_stays_zero() -> None:
    # 0.1 repeated: its float64 mean may round away from 0.1, leaving rounding noise with a std of a few ulp;
    # a constant slice must still standardize to exactly 0, never to noise / noise.
    patch = np.full((1, 37, 41, 2), 0.1, dtype=np.float64)
    patch[0, :, :, 1] = 1e6 / 3
    out = standardize_patch_slices(patch)
    np.testing.assert_array_equal(out, 0)


def test_near_constant_slice_is_bounded_and_fits_float16() -> None:
    # One voxel one float32 ulp above a large constant: a real (tiny) variation. Samuelson's inequality
    # bounds every standardized value by sqrt(n - 1), so it stays finite in float16.
    x, y = 160, 160
    value = np.float32(12345.678)
    patch = np.full((1, x, y, 1), value, dtype=np.float32)
    patch[0, 5, 7, 0] = np.nextafter(value, np.float32(np.inf))
    out = standardize_patch_slices(patch)
    bound = np.sqrt(x * y - 1)
    assert out[0, 5, 7, 0] == pytest.approx(bound, rel=1e-5)
    assert np.abs(out).max() <= bound * (1 + 1e-5)
    assert np.isfinite(out.astype(np.float16)).all()
    expected = course_standardize(patch.astype(np.float64))
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_standardize_patch_slices_rejects_wrong_rank() -> None:
    with pytest.raises(ShapeMismatchError, match=r"\(C, X, Y, Z\)"):
        standardize_patch_slices(np.zeros((4, 4, 4)))


def test_input_is_not_modified() -> None:
    patch = np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2)
    before = patch.copy()
    standardize_patch_slices(patch)
    standardize_with_statistics(patch, np.ones(2), np.ones(2), np.ones((3, 3, 2), dtype=bool))
    np.testing.assert_array_equal(patch, before)


def _two_channel_image() -> np.ndarray:
    image = np.zeros((2, 2, 2, 1), dtype=np.float32)
    image[0, :, :, 0] = [[0, 2], [4, 0]]
    image[1, :, :, 0] = [[0, 0], [6, 0]]  # 0 at (0, 1) is inside the brain (channel 0 is 2 there)
    return image


def test_brain_mask_is_union_over_channels() -> None:
    mask = brain_mask(_two_channel_image())
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask[:, :, 0], [[False, True], [True, False]])


def test_nonzero_statistics_hand_worked() -> None:
    mean, std = nonzero_statistics(_two_channel_image())
    assert mean.dtype == np.float64 and std.dtype == np.float64
    # channel 0 over the mask: {2, 4} -> mean 3, std 1; channel 1: {0, 6} -> mean 3, std 3
    np.testing.assert_array_equal(mean, [3.0, 3.0])
    np.testing.assert_array_equal(std, [1.0, 3.0])


def test_nonzero_statistics_of_empty_image_are_zero() -> None:
    mean, std = nonzero_statistics(np.zeros((3, 4, 4, 2), dtype=np.int16))
    np.testing.assert_array_equal(mean, 0)
    np.testing.assert_array_equal(std, 0)


def test_standardize_with_statistics_hand_worked() -> None:
    image = _two_channel_image()
    mean, std = nonzero_statistics(image)
    mask = brain_mask(image)
    out = standardize_with_statistics(image, mean, std, mask)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, -1], [1, 0]])
    np.testing.assert_array_equal(out[1, :, :, 0], [[0, -1], [1, 0]])
    # without a mask the background is standardized too: (0 - 3) / 1 and (0 - 3) / 3
    out = standardize_with_statistics(image, mean, std)
    np.testing.assert_array_equal(out[0, :, :, 0], [[-3, -1], [1, -3]])
    np.testing.assert_array_equal(out[1, :, :, 0], [[-1, -1], [1, -1]])


def test_standardize_with_statistics_floors_std() -> None:
    patch = np.full((1, 2, 1, 1), 5.0, dtype=np.float32)
    patch[0, 1] = 5.5
    out = standardize_with_statistics(patch, np.array([5.0]), np.array([0.0]))
    np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 0.5e8], rtol=1e-6)


def test_volume_statistics_on_a_patch_equal_the_volume_result() -> None:
    # The store writer standardizes patches with whole-volume statistics: patch of the standardized volume
    # == standardized patch.
    rng = np.random.default_rng(3)
    image = rng.normal(100, 20, size=(4, 12, 10, 8)).astype(np.float32)
    image[:, :3] = 0  # background
    mean, std = nonzero_statistics(image)
    mask = brain_mask(image)
    volume = standardize_with_statistics(image, mean, std, mask)
    window = (slice(None), slice(2, 8), slice(1, 9), slice(3, 7))
    patch = standardize_with_statistics(image[window], mean, std, mask[window[1:]])
    np.testing.assert_array_equal(patch, volume[window])
    np.testing.assert_allclose(volume[:, mask].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(volume[:, mask].std(axis=1), 1, rtol=1e-5)


def test_standardize_with_statistics_checks_shapes() -> None:
    patch = np.zeros((4, 3, 3, 2), dtype=np.float32)
    with pytest.raises(ShapeMismatchError, match="mean and std"):
        standardize_with_statistics(patch, np.zeros(3), np.ones(3))
    with pytest.raises(ShapeMismatchError, match="mask"):
        standardize_with_statistics(patch, np.zeros(4), np.ones(4), np.ones((3, 3, 3), dtype=bool))


def course_layout(patch: np.ndarray) -> np.ndarray:
    """``patch`` as the course holds it: ``np.moveaxis`` of an F-ordered (X, Y, Z, C) float64 copy (nibabel
    arrays are F-ordered, and ``np.copy`` keeps the order), so each slice is summed x fastest."""
    return np.moveaxis(np.asfortranarray(np.moveaxis(patch, 0, -1), dtype=np.float64), -1, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "flipped"])
def test_same_bits_as_the_course_loop(dtype: type, layout: str) -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(300.0, 80.0, size=(4, 40, 36, 70)) * rng.uniform(0.2, 3.0, size=(4, 1, 1, 70))
    values = values.astype(dtype)
    values[0, :, :, 2] = 17  # constant
    values[3, :, :, 5] = 0  # background
    values[1, :, :, 9] = 1000.0  # near-constant: one voxel one ulp up
    up = 1001 if values.dtype.kind == "i" else np.nextafter(values.dtype.type(1000), values.dtype.type(2000))
    values[1, 3, 4, 9] = up
    expected = course_standardize(course_layout(values)).astype(np.float32)
    if layout == "F":  # a patch of the build's channels-last volume: x fastest
        patch = np.moveaxis(np.asfortranarray(np.moveaxis(values, 0, -1)), -1, 0)
    elif layout == "flipped":  # a RAS view of an LPS file
        patch = np.ascontiguousarray(values[:, ::-1, ::-1])[:, ::-1, ::-1]
    else:
        patch = values
    out = standardize_patch_slices(patch)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out.tobytes() == expected.tobytes()
    assert out[1, 3, 4, 9] > 30 and (out[0, :, :, 2] == 0).all()


def test_writes_the_store_dtype_into_out() -> None:
    rng = np.random.default_rng(5)
    patch = rng.normal(100.0, 20.0, size=(2, 3, 24, 20, 7)).astype(np.float32)
    out = np.full(patch.shape, np.nan, dtype=np.float16)
    assert standardize_patch_slices(patch, out) is out
    assert out.tobytes() == standardize_patch_slices(patch).astype(np.float16).tobytes()
    with pytest.raises(ShapeMismatchError, match="out must be"):
        standardize_patch_slices(patch, np.empty(patch.shape, dtype=np.int16))


def test_k_patches_at_once_equal_one_by_one() -> None:
    rng = np.random.default_rng(4)
    patches = rng.normal(0.0, 5.0, size=(3, 2, 8, 6, 4)).astype(np.float32)
    patches[1, 0, :, :, 1] = 2.5
    out = standardize_patch_slices(patches)
    assert out.shape == patches.shape
    for k in range(3):
        np.testing.assert_array_equal(out[k], standardize_patch_slices(patches[k]))
    np.testing.assert_array_equal(out[1, 0, :, :, 1], 0)


def _slice_major(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    from brainprep.store.volume_schema import slice_major

    return slice_major(shape, dtype)


@pytest.mark.parametrize("layout", ["c-order", "slice-major"])
def test_torch_path_equals_the_exact_one(layout: str) -> None:
    """The volume store's float32 torch path on float16 windows: the course's values within float32
    rounding, in either layout, a constant slice exactly 0, a batch dimension allowed."""
    torch = pytest.importorskip("torch")
    from brainnet.data.standardize import standardize_slices_torch

    rng = np.random.default_rng(3)
    window = (rng.random((2, 4, 12, 10, 6)) * 900 + 50).astype(np.float16)
    window[:, :, :4] = 0  # background rows, as at the edge of a brain
    window[0, 2, :, :, 1] = np.float16(733.0)  # a constant slice
    window[1, 1, :, :, 2] = np.float16(512.0)
    window[1, 1, 0, 0, 2] = np.float16(512.5)  # near-constant: one voxel one float16 ulp above the rest
    source = window if layout == "c-order" else _slice_major(window.shape, np.float16)
    source[...] = window
    out = standardize_slices_torch(torch.from_numpy(source)).numpy()
    assert out.dtype == np.float32 and out.shape == window.shape
    exact = standardize_patch_slices(window.astype(np.float32))
    np.testing.assert_array_equal(out[0, 2, :, :, 1], 0)  # exactly 0, not rounding noise divided by itself
    np.testing.assert_allclose(out, exact, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(source, window)  # the input is not modified


def test_torch_statistics_path_equals_the_numpy_one() -> None:
    torch = pytest.importorskip("torch")
    from brainnet.data.standardize import standardize_with_statistics_torch

    rng = np.random.default_rng(4)
    image = (rng.random((1, 4, 6, 5, 3)) * 100).astype(np.float32)
    image[:, :, :2] = 0  # outside the brain in every channel
    image[0, 1, 3, 3, 1] = 0  # a brain voxel 0 in one channel only stays in the mask
    mean, std = np.array([10.0, 20.0, 30.0, 40.0]), np.array([2.0, 0.0, 5.0, 8.0])
    expected = standardize_with_statistics(image[0], mean, std, mask=brain_mask(image[0]))
    expected[1] = 0  # std 0: a flat channel reads 0, as the volume store's reader (resolved_std) gives it
    got = standardize_with_statistics_torch(
        torch.from_numpy(image), torch.from_numpy(mean[None]), torch.from_numpy(std[None])
    )
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-6, atol=1e-5)
