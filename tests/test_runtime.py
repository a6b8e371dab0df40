"""Export + bitwise runtime against PyTorch (the model file's defences: test_model_file.py)."""
import subprocess
import sys

import numpy as np
import pytest

from ebsr_basicsr.runtime import Engine
from ebsr_basicsr.runtime.swin import gelu, gelu_ref

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from click.testing import CliRunner  # noqa: E402

from ebsr_basicsr.archs import build_arch  # noqa: E402
from ebsr_basicsr.cli.export import main as export_main  # noqa: E402

SMALL = {
    "BNNSR": {"num_feat": 16, "num_block": 2},
    "E2FIFNet": {"num_feat": 16, "num_block": 2},
    "EBSRNet": {"num_feat": 16, "num_block": 2},
    "SCALESNet": {"num_feat": 16, "num_block": 2},
    "SCALESSwinIR": {"num_feat": 24, "num_block": 1, "depth": 2, "num_heads": 3, "window_size": 8},
}


def photo(h=48, w=56, offset=(100, 180)):
    """A crop of a real photograph (scikit-image's astronaut), RGB float32 in [0, 1]."""
    skdata = pytest.importorskip("skimage.data")
    img = skdata.astronaut()[offset[0]:offset[0] + h, offset[1]:offset[1] + w]
    return np.ascontiguousarray(img, dtype=np.float32) / 255.0


