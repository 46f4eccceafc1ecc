"""brainnet.augment.cpu_kernels: the numba kernels give the tensor path's results on any thread count."""

from __future__ import annotations

import math

import pytest
import torch

from brainnet.augment import BatchAugment, augment_preset, context_margin
from brainnet.augment import cpu_kernels as CK
from brainnet.augment import functional as AF

pytestmark = pytest.mark.skipif(CK.numba is None, reason="numba is not installed: the tensor path runs alone")

PADDINGS = ("reflection", "zeros", "border")


@pytest.fixture
def tensor_path(monkeypatch):
    """Run the block under test on the tensor path (the kernels' reference)."""

    def switch(enabled: bool) -> None:
        monkeypatch.setattr(CK, "ENABLED", enabled)

    return switch


def _matrix(angles, scale, plane):
    m = AF.rotation_scaling_matrices(torch.tensor([angles], dtype=torch.float64), torch.full((1, 3), scale))
    return m[:, plane][:, :, plane]


def _tensor_warp(image, label, matrix, out_sides, padding):
    """The tensor path of compose's spatial step for one sample: grid, reflected once, grid_sample."""
    dims = matrix.shape[-1]
    in_sides = list(image.shape[2 : 2 + dims])
    grid = AF.sampling_grid(matrix, out_sides, in_sides)
    if padding == "reflection":
        grid, padding = AF.reflect_grid(grid, in_sides), "zeros"
    if dims == 3:
        return AF.warp(image, grid, padding), AF.warp_labels(label, grid, padding)
    sample = torch.tensor([0])
    return AF.warp_slices(image, grid, sample, padding), AF.warp_slice_labels(label, grid, sample, padding)


CASES = [  # out shape, in shape (a window with context), resampled axes, angles, scale
    ((12, 10, 9), (12, 10, 9), [0, 1, 2], (0.3, -0.2, 0.4), 1.2),
    ((12, 10, 9), (18, 14, 13), [0, 1, 2], (-0.5, 0.1, 2.0), 0.8),
    ((16, 12, 4), (16, 12, 4), [0, 1], (0.0, 0.0, 0.7), 1.3),
    ((16, 12, 4), (22, 20, 4), [0, 1], (0.0, 0.0, -2.5), 0.9),
]


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("case", CASES, ids=["3d", "3d-context", "slices", "slices-context"])
def test_the_kernels_resample_as_the_tensor_path(case, padding):
    out_shape, in_shape, plane, angles, scale = case
    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, 4, *in_shape, generator=g)
    label = torch.randint(0, 4, (1, *in_shape), generator=g, dtype=torch.uint8)
    matrix = _matrix(angles, scale, plane)
    out_sides = [out_shape[a] for a in plane]
    expected_image, expected_label = _tensor_warp(image, label, matrix, out_sides, padding)
    columns, shift = AF.normalized_affine(matrix, [in_shape[a] for a in plane])
    out_image = torch.full((4, *out_shape), math.nan)
    out_label = torch.full(out_shape, 9, dtype=torch.uint8)
    CK.warp_sample(image[0], label[0], columns[0], shift[0], padding, out_image, out_label)
    assert torch.equal(out_label, expected_label[0])  # the same input positions, so the same voxels
    torch.testing.assert_close(out_image, expected_image[0], atol=1e-5, rtol=0)
    assert set(out_label.unique().tolist()) <= {0, 1, 2, 3}


