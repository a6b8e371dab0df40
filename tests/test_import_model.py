"""A runtime model file back into a trainable network (ebsr_basicsr.training.import_model)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ebsr_basicsr.archs import build_arch  # noqa: E402
from ebsr_basicsr.runtime import save_model  # noqa: E402
from ebsr_basicsr.runtime.format import load_model  # noqa: E402
from ebsr_basicsr.training.export import export_network  # noqa: E402
from ebsr_basicsr.training.import_model import ModelImportError, main, network_from_model  # noqa: E402

from test_runtime import photo, train_a_few_steps  # noqa: E402

CASES = [
    {"type": "SCALESNet", "upscale": 2, "num_feat": 16, "num_block": 2},  # RGB, channel branch, fp upsampler
    {"type": "SCALESNet", "upscale": 4, "num_feat": 16, "num_block": 2, "num_in_ch": 1, "num_out_ch": 1,
     "upsampler": "light", "image_skip": "bilinear", "channel": None, "body_end": None},  # the robust layout
    {"type": "EBSRNet", "upscale": 2, "num_feat": 16, "num_block": 2},
]


def export_to(path, net, opt):
    header, tensors = export_network(net, dict(opt))
    save_model(path, header, tensors)
    return header, tensors


@pytest.mark.parametrize("opt", CASES, ids=lambda o: f"{o['type']}_x{o['upscale']}_{o.get('num_in_ch', 3)}ch")
def test_imported_network_computes_what_the_file_computes(tmp_path, opt):
    net = train_a_few_steps(build_arch(dict(opt)), opt["upscale"]) if opt.get("num_in_ch", 3) == 3 \
        else build_arch(dict(opt)).eval()
    header, tensors = export_to(tmp_path / "a.ebsr", net, opt)
    imported, network_g = network_from_model(tmp_path / "a.ebsr")
    assert network_g == header["network_g"]
    # exporting the imported network gives the same file back: signs bit for bit, factors to rounding
    header2, tensors2 = export_network(imported, dict(network_g))
    assert header2["graph"] == header["graph"]
    for key, value in tensors.items():
        if value.dtype == np.uint64:
            assert np.array_equal(tensors2[key], value), key
        else:
            np.testing.assert_allclose(tensors2[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    # and the imported network's eval output is the original's
    x = torch.from_numpy(photo(24, 28)).permute(2, 0, 1)[None]
    if opt.get("num_in_ch", 3) == 1:
        x = x.mean(1, keepdim=True)
    with torch.no_grad():
        np.testing.assert_allclose(imported(x).numpy(), net(x).numpy(), atol=2e-5)


def test_imported_latent_weights_sit_inside_the_ste_window(tmp_path):
    opt = CASES[0]
    export_to(tmp_path / "a.ebsr", train_a_few_steps(build_arch(dict(opt)), 2), opt)
    imported, _ = network_from_model(tmp_path / "a.ebsr")
    latent = [m.weight for m in imported.modules() if hasattr(m, "quantizer") and hasattr(m, "weight")]
    assert latent and all(float(w.detach().abs().max()) <= 1.0 for w in latent)


def test_layers_whose_factors_are_folded_are_refused(tmp_path):
    opt = {"type": "E2FIFNet", "upscale": 2, "num_feat": 16, "num_block": 2}  # BatchNorm folded into mul
    export_to(tmp_path / "e2fif.ebsr", build_arch(dict(opt)).eval(), opt)
    with pytest.raises(ModelImportError, match="BatchNorm"):
        network_from_model(tmp_path / "e2fif.ebsr")
    assert main([str(tmp_path / "e2fif.ebsr"), str(tmp_path / "out.pth")]) == 1
    assert not (tmp_path / "out.pth").exists()


def test_command_writes_a_checkpoint_that_loads_without_pickle(tmp_path, capsys):
    opt = CASES[1]
    net = build_arch(dict(opt)).eval()
    export_to(tmp_path / "a.ebsr", net, opt)
    assert main([str(tmp_path / "a.ebsr"), str(tmp_path / "net_g.pth")]) == 0
    state = torch.load(tmp_path / "net_g.pth", weights_only=True)
    fresh = build_arch(dict(opt))
    fresh.load_state_dict(state["params_ema"])
    header, _ = load_model(tmp_path / "a.ebsr")
    assert export_network(fresh.eval(), dict(opt))[0]["graph"] == header["graph"]
    assert main([]) == 2 and "import_model" in capsys.readouterr().err


def test_command_reports_unreadable_or_damaged_files_without_a_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "missing.ebsr"), str(tmp_path / "out.pth")]) == 1
    assert "missing.ebsr: cannot read" in capsys.readouterr().err
    (tmp_path / "junk.ebsr").write_bytes(b"not a model")
    assert main([str(tmp_path / "junk.ebsr"), str(tmp_path / "out.pth")]) == 1
    assert "junk.ebsr: not an ebsr-basicsr model" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
    opt = CASES[1]
    export_to(tmp_path / "a.ebsr", build_arch(dict(opt)).eval(), opt)
    assert main([str(tmp_path / "a.ebsr"), str(tmp_path / "no" / "dir" / "out.pth")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "BasicSR checkpoint" in capsys.readouterr().out
