"""brainnet.augment: exact spatial transforms on tiny hand-made tensors, label safety, determinism, config."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from brainnet.augment import (
    AugmentConfig,
    BatchAugment,
    augment_preset,
    draw_parameters,
    generator_for,
    with_overrides,
)
from brainnet.augment import functional as AF
from brainnet.augment.compose import short_axis
from brainnet.data.dataset import to_training_batch
from brainnet.train import TrainConfig
from brainprep.errors import ConfigError

INTENSITY = ("noise", "blur", "brightness", "contrast", "low_resolution", "gamma_inverted", "gamma")
EVERYTHING = {
    "spatial.p_rotation": 1.0,
    "spatial.p_scaling": 1.0,
    "spatial.p_elastic": 1.0,
    **{f"{name}.p": 1.0 for name in INTENSITY},
}


def _ramp(shape=(1, 2, 6, 5, 4)) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)


def _grid(angles=(0.0, 0.0, 0.0), scales=(1.0, 1.0, 1.0), shape=(6, 5, 4), **kwargs) -> torch.Tensor:
    matrices = AF.rotation_scaling_matrices(torch.tensor([angles]), torch.tensor([scales]))
    return AF.sampling_grid(matrices, shape, **kwargs)


# ------------------------------------------------------------------------------------------ spatial
def test_identity_parameters_give_the_input():
    x, label = _ramp(), (_ramp((1, 6, 5, 4)) % 4).to(torch.uint8)
    grid = _grid()
    torch.testing.assert_close(AF.warp(x, grid), x, atol=1e-4, rtol=0)
    assert torch.equal(AF.warp_labels(label, grid), label)
    # a batch whose draws fire nothing comes back exactly, whatever the preset says about ranges
    quiet = with_overrides(augment_preset("nnunet"), {f"{n}.p": 0.0 for n in INTENSITY} | {"mirror.axes": ()})
    quiet = with_overrides(quiet, {"spatial.p_rotation": 0.0, "spatial.p_scaling": 0.0})
    image = torch.randn(2, 4, 8, 8, 8)
    out, out_label = BatchAugment(quiet)(image, (image[:, 0] > 0).to(torch.uint8), key=(0, 0, 0))
    assert torch.equal(out, image) and torch.equal(out_label, (image[:, 0] > 0).to(torch.uint8))


def test_rotation_by_90_degrees_about_z_equals_rot90():
    x = _ramp((1, 2, 5, 5, 3))
    label = (_ramp((1, 5, 5, 3)) % 7).to(torch.uint8)
    grid = _grid(angles=(0.0, 0.0, math.pi / 2), shape=(5, 5, 3))
    torch.testing.assert_close(AF.warp(x, grid), torch.rot90(x, -1, (2, 3)), atol=1e-4, rtol=0)
    assert torch.equal(AF.warp_labels(label, grid), torch.rot90(label, -1, (1, 2)))
    # about X: the (Y, Z) plane turns
    cube = _ramp((1, 1, 3, 4, 4))
    grid = _grid(angles=(math.pi / 2, 0.0, 0.0), shape=(3, 4, 4))
    torch.testing.assert_close(AF.warp(cube, grid), torch.rot90(cube, -1, (3, 4)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("padding", ["reflection", "zeros", "border"])
def test_scaling_one_with_a_whole_voxel_shift_is_a_roll_and_the_border_rule(padding):
    x = _ramp()
    grid = _grid(translation=torch.tensor([[1.0, 0.0, -2.0]]))
    out = AF.warp(x, grid, padding)
    rolled = torch.roll(x, shifts=(-1, 2), dims=(2, 4))
    # inside: output voxel (i, j, k) reads (i + 1, j, k - 2)
    torch.testing.assert_close(out[:, :, :-1, :, 2:], rolled[:, :, :-1, :, 2:], atol=1e-4, rtol=0)
    # outside the patch, the border rule: the last X plane reads plane 6, the first Z planes read -2, -1
    if padding == "reflection":  # mirrored at the face: 6 -> 5, -1 -> 0, -2 -> 1
        expected_x, expected_z = x[:, :, 5], x[:, :, :, :, [1, 0]]
    elif padding == "border":
        expected_x, expected_z = x[:, :, 5], x[:, :, :, :, [0, 0]]
    else:
        expected_x, expected_z = torch.zeros_like(x[:, :, 5]), torch.zeros_like(x[:, :, :, :, :2])
    torch.testing.assert_close(out[:, :, 5, :, 2:], expected_x[..., :-2], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, :, 1:-1, :, :2], expected_z[:, :, 2:], atol=1e-4, rtol=0)


def test_a_larger_input_is_read_about_its_centre():
    x = _ramp((1, 1, 8, 7, 6))
    out = AF.warp(x, _grid(shape=(4, 5, 2), in_shape=(8, 7, 6)))
    torch.testing.assert_close(out, x[:, :, 2:6, 1:6, 2:4], atol=1e-4, rtol=0)


def test_image_and_label_move_together():
    """One rotation + scaling on a one-hot label and on an image made from it: the thresholded image is the
    transformed label wherever the image is not a blend of neighbours, and nearly everywhere else."""
    label = torch.zeros(1, 12, 12, 12, dtype=torch.uint8)
    label[0, 3:9, 4:10, 2:7] = 1
    label[0, 5:7, 5:8, 7:11] = 1
    grid = _grid(angles=(0.3, -0.4, 0.7), scales=(1.2, 1.2, 1.2), shape=(12, 12, 12))
    image = AF.warp(label[:, None].float(), grid, "zeros")[:, 0]
    moved = AF.warp_labels(label, grid, "zeros")
    pure = (image < 1e-6) | (image > 1 - 1e-6)
    assert torch.equal((image[pure] > 0.5).to(torch.uint8), moved[pure])
    assert ((image > 0.5).to(torch.uint8) == moved).float().mean() > 0.97
    assert 0 < moved.sum() < label.numel()


def test_labels_stay_within_their_classes():
    labels = torch.tensor([0, 2, 3], dtype=torch.uint8)[torch.randint(0, 3, (3, 16, 16, 8))]
    image = torch.randn(3, 4, 16, 16, 8)
    augment = BatchAugment(augment_preset("nnunet", EVERYTHING))
    for step in range(3):
        out_image, out_label = augment(image, labels, key=(0, 0, step))
        assert out_label.dtype == torch.uint8
        assert set(out_label.unique().tolist()) <= {0, 2, 3}
        assert torch.isfinite(out_image).all()
    assert not torch.equal(out_label, labels)


def test_intensity_transforms_never_touch_labels():
    config = with_overrides(AugmentConfig(), {f"{name}.p": 1.0 for name in INTENSITY})
    image = torch.randn(2, 4, 8, 8, 8)
    label = torch.randint(0, 4, (2, 8, 8, 8), dtype=torch.uint8)
    copy = label.clone()
    out_image, out_label = BatchAugment(config)(image, label, key=(1, 0, 0))
    assert torch.equal(out_label, copy) and torch.equal(label, copy)
    assert not torch.allclose(out_image, image)


def test_mirror_flips_the_axes_asked_for():
    x = _ramp((3, 1, 2, 3, 4))
    flips = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    out = AF.mirror(x, flips)
    assert torch.equal(out[0], x[0].flip((1, 3)))
    assert torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(2))
    assert torch.equal(AF.mirror(x[:, 0], flips)[0], x[0, 0].flip((0, 2)))  # labels: no channel axis


def test_an_anisotropic_patch_turns_in_plane_only():
    spatial = augment_preset("nnunet").spatial
    assert short_axis((160, 160, 16), spatial) == 2 and short_axis((112, 160, 128), spatial) is None
    params = draw_parameters(augment_preset("nnunet", EVERYTHING), 8, 1, (32, 32, 4), generator_for((0,)))
    matrices = params.matrices
    assert torch.equal(matrices[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(8, 3))
    assert torch.equal(matrices[:, :2, 2], torch.zeros(8, 2, dtype=torch.float64))
    assert (params.low_resolution_scale[..., 2] == 1).all()
    # slice by slice: the Z planes are transformed alike, and each stays a plane of its own
    image = torch.zeros(1, 1, 32, 32, 4)
    image[0, 0, 10:20, 12:16, 1] = 1.0
    only_spatial = augment_preset("nnunet", {"spatial.p_rotation": 1.0, "spatial.p_scaling": 1.0})
    only_spatial = with_overrides(only_spatial, {f"{n}.p": 0.0 for n in INTENSITY} | {"mirror.axes": ()})
    out, _ = BatchAugment(only_spatial)(image, None, key=(0, 0, 3))
    assert out[0, 0, :, :, [0, 2, 3]].abs().max() == 0 and out[0, 0, :, :, 1].sum() > 10


def test_the_broadcast_grid_equals_the_matrix_product():
    """The affine grid, summed per axis, is the grid of every centred voxel position times the matrix."""
    matrices = AF.rotation_scaling_matrices(torch.tensor([[0.3, -0.2, 0.9]]), torch.tensor([[1.3, 0.8, 1.1]]))
    matrices = torch.cat([matrices, matrices.flip(0).transpose(1, 2)])
    shift = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    out_shape, in_shape = (5, 4, 3), (8, 7, 6)
    grid = AF.sampling_grid(matrices, out_shape, in_shape, translation=shift)
    points = AF.centered_coordinates(out_shape).reshape(1, -1, 3) @ matrices.float().transpose(1, 2)
    expected = (points + shift[:, None]) * torch.tensor([2 / s for s in in_shape])
    torch.testing.assert_close(grid, expected.flip(-1).reshape(2, *out_shape, 3), atol=1e-6, rtol=0)
    # a zero deformation (the matrix-product path) gives the same grid
    zero = torch.zeros(2, *out_shape, 3)
    torch.testing.assert_close(
        AF.sampling_grid(matrices, out_shape, displacement=zero),
        AF.sampling_grid(matrices, out_shape),
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("threads", [2, 3])
def test_warping_on_every_thread_equals_one_grid_sample(threads):
    """A sample's grid cut into pieces per thread, and slices read in place as channels, give the bits of
    one plain grid_sample call."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, label = torch.randn(1, 2, 6, 5, 4), torch.randint(0, 4, (1, 6, 5, 4), dtype=torch.uint8)
        grid = _grid(angles=(0.3, -0.5, 1.1), scales=(1.3, 1.3, 1.3))
        plain = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
        assert torch.equal(AF.warp(x, grid), plain)
        nearest = F.grid_sample(label[:, None].float(), grid, "nearest", "reflection", align_corners=False)
        assert torch.equal(AF.warp_labels(label, grid), nearest[:, 0].to(torch.uint8))
        # slices along Z of a (1, C, X, Y, Z) batch, moved in front of the plane as a view
        plane = AF.sampling_grid(
            AF.rotation_scaling_matrices(torch.tensor([[0.0, 0.0, 0.7]]), torch.ones(1, 3))[:, :2, :2], (6, 5)
        )
        moved = x.movedim(4, 2)
        stacked = F.grid_sample(
            moved.reshape(1, 8, 6, 5), plane, padding_mode="reflection", align_corners=False
        )
        assert torch.equal(AF.warp(moved, plane), stacked.view(1, 2, 4, 6, 5))
        # written into the input itself (the spatial transform of a batch in place)
        inplace = moved.clone()
        assert torch.equal(AF.warp(inplace, plane, out=inplace), stacked.view(1, 2, 4, 6, 5))
        owned = x.clone()
        AF.warp(owned, grid, out=owned)
        assert torch.equal(owned, plain)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_grid_reflected_once_and_zeros_padding_equal_reflection_padding(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        grid = torch.rand(2, 9, 7, 5, 3, generator=torch.Generator().manual_seed(0)) * 8 - 4  # to 2 faces out
        x, label = torch.randn(2, 3, 6, 5, 4), torch.randint(0, 4, (2, 6, 5, 4), dtype=torch.uint8)
        for scale in (1.0, 0.3):  # up to two faces out, and within one voxel of the faces
            reflected = AF.reflect_grid(grid * scale, (6, 5, 4))
            assert reflected.abs().max() < 1
            expected = AF.warp(x, grid * scale, "reflection")
            torch.testing.assert_close(AF.warp(x, reflected, "zeros"), expected, atol=1e-5, rtol=0)
            labels = AF.warp_labels(label, grid * scale, "reflection")
            assert torch.equal(AF.warp_labels(label, reflected, "zeros"), labels)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("padding", ["reflection", "zeros", "border"])
def test_a_slice_stack_warped_by_rows_equals_grid_sample_on_each_slice(padding):
    """The embedding_bag warp of a (B, C, X, Y, S) batch (slices last) and its nearest labels give
    grid_sample's values slice by slice, for the samples asked for, into a smaller output or in place."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 9, 7, 4, generator=g)
    label = torch.randint(0, 5, (3, 9, 7, 4), dtype=torch.uint8, generator=g)
    samples = torch.tensor([0, 2])
    for out_sides in ((9, 7), (5, 6)):
        grid = torch.rand(2, *out_sides, 2, generator=g) * 3 - 1.5  # up to a face out on every side
        planes = x[samples].movedim(-1, 2).reshape(2, -1, 9, 7)  # slices as channels
        expected = F.grid_sample(planes, grid, padding_mode=padding, align_corners=False)
        expected = expected.view(2, 2, 4, *out_sides).movedim(2, -1)
        torch.testing.assert_close(AF.warp_slices(x, grid, samples, padding), expected, atol=1e-5, rtol=0)
        nearest = F.grid_sample(
            label[samples].movedim(-1, 1).float(), grid, "nearest", padding, align_corners=False
        )
        labels = AF.warp_slice_labels(label, grid, samples, padding)
        assert torch.equal(labels, nearest.movedim(1, -1).to(torch.uint8))
    # into the batch itself (same sides): samples 0 and 2 change, sample 1 stays
    square = torch.rand(2, 9, 7, 2, generator=g) * 2 - 1
    owned, owned_label = x.clone(), label.clone()
    AF.warp_slices(owned, square, samples, padding, out=owned)
    AF.warp_slice_labels(owned_label, square, samples, padding, out=owned_label)
    torch.testing.assert_close(owned[samples], AF.warp_slices(x, square, samples, padding))
    assert torch.equal(owned[1], x[1]) and torch.equal(owned_label[1], label[1])
    assert torch.equal(owned_label[samples], AF.warp_slice_labels(label, square, samples, padding))


# ---------------------------------------------------------------------------------------- intensity
def test_nearest_exact_indices_and_slice_upsampling_equal_interpolate():
    for size in range(2, 200):
        for down in {1, size // 2, (2 * size) // 3, size - 1, max(1, round(size * 0.71))}:
            ramp = torch.arange(size, dtype=torch.float32)[None, None]
            expected = F.interpolate(ramp, down, mode="nearest-exact")[0, 0].long()
            assert torch.equal(AF.nearest_exact_index(size, down), expected), (size, down)
    small = torch.randn(5, 8, 3)
    expected = F.interpolate(small.permute(2, 0, 1)[None], (11, 13), mode="bilinear")[0].permute(1, 2, 0)
    torch.testing.assert_close(AF.upsample_slices(small, (11, 13)).view(11, 13, 3), expected)


def test_low_resolution_equals_torchs_two_interpolations():
    x = torch.randn(3, 9, 7, 6)
    scale = torch.tensor([[0.5, 0.5, 0.5], [0.71, 0.71, 1.0], [0.9, 0.6, 0.51]])
    out = AF.low_resolution(x, scale)
    for p in range(3):
        down = [round(s * float(f)) for s, f in zip(x.shape[1:], scale[p], strict=True)]
        small = F.interpolate(x[p][None, None], down, mode="nearest-exact")
        expected = F.interpolate(small, x.shape[1:], mode="trilinear")[0, 0]
        torch.testing.assert_close(out[p], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(8, 7, 6), (5, 4, AF.DENSE_BLUR_SIDE + 3)])
def test_blur_kernels_and_the_shifted_sum_equal_a_convolution(shape):
    """Taps on shifted views (X, Y; a long last axis) and the reflected matrix product (a short last
    axis) equal a reflect-padded convolution, the planes by each face included."""
    # batchgeneratorsv2's sizes: round_to_odd(6 sigma + 0.5) taps; 3.5 rounds (half to even) to 4 -> 3
    sizes = [k.count_nonzero().item() for k in AF.gaussian_kernels(torch.tensor([0.5, 1.0, 0.75]))]
    assert sizes == [3, 7, 5]
    x = torch.randn(2, *shape)
    sigma = torch.tensor([[0.5, 1.0, 0.7], [0.9, 0.6, 1.0]])
    out = AF.gaussian_blur(x, sigma)
    for p in range(2):
        expected = x[p][None, None]
        for axis in range(3):
            kernel = AF.gaussian_kernels(sigma[p : p + 1, axis])[0]
            r = (len(kernel) - 1) // 2
            shape, pad = [1, 1, 1, 1, 1], [0] * 6
            shape[2 + axis] = len(kernel)
            pad[2 * (2 - axis) : 2 * (2 - axis) + 2] = [r, r]
            expected = F.conv3d(F.pad(expected, pad, mode="reflect"), kernel.view(shape))
        torch.testing.assert_close(out[p], expected[0, 0], atol=1e-5, rtol=1e-5)


def test_intensity_functions_by_hand():
    x = torch.tensor([0.0, 1.0, 2.0, 5.0]).view(1, 4, 1, 1)
    assert AF.multiply(x, torch.tensor([2.0])).flatten().tolist() == [0.0, 2.0, 4.0, 10.0]
    # mean 2: (x - 2) * 2 + 2 = [-2, 0, 2, 8], clipped to [0, 5]
    assert AF.contrast(x, torch.tensor([2.0])).flatten().tolist() == [0.0, 0.0, 2.0, 5.0]
    assert AF.contrast(x, torch.tensor([2.0]), preserve_range=False).flatten().tolist() == [-2, 0, 2, 8]
    # gamma 2 without stats: ((x - 0) / 5) ** 2 * 5 = [0, 0.2, 0.8, 5]
    torch.testing.assert_close(
        AF.gamma(x, torch.tensor([2.0]), retain_stats=False).flatten(), torch.tensor([0.0, 0.2, 0.8, 5.0])
    )
    inverted = AF.gamma(x, torch.tensor([2.0]), invert=True, retain_stats=False)  # on -x, then negated back
    torch.testing.assert_close(inverted.flatten(), torch.tensor([0.0, 1.8, 3.2, 5.0]))
    kept = AF.gamma(x, torch.tensor([1.7]))
    torch.testing.assert_close(kept.mean(), x.mean())
    torch.testing.assert_close(kept.std(), x.std())


def _gamma_step_by_step(x, gammas, invert, retain_stats):
    """batchgeneratorsv2's ``intensity/gamma.py``, one step at a time, per volume."""
    out = []
    for volume, g in zip(x, gammas, strict=True):
        y = -volume if invert else volume
        mean, std = y.mean(), y.std()
        low, spread = y.min(), y.max() - y.min()
        y = ((y - low) / spread.clamp(min=AF.EPS)) ** g * spread + low
        if retain_stats:
            y = (y - y.mean()) / y.std().clamp(min=AF.EPS) * std + mean
        out.append(-y if invert else y)
    return torch.stack(out)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("retain_stats", [False, True])
def test_gamma_with_its_maps_folded_equals_the_steps(invert, retain_stats):
    x = torch.randn(3, 6, 5, 4) * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1) + 2
    x[2] = 1.5  # a constant volume: spread 0
    gammas = torch.tensor([0.7, 1.5, 1.2])
    expected = _gamma_step_by_step(x, gammas, invert, retain_stats)
    torch.testing.assert_close(AF.gamma(x, gammas, invert, retain_stats), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("numpy_loop", [True, False])
def test_log2_in_place_equals_torchs_on_views_and_zeros(monkeypatch, numpy_loop):
    monkeypatch.setattr(AF, "_NUMPY_SVML", numpy_loop)  # either library's loop, whichever this CPU picks
    x = torch.rand(3, 6, 5, 4, dtype=torch.float64) * 4
    x[1, 2] = 0.0
    for values in (x.float(), x, x.float().transpose(1, 3)):  # float32, float64, a strided view
        expected = values.log2()
        out = AF.log2_(values)
        assert out.data_ptr() == values.data_ptr()
        torch.testing.assert_close(out, expected, rtol=2e-7, atol=0)  # -inf where 0 too


def test_hash_noise_is_a_function_of_its_key():
    keys = torch.tensor([3, 4, 3])
    z = AF.hash_normal(keys, (50, 41, 50))
    assert torch.equal(z[0], z[2]) and not torch.equal(z[0], z[1])
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([z[0].flatten(), z[1].flatten()]))[0, 1])) < 0.01
    x = torch.zeros(2, 3, 3, 3)
    noisy = AF.gaussian_noise(x, torch.tensor([0.0, 2.0]), torch.tensor([1, 2]))
    assert torch.equal(noisy[0], x[0]) and torch.equal(
        noisy[1], 2 * AF.hash_normal(torch.tensor([2]), (3, 3, 3))[0]
    )