def test_the_kernels_give_the_same_bits_on_one_thread_and_two_and_in_place():
    g = torch.Generator().manual_seed(4)
    image, label = torch.randn(4, 12, 10, 9, generator=g), torch.randint(0, 4, (12, 10, 9), generator=g)
    columns, shift = AF.normalized_affine(_matrix((0.4, 0.2, -0.3), 1.1, [0, 1, 2]), (12, 10, 9))
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            out = torch.empty_like(image), torch.empty_like(label)
            CK.warp_sample(image, label, columns[0], shift[0], "reflection", *out)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    owned = image.clone(), label.clone()  # the output is the input: read from a copy first
    CK.warp_sample(owned[0], owned[1], columns[0], shift[0], "reflection", owned[0], owned[1])
    assert torch.equal(owned[0], results[0][0]) and torch.equal(owned[1], results[0][1])
    # a slice stack, read in place by its kernel, likewise
    plane = AF.normalized_affine(_matrix((0.0, 0.0, 0.9), 1.2, [0, 1]), (12, 10))
    apart = torch.empty_like(image), torch.empty_like(label)
    CK.warp_sample(image, label, plane[0][0], plane[1][0], "reflection", *apart)
    owned = image.clone(), label.clone()
    CK.warp_sample(owned[0], owned[1], plane[0][0], plane[1][0], "reflection", owned[0], owned[1])
    assert torch.equal(owned[0], apart[0]) and torch.equal(owned[1], apart[1])
    assert not torch.equal(apart[0], image)


@pytest.mark.parametrize("shape", [(20, 18, 6), (9, 11, 7)], ids=["slices", "3d"])
def test_low_resolution_and_noise_kernels_equal_the_tensor_path(tensor_path, shape):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, *shape, generator=g)
    scale = torch.tensor([[0.6, 0.5, 1.0], [0.5, 0.7, 0.6], [0.8, 1.0, 0.5]])
    std, keys = torch.tensor([0.1, 0.05, 0.2]), torch.tensor([7, 2**31 - 5, 123])
    tensor_path(False)
    expected = AF.low_resolution(x, scale), AF.gaussian_noise(x, std, keys)
    tensor_path(True)
    # linear_taps' weights: interpolate's to the float32 rounding of a source index
    torch.testing.assert_close(AF.low_resolution(x, scale), expected[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(AF.gaussian_noise(x, std, keys), expected[1], atol=1e-6, rtol=0)
    assert not torch.equal(AF.gaussian_noise(x, std, keys), x)


@pytest.mark.parametrize("shape", [(24, 20, 6), (12, 10, 8)], ids=["slices", "3d"])
@pytest.mark.parametrize("inplace", [False, True])
def test_a_batch_augmented_with_the_kernels_equals_the_tensor_path(tensor_path, shape, inplace):
    """The whole nnunet preset, every block firing often, on batches of 3 (and windows with context)."""
    often = {"spatial.p_rotation": 0.7, "spatial.p_scaling": 0.7, "noise.p": 0.7, "low_resolution.p": 0.7}
    augment = BatchAugment(augment_preset("nnunet", often))
    g = torch.Generator().manual_seed(6)
    image = torch.randn(3, 4, *shape, generator=g)
    label = torch.randint(0, 4, (3, *shape), generator=g, dtype=torch.uint8)
    for step in range(4):
        tensor_path(False)
        expected = augment(image.clone(), label.clone(), key=(0, 0, step), inplace=inplace)
        tensor_path(True)
        out = augment(image.clone(), label.clone(), key=(0, 0, step), inplace=inplace)
        assert torch.equal(out[1], expected[1])
        torch.testing.assert_close(out[0], expected[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("patch", [(24, 20, 6), (12, 10, 8)], ids=["slices", "3d"])
def test_windows_with_context_resample_as_the_tensor_path(tensor_path, patch):
    """A volume store's windows (the patch plus :func:`context_margin` each side): the kernels read them
    as strided views of the batch."""
    config = augment_preset("nnunet", {"spatial.p_rotation": 0.8, "spatial.p_scaling": 0.8})
    margin = context_margin(config.spatial, patch)
    window = [s + 2 * m for s, m in zip(patch, margin, strict=True)]
    augment = BatchAugment(config, patch_size=patch)
    g = torch.Generator().manual_seed(7)
    image = torch.randn(3, 4, *window, generator=g)
    label = torch.randint(0, 4, (3, *window), generator=g, dtype=torch.uint8)
    moved = 0
    for step in range(3):
        moved += int(augment.parameters(image, (1, 0, step)).spatial.sum())
        tensor_path(False)
        expected = augment(image, label, key=(1, 0, step))
        tensor_path(True)
        out = augment(image, label, key=(1, 0, step))
        assert out[0].shape[2:] == patch and torch.equal(out[1], expected[1])
        torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=0)
    assert moved > 0