def train_a_few_steps(net, scale, steps=6, seed=0):
    """A few Adam steps on bicubic-downscaled crops of a real photo, like real training
    (moves BN statistics, thresholds, layer scales and re-scalings off their init)."""
    torch.manual_seed(seed)
    hr = torch.from_numpy(photo(96, 96, (60, 150))).permute(2, 0, 1)[None]
    lr = torch.nn.functional.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    net.train()
    for _ in range(steps):
        loss = (net(lr) - hr[:, :, :lr.shape[2] * scale, :lr.shape[3] * scale]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def psnr_uint8(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def export_state_via_cli(tmp_path, state, network_opt, *args):
    """Save ``state`` as a checkpoint and run ``ebsr-export`` on it into ``tmp_path/model.ebsr``."""
    ckpt = tmp_path / "net_g.pth"
    torch.save(state, ckpt)
    opt_file = tmp_path / "opt.yml"
    opt_file.write_text(yaml.safe_dump({"name": "t", "network_g": network_opt}))
    return CliRunner().invoke(export_main, [str(ckpt), "-opt", str(opt_file), "-o", str(tmp_path / "model.ebsr"),
                                            *args])


def export_via_cli(tmp_path, net, network_opt):
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # as a DDP-trained checkpoint
    result = export_state_via_cli(tmp_path, {"params": {k: v * 0 for k, v in state.items()}, "params_ema": state},
                                  network_opt)
    assert result.exit_code == 0, result.output
    assert "smaller than its FP32 weights" in result.output
    return tmp_path / "model.ebsr"


def torch_reference(net, bgr):
    """``net``'s eval output for a uint8 BGR image: the float RGB map and the uint8 BGR image."""
    with torch.no_grad():
        x = torch.from_numpy(bgr[:, :, ::-1].astype(np.float32) / 255).permute(2, 0, 1)[None]
        ref_float = net(x)[0].permute(1, 2, 0).numpy()
    return ref_float, np.clip(np.rint(ref_float * 255), 0, 255).astype(np.uint8)[:, :, ::-1]


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_exported_model_matches_pytorch_eval(tmp_path, name, scale):
    network_opt = {"type": name, "upscale": scale, **SMALL[name]}
    net = train_a_few_steps(build_arch(network_opt), scale)
    model = export_via_cli(tmp_path, net, network_opt)
    engine = Engine.load(model)
    assert engine.scale == scale and engine.arch == name
    lr = photo()
    bgr = np.ascontiguousarray((lr[:, :, ::-1] * 255).round().astype(np.uint8))
    ours = engine.upscale(bgr)
    ref_float, ref = torch_reference(net, bgr)
    assert ours.shape == ref.shape == (lr.shape[0] * scale, lr.shape[1] * scale, 3)
    assert psnr_uint8(ours, ref) >= 50
    # the float outputs agree closely too
    out = engine.run(bgr[:, :, ::-1].astype(np.float32) / 255)
    assert np.mean(np.abs(out - ref_float)) < 1e-4


def test_binary_weights_take_one_bit(tmp_path):
    network_opt = {"type": "EBSRNet", "upscale": 4, "num_feat": 64, "num_block": 4, "upsampler": "light"}
    net = build_arch(network_opt).eval()
    model = export_via_cli(tmp_path, net, network_opt)
    fp32 = sum(t.numel() * 4 for t in net.state_dict().values() if t.is_floating_point())
    binary = sum(m.weight.numel() for m in net.modules() if type(m).__name__ == "BinaryConv2d")
    size = model.stat().st_size
    assert size < fp32 - binary * 4 + binary / 8 + 64 * 1024  # every binary weight stored as a bit
    assert size < fp32 / 2


def test_fp_activation_layers_are_reported(tmp_path):
    network_opt = {"type": "BNNSR", "upscale": 2, "num_feat": 8, "num_block": 1}
    engine = Engine.load(export_via_cli(tmp_path, build_arch(network_opt), network_opt))
    assert any("full-precision activations" in note for note in engine.header["notes"])


def test_runtime_never_imports_torch_or_basicsr(tmp_path):
    network_opt = {"type": "SCALESNet", "upscale": 2, **SMALL["SCALESNet"]}
    model = export_via_cli(tmp_path, build_arch(network_opt), network_opt)
    code = (
        "import sys, numpy as np\n"
        "from ebsr_basicsr.runtime import Engine\n"
        f"e = Engine.load({str(model)!r})\n"
        "out = e.upscale(np.zeros((9, 11, 3), np.uint8))\n"
        "assert out.shape == (18, 22, 3), out.shape\n"
        "bad = [m for m in ('torch', 'basicsr', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_refuses_mismatched_options(tmp_path):
    net = build_arch({"type": "EBSRNet", "upscale": 2, "num_feat": 8, "num_block": 1})
    ckpt = tmp_path / "c.pth"
    torch.save({"params": net.state_dict()}, ckpt)
    opt = tmp_path / "o.yml"
    opt.write_text(yaml.safe_dump({"network_g": {"type": "EBSRNet", "upscale": 2, "num_feat": 8, "num_block": 2}}))
    result = CliRunner().invoke(export_main, [str(ckpt), "-opt", str(opt), "-o", str(tmp_path / "m.ebsr")])
    assert result.exit_code == 1 and "does not match EBSRNet" in result.output
    assert not (tmp_path / "m.ebsr").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(export_main, [str(tmp_path / "junk.pth"), "-opt", str(opt)])
    assert result.exit_code == 1 and "not a readable torch checkpoint" in result.output
    opt.write_text("name: no network here\n")
    result = CliRunner().invoke(export_main, [str(ckpt), "-opt", str(opt)])
    assert result.exit_code == 2 and "no network_g" in result.output


def test_export_reports_unreadable_checkpoints_as_export_errors(tmp_path):
    from ebsr_basicsr.training.export import ExportError, build_from_checkpoint

    with pytest.raises(ExportError, match="missing.pth: no such file"):
        build_from_checkpoint(tmp_path / "missing.pth", {"type": "EBSRNet", "upscale": 2, "num_feat": 8})


def _runtime_psnr_against(tmp_path, net):
    bgr = np.ascontiguousarray((photo()[:, :, ::-1] * 255).round().astype(np.uint8))
    return psnr_uint8(Engine.load(tmp_path / "model.ebsr").upscale(bgr), torch_reference(net, bgr)[1])


def test_export_repairs_ema_batchnorm_statistics(tmp_path, caplog):
    """A params_ema written by BasicSR's EMA without the buffer fix has BatchNorm statistics
    at their init values; export takes them from params instead."""
    network_opt = {"type": "E2FIFNet", "upscale": 2, **SMALL["E2FIFNet"]}
    net = train_a_few_steps(build_arch(network_opt), 2)
    trained = net.state_dict()
    stale = {k: (torch.zeros_like(v) if k.endswith(("running_mean", "num_batches_tracked"))
                 else torch.ones_like(v) if k.endswith("running_var") else v) for k, v in trained.items()}
    assert any(k.endswith("num_batches_tracked") for k in stale)
    with caplog.at_level("WARNING"):
        result = export_state_via_cli(tmp_path, {"params": trained, "params_ema": stale}, network_opt)
    assert result.exit_code == 0, result.output
    assert "untrained statistics" in caplog.text
    assert _runtime_psnr_against(tmp_path, net) >= 50


def test_export_param_key(tmp_path):
    network_opt = {"type": "SCALESNet", "upscale": 2, **SMALL["SCALESNet"]}
    net = train_a_few_steps(build_arch(network_opt), 2)
    other = {k: v * 0 for k, v in net.state_dict().items()}
    result = export_state_via_cli(tmp_path, {"params": net.state_dict(), "params_ema": other}, network_opt,
                                  "--param-key", "params")
    assert result.exit_code == 0, result.output
    assert _runtime_psnr_against(tmp_path, net) >= 50
    result = export_state_via_cli(tmp_path, {"params": net.state_dict()}, network_opt, "--param-key", "params_ema")
    assert result.exit_code == 1 and "has no 'params_ema' weights (it has: params)" in result.output


def test_export_refuses_what_the_runtime_cannot_run(tmp_path):
    """Ops are emitted through the runtime's op schema: a network the engine would refuse
    is an export error, and nothing is written."""
    from ebsr_basicsr.training.export import ExportError, GraphBuilder

    network_opt = {"type": "EBSRNet", "upscale": 8, "num_feat": 8, "num_block": 1}
    net = build_arch(network_opt)
    result = export_state_via_cli(tmp_path, {"params": net.state_dict()}, network_opt)
    assert result.exit_code == 1 and "runtime cannot run this network: header.scale: 8" in result.output
    assert not (tmp_path / "model.ebsr").exists()
    g = GraphBuilder(3)
    with pytest.raises(ExportError, match=r"op 0 \(conv2d\)\.stride: 2 is out of range"):
        g.conv(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), "input")
    with pytest.raises(ExportError, match="padding 0 is not kernel 3 // 2"):
        g.conv(torch.nn.Conv2d(3, 8, 3, padding=0), "input")
    assert g.ops == []


def test_gelu_matches_reference_and_torch():
    x = np.linspace(-6, 6, 7 * 11 * 13, dtype=np.float32).reshape(7, 11, 13)
    assert np.allclose(gelu(x), gelu_ref(x), atol=1e-6)
    assert np.allclose(gelu(x), torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), atol=1e-6)
