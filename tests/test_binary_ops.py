"""Quantizers, weight binarization, binary layers and re-scalings against their formulas."""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from ebsr_basicsr.ops.binary import BinaryConv2d, BinaryLinear  # noqa: E402
from ebsr_basicsr.ops.quantizers import (  # noqa: E402
    QUANTIZERS, ElasticSign, RSign, SignQuantizer, approx_sign, get_quantizer, sign, ste_sign)
from ebsr_basicsr.ops.rescale import ChannelRescale, SpatialRescale  # noqa: E402

POINTS = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5])


def _grad(fn, x):
    x = x.clone().requires_grad_(True)
    fn(x).sum().backward()
    return x.grad


def test_sign_is_never_zero():
    assert torch.equal(sign(POINTS), torch.tensor([-1.0, -1, -1, -1, 1, 1, 1, 1, 1]))
    for fn in (ste_sign, approx_sign):
        assert torch.equal(fn(POINTS), sign(POINTS))


def test_ste_gradient_is_clipped_identity():
    assert torch.equal(_grad(ste_sign, POINTS), (POINTS.abs() <= 1).float())


def test_approx_sign_gradient_is_bireal_polynomial():
    expected = torch.clamp(2 - 2 * POINTS.abs(), min=0)
    assert torch.allclose(_grad(approx_sign, POINTS), expected)
    assert _grad(approx_sign, torch.tensor([0.0])).item() == 2.0


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_every_alias_quantizes_to_plus_minus_one(name):
    q = get_quantizer(name, channels=4)
    x = torch.randn(2, 4, 5, 5)
    x[0, 0, 0, 0] = 0.0
    out = q(x)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert out.shape == x.shape


def test_rsign_threshold_shifts_and_learns():
    q = RSign(3)
    with torch.no_grad():
        q.threshold.copy_(torch.tensor([0.5, -0.5, 0.0]))
    x = torch.zeros(1, 3, 1, 1, requires_grad=True)
    out = q(x)
    assert out.flatten().tolist() == [-1.0, 1.0, 1.0]  # sign(0 - b)
    out.sum().backward()
    # d sign(x - b)/db = -(d/dx) with the ApproxSign estimator 2 - 2|x - b|
    assert torch.allclose(q.threshold.grad, -torch.tensor([1.0, 1.0, 2.0]))
    assert torch.allclose(x.grad.flatten(), torch.tensor([1.0, 1.0, 2.0]))


def test_rsign_on_tokens_uses_last_dim():
    q = RSign(4)
    with torch.no_grad():
        q.threshold.copy_(torch.tensor([10.0, -10.0, 10.0, -10.0]))
    out = q(torch.zeros(2, 3, 4))
    assert torch.equal(out[0, 0], torch.tensor([-1.0, 1.0, -1.0, 1.0]))


def test_elastic_sign_initialises_alpha_and_scales_gradient_window():
    q = ElasticSign(2).train()
    x = torch.tensor([[[[1.0]], [[-3.0]]]])
    out = q(x)
    assert q.alpha.item() == pytest.approx(2 * 2.0)  # 2 * mean|x - b|
    assert bool(q.initialized)
    assert torch.equal(out.flatten(), torch.tensor([1.0, -1.0]))
    # gradient window is |x - b| <= alpha, slope (2 - 2|u|)/alpha with u = x/alpha
    g = _grad(q, x)
    assert torch.allclose(g.flatten(), torch.tensor([(2 - 2 * 0.25) / 4, (2 - 2 * 0.75) / 4]))
    before = q.alpha.item()
    q(x * 100)
    assert q.alpha.item() == before  # initialised once only


def test_get_quantizer_forms_and_errors():
    assert get_quantizer(None, 3) is None
    module = SignQuantizer("ste")
    assert get_quantizer(module, 3) is module
    assert isinstance(get_quantizer({"type": "rsign", "gradient": "ste"}, 3), RSign)
    assert get_quantizer({"type": "sign", "gradient": "ste"}, 3).gradient == "ste"
    for bad in ("nope", {"type": "nope"}, 3.5, {"gradient": "ste"}):
        with pytest.raises(ValueError):
            get_quantizer(bad, 3)
    with pytest.raises(ValueError):
        SignQuantizer("nope")


