"""scripts/compare_methods.py: the variants' options, --only, and the export + runtime scoring
of a trained checkpoint (the training itself is BasicSR's, tested in test_training.py)."""
import importlib.util
import inspect
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("basicsr")

from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402

from ebsr_basicsr.archs import ARCHS, build_arch  # noqa: E402
from ebsr_basicsr.runtime import Engine  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_methods.py"
spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
cm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cm)

SWIN = "SCALES SwinIR-light"


def test_every_variant_builds_from_its_options(tmp_path):
    for name, overrides in cm.VARIANTS.items():
        opt = cm.make_options(tmp_path, name, overrides, 100)
        assert opt["train"]["total_iter"] == 100 and "val" not in opt and "val" not in opt["datasets"]
        assert opt["name"] == cm._experiment(tmp_path, name).name
        assert {k: opt["network_g"][k] for k in overrides} == overrides
        if name != SWIN:
            build_arch(dict(opt["network_g"]))  # (the SwinIR one is built below)


def test_swinir_variant_is_swinir_light_on_window_sized_patches(tmp_path):
    opt = cm.make_options(tmp_path, SWIN, cm.VARIANTS[SWIN], 1000)
    net = build_arch(dict(opt["network_g"]))
    assert (net.upscale, len(net.stages), len(net.stages[0].blocks)) == (4, 4, 6)
    assert net.conv_first.out_channels == 60 and net.stages[0].blocks[0].attn.num_heads == 6
    assert opt["network_g"]["upsampler"] == "light"
    # the LR training patch is a whole number of windows: no reflect padding while training
    lr_patch = opt["datasets"]["train"]["gt_size"] // opt["scale"]
    assert lr_patch % inspect.signature(ARCHS["SCALESSwinIR"]).parameters["window_size"].default == 0
    # the rest of the recipe is the base file's, as for every other variant
    base = cm.make_options(tmp_path, "SCALES", cm.VARIANTS["SCALES"], 1000)
    assert opt["train"] == base["train"] and opt["datasets"] == base["datasets"]
    assert opt["manual_seed"] == base["manual_seed"] == 0


def test_only_refuses_an_unknown_variant(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cm.main(["--root", str(tmp_path), "--only", "SCALES Swin"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown variant 'SCALES Swin'" in err and repr(SWIN) in err
    assert not (tmp_path / "compare.jsonl").exists() and not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("network", [
    {"type": "SCALESNet", "num_feat": 8, "num_block": 1, "upscale": 4, "upsampler": "light"},
    {"type": "SCALESSwinIR", "num_feat": 12, "num_block": 1, "depth": 2, "num_heads": 2, "window_size": 8,
     "upscale": 4, "upsampler": "light"},
])
def test_evaluate_exports_and_scores_the_model_file(tmp_path, network):
    from skimage import data

    gt = tmp_path / "datasets" / "photos_val" / "GTmod12"
    gt.mkdir(parents=True)
    hr_images = {"astronaut": data.astronaut()[100:172, 150:234, ::-1],  # 72x84: LR 18x21, padded to 24x24
                 "coffee": data.coffee()[150:246, 200:296, ::-1]}
    for stem, img in hr_images.items():
        cv2.imwrite(str(gt / f"{stem}.png"), np.ascontiguousarray(img))
    torch.manual_seed(0)
    net = build_arch(dict(network))
    checkpoint = tmp_path / "net_g.pth"
    torch.save({"params": net.state_dict()}, checkpoint)

    result = cm.evaluate(tmp_path, "a variant", checkpoint, network)

    model_file = tmp_path / "models" / "compare_a_variant.ebsr"
    assert cm.model_path(tmp_path, "a variant") == model_file
    engine = Engine.load(model_file)
    assert engine.arch == network["type"] and engine.scale == 4
    model, bicubic = [], []
    for stem in sorted(hr_images):
        hr = cv2.imread(str(gt / f"{stem}.png"))
        lr = np.clip(np.rint(imresize(hr.astype(np.float64) / 255, 0.25) * 255), 0, 255).astype(np.uint8)
        up = np.clip(np.rint(imresize(lr.astype(np.float64) / 255, 4) * 255), 0, 255).astype(np.uint8)
        sr = engine.upscale(lr)
        model.append((calculate_psnr(sr, hr, 4, test_y_channel=True), calculate_ssim(sr, hr, 4, test_y_channel=True)))
        bicubic.append((calculate_psnr(up, hr, 4, test_y_channel=True), calculate_ssim(up, hr, 4, test_y_channel=True)))
    assert result["psnr"] == pytest.approx(np.mean([m[0] for m in model]), abs=1e-9)
    assert result["ssim"] == pytest.approx(np.mean([m[1] for m in model]), abs=1e-9)
    assert result["bicubic_psnr"] == pytest.approx(np.mean([b[0] for b in bicubic]), abs=1e-9)
    assert result["bicubic_ssim"] == pytest.approx(np.mean([b[1] for b in bicubic]), abs=1e-9)
    assert result["psnr"] != result["bicubic_psnr"]
    assert result["params_k"] > 0 and result["ops_g"] > 0


def test_time_measures_only_the_named_variants_and_stores_the_times(tmp_path, capsys):
    import json

    rows = []
    for name in ("SCALES", "E2FIF"):
        network = {"type": "SCALESNet" if name == "SCALES" else "E2FIFNet", "num_feat": 8, "num_block": 1,
                   "upscale": 4, "upsampler": "light"}
        models = cm._experiment(tmp_path, name) / "models"
        models.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save({"params": build_arch(dict(network)).state_dict()}, models / "net_g_latest.pth")
        rows.append({"name": name, "iters": 1000, "network_g": network, "psnr": 28.0, "ssim": 0.8,
                     "bicubic_psnr": 27.0, "bicubic_ssim": 0.7, "ops_g": 1.0, "params_k": 2.0})
    (tmp_path / "compare.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    cm.main(["--root", str(tmp_path), "--iters", "1000", "--time", "--only", "SCALES"])

    stored = {r["name"]: r for r in map(json.loads, (tmp_path / "compare.jsonl").read_text().splitlines())}
    assert 0 < stored["SCALES"]["runtime_ms_256"] < 60_000 and "runtime_ms_256" not in stored["E2FIF"]
    out = capsys.readouterr().out
    assert f"| SCALES | 28.00 / 0.8000 | +1.00 | 2 | 1.00 | {stored['SCALES']['runtime_ms_256']:.0f} |" in out
    assert "| E2FIF | 28.00 / 0.8000 | +1.00 | 2 | 1.00 | – |" in out
