"""Sliding-window inference: window placement, Gaussian weights, blending, padding, MONAI equality."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brainnet.infer import gaussian_weights, sliding_window, window_starts
from brainnet.infer.sliding_window import weight_sum, window_regions
from brainnet.model import ModelConfig, build_model
from brainprep.errors import ConfigError, ShapeMismatchError


def identity(tiles: torch.Tensor) -> torch.Tensor:
    return tiles.clone()


# ------------------------------------------------------------------------------------------ window_starts
@pytest.mark.parametrize(
    ("size", "window", "overlap", "expected"),
    [
        (10, 4, 0.5, [0, 2, 4, 6]),  # step 2; 6 + 4 reaches the end
        (9, 4, 0.5, [0, 2, 4, 5]),  # 6 + 4 > 9: last window moved back flush with the end
        (10, 4, 0.0, [0, 4, 6]),  # no overlap still covers the tail
        (6, 4, 0.9, [0, 1, 2]),  # int(4 * 0.1) = 0 -> step 1
        (4, 4, 0.5, [0]),  # exactly one window
        (3, 4, 0.5, [0]),  # shorter than the window: the caller pads
        (240, 160, 0.5, [0, 80]),
        (155, 16, 0.5, [*range(0, 137, 8), 139]),
    ],
)
def test_window_starts_by_hand(size, window, overlap, expected):
    assert window_starts(size, window, overlap) == expected


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(1, 300),
    window=st.integers(1, 64),
    overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]),
)
def test_window_starts_cover_the_axis(size, window, overlap):
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    covered = set()
    for s in starts:
        covered.update(range(s, min(s + window, size)))
    assert covered == set(range(size))
    if size > window:
        assert starts[-1] == size - window


@pytest.mark.parametrize(
    ("size", "window", "overlap"), [(10, 4, 1.0), (10, 4, -0.1), (0, 4, 0.5), (10, 0, 0.5)]
)
def test_window_starts_rejects_bad_arguments(size, window, overlap):
    with pytest.raises(ConfigError):
        window_starts(size, window, overlap)


# --------------------------------------------------------------------------------------- gaussian_weights
def test_gaussian_weights_1d_by_hand():
    # window 8, sigma = 0.125 * 8 = 1, offsets -3.5 .. 3.5: w = exp(-x^2 / 2)
    w = gaussian_weights((8,))
    expected = [math.exp(-(x**2) / 2) for x in (-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5)]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_gaussian_weights_floor():
    # window 16, sigma 2: edge exp(-7.5^2 / 8) = 8.8e-4 < 1e-3 -> clamped up to 1e-3
    w = gaussian_weights((16,))
    assert w[0].item() == pytest.approx(1e-3)
    assert w[1].item() == pytest.approx(math.exp(-(6.5**2) / 8), rel=1e-6)


def test_gaussian_weights_3d_symmetric_separable_max_at_centre():
    w = gaussian_weights((9, 7, 5))
    assert w.shape == (9, 7, 5) and w.dtype == torch.float32
    for axis in range(3):
        assert torch.equal(w, w.flip(axis))
    assert w[4, 3, 2].item() == 1.0  # odd sizes: the centre offset is 0
    assert int(w.argmax()) == (4 * 7 + 3) * 5 + 2
    a, b, c = gaussian_weights((9,)), gaussian_weights((7,)), gaussian_weights((5,))
    # separable product of the 1-D curves (each above the floor), then the 1e-3 floor on the product
    assert float(min(a.min(), b.min(), c.min())) > 1e-3
    product = a[:, None, None] * b[None, :, None] * c[None, None, :]
    assert torch.allclose(w, product.clamp(min=1e-3))
    assert float(product.min()) < 1e-3  # so the floor is exercised
    assert float(w.min()) >= 1e-3


def test_gaussian_weights_even_window_has_flat_centre():
    w = gaussian_weights((160, 160, 16))
    assert float(w.min()) >= 1e-3
    centre = w[79:81, 79:81, 7:9]
    assert torch.allclose(centre, torch.full_like(centre, float(w.max())))


# ------------------------------------------------------------------------------------------ sliding_window
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("shape", "window"),
    [
        ((2, 37, 21, 9), (16, 16, 8)),  # odd shapes, several windows per axis
        ((2, 5, 6, 3), (16, 16, 8)),  # smaller than the window on every axis
        ((1, 40, 7, 8), (16, 16, 8)),  # mixed: larger, smaller, equal
        ((3, 16, 16, 8), (16, 16, 8)),  # exactly one window
    ],
)
def test_identity_predictor_reproduces_input(shape, window, blend):
    volume = torch.rand(shape, generator=torch.Generator().manual_seed(0)) + 0.5
    out = sliding_window(volume, identity, window=window, overlap=0.5, blend=blend, batch_size=3)
    assert out.shape == volume.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, volume, rtol=1e-6, atol=1e-6)
    out += 1.0  # a normal tensor, not an inference-mode one


def test_constant_blend_by_hand():
    # One axis of 6 voxels, window 4, overlap 0.5 -> windows [0:4] and [2:6]. The predictor paints each
    # window with its mean: (0+1+2+3)/4 = 1.5 and (2+3+4+5)/4 = 3.5; the overlap 2:4 averages to 2.5.
    volume = torch.arange(6.0).reshape(1, 6, 1, 1)

    def window_mean(tiles: torch.Tensor) -> torch.Tensor:
        return tiles.mean(dim=(2, 3, 4), keepdim=True).expand_as(tiles).clone()

    out = sliding_window(volume, window_mean, window=(4, 1, 1), overlap=0.5, blend="constant")
    assert out.flatten().tolist() == [1.5, 1.5, 2.5, 2.5, 3.5, 3.5]
    gauss = sliding_window(volume, window_mean, window=(4, 1, 1), overlap=0.5, blend="gaussian")
    # Gaussian weights (sigma 0.5, offsets -1.5,-0.5,0.5,1.5): in the overlap, voxel 2 is at offset 0.5
    # of window 1 and -1.5 of window 2, so window 1 counts more there.
    w_in, w_out = math.exp(-(0.5**2) / 0.5), math.exp(-(1.5**2) / 0.5)
    assert gauss[0, 2, 0, 0].item() == pytest.approx((1.5 * w_in + 3.5 * w_out) / (w_in + w_out), rel=1e-6)
    assert gauss[0, 3, 0, 0].item() == pytest.approx((1.5 * w_out + 3.5 * w_in) / (w_in + w_out), rel=1e-6)


def test_weight_sum_counts_covering_windows_by_hand():
    # x: 10 voxels, window 4, overlap 0.5 -> starts 0, 2, 4, 6: voxels covered 1,1,2,2,2,2,2,2,1,1 times;
    # y: 3 voxels, one window of 3 -> 1; z: 6 voxels, window 4, no overlap -> starts 0, 2: 1,1,2,2,1,1.
    total = weight_sum((10, 3, 6), (4, 3, 4), 0.5, torch.ones(4, 3, 4))
    x = torch.tensor([1, 1, 2, 2, 2, 2, 2, 2, 1, 1.0])
    z = torch.tensor([1, 1, 2, 2, 1, 1.0])
    assert torch.equal(total[0], x[:, None, None] * torch.ones(3)[None, :, None] * z[None, None, :])
    assert window_regions((10, 3, 6), (4, 3, 4), 0.5)[:3] == [
        (slice(0, 4), slice(0, 3), slice(0, 4)),
        (slice(0, 4), slice(0, 3), slice(2, 6)),  # the last axis moves fastest, as in MONAI
        (slice(2, 6), slice(0, 3), slice(0, 4)),
    ]


def test_divisor_kept_between_scans_follows_shape_and_blend():
    volumes = [
        torch.rand(shape, generator=torch.Generator().manual_seed(1)) + 0.5
        for shape in ((1, 37, 21, 9), (1, 20, 20, 9), (1, 37, 21, 9))
    ]
    for blend in ("gaussian", "constant", "gaussian"):
        for volume in volumes:
            out = sliding_window(volume, identity, window=(16, 16, 8), overlap=0.5, blend=blend)
            torch.testing.assert_close(out, volume, rtol=1e-6, atol=1e-6)
            out.mul_(0)  # a caller writing into its result leaves the next scan's divisor alone


@pytest.mark.parametrize("shape", [(2, 40, 21, 24), (2, 12, 21, 24)])  # the second is padded along x
def test_mask_skips_empty_windows_and_equals_the_masked_full_prediction(shape):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)
    volume = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(shape[1:], dtype=torch.bool)
    mask[3:9, 2:15, 5:11] = True  # z 5..10: windows starting at z 16 hold none of it
    calls: list[int] = []

    def counted(tiles: torch.Tensor) -> torch.Tensor:
        calls.append(len(tiles))
        return conv(tiles)

    full = sliding_window(volume, counted, window=(16, 16, 8), overlap=0.5, batch_size=2)
    n_full, calls[:] = sum(calls), []
    masked = sliding_window(volume, counted, window=(16, 16, 8), overlap=0.5, batch_size=2, mask=mask)
    assert 0 < sum(calls) < n_full
    assert torch.equal(masked, full * mask)  # bit for bit inside the mask, zero outside
    empty = sliding_window(volume, counted, window=(16, 16, 8), mask=torch.zeros_like(mask))
    assert empty.shape == (3, *shape[1:]) and not empty.any()
    with pytest.raises(ShapeMismatchError, match="mask must have"):
        sliding_window(volume, counted, window=(16, 16, 8), mask=mask[1:])


def test_predictor_tensors_are_never_written():
    # A predictor may return an expanded view (one value per window) or a tensor it keeps and reuses.
    volume = torch.arange(6.0).reshape(1, 6, 1, 1)
    kept: list[torch.Tensor] = []

    def window_mean(tiles: torch.Tensor) -> torch.Tensor:
        mean = tiles.mean(dim=(2, 3, 4), keepdim=True)
        kept.append(mean)
        return mean.expand_as(tiles)

    out = sliding_window(volume, window_mean, window=(4, 1, 1), overlap=0.5, blend="constant", batch_size=1)
    assert out.flatten().tolist() == [1.5, 1.5, 2.5, 2.5, 3.5, 3.5]
    assert [float(m) for m in kept] == [1.5, 3.5]  # unweighted, as the predictor returned them


def test_padding_is_zero_and_centred():
    # A volume shorter than the window along x is padded by (4 - 2) // 2 = 1 zero before and 1 after;
    # the window sum therefore sees exactly the volume's values.
    volume = torch.tensor([3.0, 5.0]).reshape(1, 2, 1, 1)
    seen: list[torch.Tensor] = []

    def record(tiles: torch.Tensor) -> torch.Tensor:
        seen.append(tiles.clone())
        return tiles.clone()

    sliding_window(volume, record, window=(4, 1, 1), overlap=0.5)
    assert seen[0].flatten().tolist() == [0.0, 3.0, 5.0, 0.0]


def test_batch_size_and_output_channels():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)
    volume = torch.rand(2, 21, 19, 11)
    results = [sliding_window(volume, conv, window=(8, 8, 4), overlap=0.5, batch_size=b) for b in (1, 4, 100)]
    assert results[0].shape == (3, 21, 19, 11)
    torch.testing.assert_close(results[0], results[1])
    torch.testing.assert_close(results[0], results[2])


def test_bad_predictor_output_and_arguments():
    volume = torch.rand(2, 8, 8, 4)
    with pytest.raises(ShapeMismatchError, match="predictor must return"):
        sliding_window(volume, lambda t: t[:, :, :4], window=(8, 8, 4))
    with pytest.raises(ShapeMismatchError):
        sliding_window(volume[0], identity, window=(8, 8, 4))
    with pytest.raises(ConfigError):
        sliding_window(volume, identity, window=(8, 8, 4), blend="median")
    with pytest.raises(ConfigError):
        sliding_window(volume, identity, window=(8, 8, 4), overlap=1.0)


def test_with_small_unet():
    torch.manual_seed(0)
    model = build_model(ModelConfig(base_filters=4, depth=3)).eval()
    volume = torch.randn(4, 20, 18, 9)
    out = sliding_window(volume, model, window=(16, 16, 8), overlap=0.5, batch_size=2)
    assert out.shape == (3, 20, 18, 9)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize(
    ("shape", "window", "overlap"),
    [
        ((2, 37, 21, 9), (16, 16, 8), 0.5),
        ((2, 10, 40, 5), (16, 16, 8), 0.5),  # pads x and z
        ((2, 33, 33, 17), (16, 8, 4), 0.25),
        ((2, 48, 48, 31), (32, 32, 16), 0.5),  # Gaussian floor active at window corners
    ],
)
def test_equals_monai(shape, window, overlap):
    monai_inferers = pytest.importorskip("monai.inferers")
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)

    def predictor(tiles: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(conv(tiles))

    volume = torch.rand(shape)
    with torch.inference_mode():
        expected = monai_inferers.sliding_window_inference(
            volume[None],
            window,
            4,
            predictor,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
            padding_mode="constant",
        )[0]
    got = sliding_window(volume, predictor, window=window, overlap=overlap, blend="gaussian", batch_size=4)
    torch.testing.assert_close(got, expected.as_tensor() if hasattr(expected, "as_tensor") else expected)