# -------------------------------------------------------------------------------------- determinism
def test_the_draws_fire_at_the_presets_probabilities_within_its_ranges():
    """Over 4000 samples of 4 channels each block fires at its probability (binomial, 5 sd) and draws
    within its range; the keys of the noise are distinct and below 2**31."""
    config = augment_preset("nnunet")
    params = draw_parameters(config, 4000, 4, (32, 32, 32), generator_for((3,)))

    def near(mask: torch.Tensor, p: float) -> bool:
        return abs(float(mask.float().mean()) - p) <= 5 * math.sqrt(p * (1 - p) / mask.numel())

    rotation_or_scaling = 1 - (1 - config.spatial.p_rotation) * (1 - config.spatial.p_scaling)
    assert near(params.spatial, rotation_or_scaling) and near(params.noise, config.noise.p)
    assert near(params.blur, config.blur.p * config.blur.p_per_channel)
    assert near(params.low_resolution, config.low_resolution.p * config.low_resolution.p_per_channel)
    for name in ("brightness", "contrast", "gamma_inverted", "gamma"):
        assert near(getattr(params, name), getattr(config, name).p), name
    assert near(params.flips, config.mirror.p)
    for values, (low, high) in (
        (params.noise_std, config.noise.std),
        (params.blur_sigma, config.blur.sigma),
        (params.brightness_factor, config.brightness.multiplier),
        (params.contrast_factor, config.contrast.factor),
        (params.low_resolution_scale, config.low_resolution.scale),
        (params.gamma_gamma, config.gamma.gamma),
    ):
        assert low <= float(values.min()) and float(values.max()) <= high
    assert params.noise_keys.unique().numel() == 4000 and int(params.noise_keys.min()) >= 0
    assert int(params.noise_keys.max()) < 2**31


