"""The course's 3D U-Net: shapes, variants, parameter counts, input checks, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainnet.losses import soft_dice_loss
from brainnet.model import (
    DEFAULT_PARAMETER_COUNT,
    ModelConfig,
    UNet3D,
    build_model,
    count_parameters,
    expected_parameter_count,
)
from brainprep.errors import ConfigError, ShapeMismatchError

SMALL = ModelConfig(base_filters=4, depth=3)


def _conv_channels(modules: nn.Module) -> list[int]:
    return [m.out_channels for m in modules.modules() if isinstance(m, nn.Conv3d)]


@pytest.mark.slow
def test_default_config_forward_shape_and_range():
    torch.manual_seed(0)
    model = build_model().eval()
    with torch.inference_mode():
        y = model(torch.randn(1, 4, 160, 160, 16))
    assert y.shape == (1, 3, 160, 160, 16)
    assert y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_small_config_forward_shape():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    with torch.inference_mode():
        y = model(torch.randn(2, 4, 32, 32, 8))
    assert y.shape == (2, 3, 32, 32, 8)


@pytest.mark.parametrize("normalization", ["none", "batch", "instance"])
@pytest.mark.parametrize("upsampling", ["upsample", "transpose"])
def test_variants_forward_and_parameter_count(normalization, upsampling):
    torch.manual_seed(0)
    config = SMALL.replace(normalization=normalization, upsampling=upsampling)
    model = build_model(config)
    y = model(torch.randn(2, 4, 16, 8, 8))  # train mode: batch norm uses batch statistics
    assert y.shape == (2, 3, 16, 8, 8)
    assert count_parameters(model) == expected_parameter_count(config)
    has_norm = any(isinstance(m, nn.BatchNorm3d | nn.InstanceNorm3d) for m in model.modules())
    assert has_norm == (normalization != "none")
    has_transpose = any(isinstance(m, nn.ConvTranspose3d) for m in model.modules())
    assert has_transpose == (upsampling == "transpose")


def test_default_parameter_count():
    # Hand check of the closed form on a tiny net (in 1, out 1, depth 2, base 2, no norm, upsample):
    # level 0: conv 1->2 = 1*2*27+2 = 56, conv 2->4 = 2*4*27+4 = 220
    # level 1: conv 4->4 = 4*4*27+4 = 436, conv 4->8 = 4*8*27+8 = 872
    # decoder: conv (8+4)->4 = 12*4*27+4 = 1300, conv 4->4 = 436; head 4*1+1 = 5  => 3325
    tiny = ModelConfig(in_channels=1, out_channels=1, depth=2, base_filters=2)
    assert expected_parameter_count(tiny) == 3325
    assert count_parameters(UNet3D(tiny)) == 3325
    model = build_model()
    assert count_parameters(model) == DEFAULT_PARAMETER_COUNT == 16_318_307
    transposed = ModelConfig(upsampling="transpose")
    # three ConvTranspose3d k=2: 512*512*8+512, 256*256*8+256, 128*128*8+128
    extra = 512 * 512 * 8 + 512 + 256 * 256 * 8 + 256 + 128 * 128 * 8 + 128
    assert expected_parameter_count(transposed) == DEFAULT_PARAMETER_COUNT + extra


def test_course_channel_layout():
    model = build_model()
    assert _conv_channels(model.encoder) == [32, 64, 64, 128, 128, 256, 256, 512]
    assert _conv_channels(model.decoder) == [256, 256, 128, 128, 64, 64]
    first_decoder_conv = model.decoder[0][0][0]
    assert first_decoder_conv.in_channels == 512 + 256  # upsampled bottom + skip of level 2
    assert model.head.out_channels == 3 and model.head.kernel_size == (1, 1, 1)
    assert isinstance(model.ups[0], nn.Upsample) and model.ups[0].mode == "nearest"


def test_keras_initialisation_zero_biases():
    model = build_model(SMALL)
    biases = [m.bias.detach() for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert all(float(b.abs().max()) == 0.0 for b in biases)


def test_upsample_is_nearest_repetition():
    up = build_model(SMALL).ups[0]
    x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    y = up(x)
    assert y.shape == (1, 1, 4, 4, 4)
    assert torch.equal(y[0, 0, 0:2, 0:2, 0:2], torch.zeros(2, 2, 2))  # voxel (0,0,0) repeated
    assert torch.equal(y[0, 0, 2:4, 2:4, 2:4], torch.full((2, 2, 2), 7.0))


def test_forward_is_sigmoid_of_logits():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    x = torch.randn(1, 4, 8, 8, 4)
    with torch.inference_mode():
        assert torch.allclose(model(x), torch.sigmoid(model.forward_logits(x)))


@pytest.mark.parametrize("shape", [(1, 4, 30, 32, 8), (1, 4, 32, 32, 6), (4, 33, 32, 8)])
def test_indivisible_input_shape_raises_clear_error(shape):
    model = build_model(SMALL)
    with pytest.raises(ShapeMismatchError, match="multiple of 4"):
        model(torch.zeros(shape) if len(shape) == 5 else torch.zeros((1, *shape)))


def test_check_input_shape():
    config = ModelConfig()
    config.check_input_shape((160, 160, 16))
    config.check_input_shape((4, 160, 160, 16))
    config.check_input_shape((2, 4, 160, 160, 16))
    with pytest.raises(ShapeMismatchError, match="multiple of 8"):
        config.check_input_shape((160, 160, 12))
    with pytest.raises(ShapeMismatchError, match="4 channels, found 3"):
        config.check_input_shape((1, 3, 160, 160, 16))
    with pytest.raises(ShapeMismatchError):
        config.check_input_shape((160, 160))


@pytest.mark.parametrize(
    "changes",
    [{"normalization": "group"}, {"upsampling": "bilinear"}, {"depth": 0}, {"base_filters": -1}],
)
def test_config_validation(changes):
    with pytest.raises(ConfigError):
        ModelConfig(**changes)


def test_config_round_trip():
    config = ModelConfig(base_filters=8, normalization="instance", upsampling="transpose")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["normalization"] == "instance"


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model(SMALL.replace(normalization="batch"))
    x = torch.randn(2, 4, 8, 8, 4)
    target = (torch.rand(2, 3, 8, 8, 4) > 0.7).float()
    loss = soft_dice_loss(model(x), target)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert float(model.encoder[0][0][0].weight.grad.abs().sum()) > 0.0
