"""Every registered architecture builds through basicsr, runs forward and backward."""
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("basicsr")

import ebsr_basicsr  # noqa: E402,F401  (registers the archs when basicsr's registry loads)
from basicsr.archs import build_network  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

from ebsr_basicsr.archs import ARCHS, build_arch  # noqa: E402
from ebsr_basicsr.ops.binary import BinaryConv2d, BinaryLinear  # noqa: E402
from ebsr_basicsr.ops.quantizers import RSign  # noqa: E402
from ebsr_basicsr.ops.rescale import ChannelRescale, SpatialRescale  # noqa: E402

NAMES = ["BNNSR", "E2FIFNet", "EBSRNet", "SCALESNet", "SCALESSwinIR"]


def test_exactly_the_five_names_are_registered():
    assert sorted(ARCHS) == sorted(NAMES)
    for name in NAMES:
        assert ARCH_REGISTRY.get(name) is ARCHS[name]


def test_import_is_light_and_registers_through_basicsr():
    code = (
        "import sys, ebsr_basicsr\n"
        "assert 'torch' not in sys.modules and 'basicsr' not in sys.modules\n"
        "from basicsr.utils.registry import ARCH_REGISTRY\n"
        f"assert all(n in ARCH_REGISTRY for n in {NAMES!r})\n"
        "from ebsr_basicsr.training.registration import register_with_basicsr\n"
        "register_with_basicsr()  # idempotent: no duplicate-name assertion\n"
        "assert not any(type(f).__name__ == '_RegisterWhenBasicsrLoads' for f in sys.meta_path)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _learnable_scales_and_thresholds(net):
    for module in net.modules():
        if isinstance(module, RSign):
            yield "threshold", module.threshold
            if hasattr(module, "alpha"):
                yield "alpha", module.alpha
        if isinstance(module, (BinaryConv2d, BinaryLinear)) and module.weight_scale == "learnable":
            yield "scale", module.scale
        if isinstance(module, SpatialRescale) and module.mode == "conv":
            yield "spatial", module.proj.weight
        if isinstance(module, ChannelRescale):
            yield "channel", module.fc2.weight if module.mode == "mlp" else module.weight


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", NAMES)
def test_builds_runs_and_trains(name, scale):
    torch.manual_seed(0)
    net = build_network({"type": name, "upscale": scale})
    net.train()
    x = torch.rand(1, 3, 24, 24)
    y = net(x)
    assert y.shape == (1, 3, 24 * scale, 24 * scale)
    assert torch.isfinite(y).all()
    (y - torch.rand_like(y)).abs().mean().backward()
    binary = [m for m in net.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    assert binary, "a binary architecture without binary layers"
    for m in binary:
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, f"no gradient to {m}"
    scales = list(_learnable_scales_and_thresholds(net))
    if name != "E2FIFNet":  # E2FIF's only learnable extras are BN's, checked below
        assert scales
    for what, p in scales:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient to a {what}"
    for p in net.parameters():
        assert p.grad is not None


@pytest.mark.parametrize("upsampler", ["fp", "binary", "light"])
@pytest.mark.parametrize("name", NAMES)
def test_every_upsampler(name, upsampler):
    small = ({"num_feat": 12, "num_block": 1, "num_heads": 3} if name == "SCALESSwinIR"
             else {"num_feat": 8, "num_block": 1})
    for scale in (2, 3, 4):
        net = build_arch({"type": name, "upscale": scale, "upsampler": upsampler, **small})
        assert net(torch.rand(1, 3, 10, 13)).shape == (1, 3, 10 * scale, 13 * scale)


def test_image_skip_learns_a_residual_over_bilinear():
    net = build_arch({"type": "EBSRNet", "upscale": 2, "num_feat": 8, "num_block": 1, "image_skip": "bilinear",
                      "upsampler": "light"})
    with torch.no_grad():
        for p in net.upsample.parameters():
            p.zero_()
    x = torch.rand(1, 3, 8, 8)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(net(x), expected, atol=1e-6)


@pytest.mark.parametrize("bad", [
    {"type": "EBSRNet", "upsampler": "nope"},
    {"type": "EBSRNet", "upscale": 5},
    {"type": "EBSRNet", "shift": "dynamic", "channel": None},
    {"type": "EBSRNet", "spatial": "nope"},
    {"type": "SCALESNet", "channel": "nope"},
    {"type": "E2FIFNet", "act_quantizer": "nope"},
    {"type": "SCALESSwinIR", "num_feat": 60, "num_heads": 7},
    {"type": "Nope"},
])
def test_bad_options_are_refused_at_construction(bad):
    with pytest.raises(ValueError):
        build_arch(bad)


def test_complexity_matches_the_bbcu_table_for_msrresnet():
    from basicsr.archs.srresnet_arch import MSRResNet

    c = ebsr_basicsr.count_complexity(MSRResNet(upscale=4), lr_hw=(180, 320))
    assert c["binary_macs"] == 0 and c["binary_params"] == 0
    assert c["ops_g"] == pytest.approx(146.14, rel=0.01)
    assert c["params_k"] == pytest.approx(1515, rel=0.01)


def test_complexity_counts_binary_layers_at_one_64th_and_one_32nd():
    small = dict(num_feat=16, num_block=2, upscale=2, upsampler="light")
    e2fif = ebsr_basicsr.count_complexity(build_arch({"type": "E2FIFNet", **small}), lr_hw=(12, 10))
    pixels, body = 12 * 10, 2 * 2 * 16 * 16 * 9  # 2 blocks x 2 binary 3x3 convs of 16 -> 16
    assert e2fif["binary_macs"] == pixels * body
    assert e2fif["binary_params"] == body
    fp_weights = 3 * 16 * 9 + 16 * 16 * 9 + 16 * 12 * 9  # head, body-end, light upsampler
    assert e2fif["fp_params"] == fp_weights  # biases and BN left out
    assert e2fif["fp_macs"] == pixels * fp_weights
    assert e2fif["ops_g"] == pytest.approx((pixels * fp_weights + pixels * body / 64) / 1e9)
    assert e2fif["params_k"] == pytest.approx((fp_weights + body / 32) / 1e3)
    # BNN-SR keeps FP activations: the same convs are FP MACs, only the weights are binary
    bnn = ebsr_basicsr.count_complexity(build_arch({"type": "BNNSR", **small}), lr_hw=(12, 10))
    assert bnn["binary_macs"] == 0 and bnn["fp_macs"] == pixels * (fp_weights + body)
    assert bnn["binary_params"] == body
    # attention matmuls of the transformer are counted as FP MACs
    swin = build_arch({"type": "SCALESSwinIR", "num_feat": 12, "num_block": 1, "depth": 1, "num_heads": 3,
                       "upscale": 2})
    c = ebsr_basicsr.count_complexity(swin, lr_hw=(8, 8))
    assert c["binary_macs"] == 64 * (12 * 36 + 12 * 12 + 12 * 24 + 24 * 12)  # qkv, proj, fc1, fc2
    assert c["fp_macs"] >= 2 * 64 * 64 * 12  # q k^T and attn v
    # every window counts: 4 windows of 8x8 cost 4 times one (qkv and proj run on the windows
    # batched along the first dimension), and a 12x12 input is padded to 16x16 first
    four = ebsr_basicsr.count_complexity(swin, lr_hw=(16, 16))
    assert four["binary_macs"] == 4 * c["binary_macs"]
    assert four["fp_macs"] == 4 * c["fp_macs"]
    assert ebsr_basicsr.count_complexity(swin, lr_hw=(12, 12))["binary_macs"] == four["binary_macs"]