def test_the_same_key_gives_the_same_batch():
    augment = BatchAugment(augment_preset("nnunet", EVERYTHING))
    image, label = torch.randn(2, 4, 16, 16, 8), torch.randint(0, 4, (2, 16, 16, 8), dtype=torch.uint8)
    a = augment(image, label, key=(0, 0, 5))
    b = augment(image.clone(), label.clone(), key=(0, 0, 5))
    c = augment(image, label, key=(0, 0, 6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_in_place_equals_the_copy_and_the_copy_leaves_its_inputs():
    augment = BatchAugment(augment_preset("nnunet", EVERYTHING))
    for shape in ((16, 16, 4), (8, 10, 6)):  # in-plane and 3D
        image, label = torch.randn(3, 4, *shape), torch.randint(0, 4, (3, *shape), dtype=torch.uint8)
        kept = image.clone(), label.clone()
        copied = augment(image, label, key=(0, 0, 2))
        assert torch.equal(image, kept[0]) and torch.equal(label, kept[1])
        assert copied[0] is not image and copied[1] is not label
        owned = augment(image.clone(), label.clone(), key=(0, 0, 2), inplace=True)
        assert torch.equal(owned[0], copied[0]) and torch.equal(owned[1], copied[1])


def test_the_copy_is_a_new_label_even_when_no_sample_moves():
    """Nothing resampled or flipped: the copy's label was the caller's own tensor."""
    still = {"spatial.p_rotation": 0.0, "spatial.p_scaling": 0.0, "mirror.axes": (), "noise.p": 1.0}
    augment = BatchAugment(augment_preset("nnunet", still))
    image, label = torch.randn(2, 4, 8, 8, 4), torch.randint(0, 4, (2, 8, 8, 4), dtype=torch.uint8)
    _, out_label = augment(image, label, key=(0, 0, 1))
    assert out_label is not label and torch.equal(out_label, label)
    out_label[0] = 9
    assert int(label.max()) < 4


def test_the_copy_takes_the_volumes_it_keeps_from_an_input_of_any_layout():
    """Samples not resampled come from the input a volume at a time (as first changed, or flipped into
    place): the same batch as in place, from a channels-last input left alone."""
    augment = BatchAugment(augment_preset("nnunet", {"noise.p": 0.5, "gamma.p": 0.5}))
    image = torch.randn(4, 3, 8, 10, 6)
    label = torch.randint(0, 4, (4, 8, 10, 6), dtype=torch.uint8)
    strided = image.contiguous(memory_format=torch.channels_last_3d)
    kept = 0
    for step in range(6):
        kept += int((~augment.parameters(image, (1, 0, step)).spatial).sum())
        owned = augment(image.clone(), label.clone(), key=(1, 0, step), inplace=True)
        copied = augment(strided, label, key=(1, 0, step))
        assert torch.equal(strided, image)
        assert torch.equal(copied[0], owned[0]) and torch.equal(copied[1], owned[1])
    assert kept > 0


def test_volumes_flipped_after_their_last_transform_equal_the_batch_flipped_last():
    """Each volume is flipped as soon as its last intensity transform is done: the batch of every other
    transform, then flipped."""
    config = augment_preset("nnunet", {"gamma.p": 0.5, "blur.p": 0.5})
    unflipped = BatchAugment(with_overrides(config, {"mirror.axes": ()}))
    image = torch.randn(4, 3, 8, 10, 6)
    label = torch.randint(0, 4, (4, 8, 10, 6), dtype=torch.uint8)
    for step in range(4):
        flips = BatchAugment(config).parameters(image, (2, 0, step)).flips
        out = BatchAugment(config)(image, label, key=(2, 0, step))
        plain = unflipped(image, label, key=(2, 0, step))
        assert torch.equal(out[0], AF.mirror(plain[0], flips)) and torch.equal(
            out[1], AF.mirror(plain[1], flips)
        )


def test_to_training_batch_never_hands_the_batch_itself_to_an_in_place_augmentation():
    augment = BatchAugment(augment_preset("nnunet", EVERYTHING))
    batch = {
        "image": torch.randn(2, 4, 8, 8, 8),
        "label": torch.randint(0, 4, (2, 8, 8, 8), dtype=torch.uint8),
    }
    kept = {k: v.clone() for k, v in batch.items()}
    image, _ = to_training_batch(batch, "cpu", functools.partial(augment, key=(0, 0, 1), inplace=True))
    assert torch.equal(batch["image"], kept["image"]) and torch.equal(batch["label"], kept["label"])
    assert torch.equal(image, augment(kept["image"], kept["label"], key=(0, 0, 1))[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree():
    augment = BatchAugment(augment_preset("nnunet", EVERYTHING))
    image, label = torch.randn(2, 4, 32, 32, 16), torch.randint(0, 4, (2, 32, 32, 16), dtype=torch.uint8)
    cpu = augment(image, label, key=(0, 0, 1))
    gpu = augment(image.cuda(), label.cuda(), key=(0, 0, 1))
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-3, rtol=1e-3)
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 1e-3  # nearest: a tie may round the other way


# --------------------------------------------------------------------------------------------- config
def test_presets_and_overrides():
    assert not augment_preset("none").active and augment_preset("flips").mirror.axes == (0, 1, 2)
    nnunet = augment_preset("nnunet")
    assert nnunet.spatial.p_rotation == 0.2 and nnunet.gamma_inverted.invert and not nnunet.gamma.invert
    assert AugmentConfig.from_dict(nnunet.to_dict()) == nnunet
    # a block given in part keeps its field's default for the rest: the inverted gamma stays inverted
    partial = AugmentConfig.from_dict({"gamma_inverted": {"p": 0.1}, "gamma": {"p": 0.3}})
    assert partial.gamma_inverted.invert and not partial.gamma.invert and partial.gamma_inverted.p == 0.1
    assert augment_preset("nnunet", {"noise.p": 0.5}).noise.p == 0.5
    with pytest.raises(ConfigError, match="no field 'q'"):
        augment_preset("nnunet", {"noise.q": 0.5})
    with pytest.raises(ConfigError, match="probability"):
        augment_preset("nnunet", {"noise.p": 1.5})
    with pytest.raises(ConfigError, match="low <= high"):
        augment_preset("none", {"spatial.scaling": (1.4, 0.7)})
    with pytest.raises(ConfigError, match="must be a range"):  # NaN passed every comparison before
        augment_preset("none", {"noise.std": (float("nan"), 0.1)})
    with pytest.raises(ConfigError, match=r"MirrorParams\.axes"):  # 1.7 became axis 1 before
        augment_preset("none", {"mirror.axes": 1.7})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("noise.p", "abc", "noise.p must be a number, got 'abc'"),
        ("noise.p", True, "noise.p must be a number"),
        ("gamma.invert", 1, "gamma.invert must be true or false, got 1"),
        ("spatial.rotation_degrees", ("a", "b"), "rotation_degrees must be numbers separated by commas"),
        ("spatial.padding", 3, "spatial.padding must be a word, got 3"),
    ],
)
def test_an_override_of_the_wrong_type_names_the_field_and_the_type(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        augment_preset("nnunet", {key: value})


def test_an_override_of_one_number_for_a_tuple_is_a_one_tuple():
    assert augment_preset("none", {"mirror.axes": 2}).mirror.axes == (2,)
    assert augment_preset("none", {"spatial.scaling": [0.8, 1]}).spatial.scaling == (0.8, 1.0)
    with pytest.raises(ConfigError, match="must be a range"):
        augment_preset("none", {"spatial.rotation_degrees": 15})


def test_old_train_configs_read_their_flips():
    old = TrainConfig().to_dict()
    del old["augment"]
    assert TrainConfig.from_dict({**old, "flip_axes": [0, 1]}).augment.mirror.axes == (0, 1)
    assert TrainConfig.from_dict({**old, "flip_axes": []}).augment == AugmentConfig()
    assert TrainConfig.from_dict(old).augment == AugmentConfig()
    config = TrainConfig(augment=augment_preset("nnunet"))
    assert TrainConfig.from_dict(config.to_dict()) == config