@pytest.mark.parametrize("pad_value", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("weight_scale", ["mean", "learnable", "none"])
def test_binary_conv_equals_float_conv_of_its_plus_minus_one_tensors(pad_value, stride, weight_scale):
    torch.manual_seed(0)
    conv = BinaryConv2d(5, 7, 3, stride=stride, bias=True, act_quantizer="rsign",
                        weight_scale=weight_scale, pad_value=pad_value)
    with torch.no_grad():
        conv.quantizer.threshold.normal_()
        conv.bias.normal_()
    x = torch.randn(2, 5, 9, 8)
    x_pm = torch.where(x - conv.quantizer.threshold.view(1, -1, 1, 1) >= 0, 1.0, -1.0)
    w_pm = torch.where(conv.weight >= 0, 1.0, -1.0)
    alpha = {"mean": lambda: conv.weight.abs().mean((1, 2, 3)), "learnable": lambda: conv.scale,
             "none": lambda: torch.ones(7)}[weight_scale]()
    expected = F.conv2d(F.pad(x_pm, (1, 1, 1, 1), value=pad_value), w_pm, stride=stride)
    expected = expected * alpha.view(1, -1, 1, 1) + conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(conv(x), expected, atol=1e-5)
    assert set(conv.quantize_input(x).unique().tolist()) <= {-1.0, 1.0, pad_value}


def test_binary_conv_with_fp_activations_is_zero_padded():
    conv = BinaryConv2d(3, 4, 3, act_quantizer=None, weight_scale="learnable", pad_value=0)
    x = torch.randn(1, 3, 6, 6)
    w = torch.where(conv.weight >= 0, 1.0, -1.0) * conv.scale.view(-1, 1, 1, 1)
    assert torch.allclose(conv(x), F.conv2d(x, w, padding=1), atol=1e-5)
    with pytest.raises(ValueError):
        BinaryConv2d(3, 4, act_quantizer=None, pad_value=1)
    with pytest.raises(ValueError):
        BinaryConv2d(3, 4, pad_value=0.5)


def test_binary_conv_gradients_reach_latent_weights_thresholds_and_scale():
    conv = BinaryConv2d(4, 4, 3, act_quantizer="elastic_sign", weight_scale="learnable")
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    conv(x).square().mean().backward()
    # latent weights get the clipped straight-through gradient
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    w_outside = conv.weight.detach().abs() > 1
    assert torch.all(conv.weight.grad[w_outside] == 0)
    for p in (conv.scale, conv.quantizer.threshold, conv.quantizer.alpha, x):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_layer_scale_multiplies_output():
    conv = BinaryConv2d(3, 2, 3, act_quantizer="elastic_sign").eval()
    with torch.no_grad():
        conv.quantizer.alpha.fill_(3.0)
    x = torch.randn(1, 3, 5, 5)
    ref = F.conv2d(conv.quantize_input(x), conv.binary_weight())
    assert torch.allclose(conv(x), 3.0 * ref, atol=1e-5)


def test_binary_linear_equals_float_linear_of_plus_minus_one():
    lin = BinaryLinear(6, 5, act_quantizer="ste_sign")
    x = torch.randn(2, 7, 6)
    w = torch.where(lin.weight >= 0, 1.0, -1.0) * lin.weight.abs().mean(1, keepdim=True)
    assert torch.allclose(lin(x), F.linear(torch.where(x >= 0, 1.0, -1.0), w, lin.bias), atol=1e-5)


def test_spatial_rescale_formulas():
    x = torch.randn(2, 4, 6, 5)
    s = SpatialRescale(4, "absmean", kernel_size=3)
    expected = F.avg_pool2d(x.abs().mean(1, keepdim=True), 3, 1, 1, count_include_pad=True)
    assert torch.allclose(s(x), expected)
    c = SpatialRescale(4, "conv")
    with torch.no_grad():
        c.proj.weight.normal_()
    assert torch.allclose(c(x), torch.sigmoid(F.conv2d(x, c.proj.weight, c.proj.bias)))
    tokens = torch.randn(2, 9, 4)
    assert torch.allclose(s(tokens), tokens.abs().mean(-1, keepdim=True))
    with pytest.raises(ValueError):
        SpatialRescale(4, "nope")


def test_channel_rescale_formulas():
    x = torch.randn(2, 4, 3, 3)
    mlp = ChannelRescale(4, 4, "mlp", hidden_ratio=1.0, shift=True)
    with torch.no_grad():
        mlp.fc2.weight.normal_()
    beta, gamma = mlp(x)
    out = mlp.fc2(F.relu(mlp.fc1(x.mean((2, 3)))))
    assert torch.allclose(gamma, torch.sigmoid(out[:, :4])) and torch.allclose(beta, out[:, 4:])
    aff = ChannelRescale(4, 8, "affine", shift=False)
    with torch.no_grad():
        aff.weight.normal_()
    beta, gamma = aff(x)
    pooled = x.mean((2, 3))[:, torch.arange(8) % 4]
    assert beta is None and torch.allclose(gamma, torch.sigmoid(aff.weight * pooled + aff.bias))
    with pytest.raises(ValueError):
        ChannelRescale(4, 4, "affine", shift=True)
