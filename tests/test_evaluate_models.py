"""scripts/evaluate_models.py: models, bicubic and anchors scored per degradation, on two crops
of real photos with the embedded x2 model."""
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("basicsr")

from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402

from ebsr_basicsr.weights import available_scales, model_path  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_models.py"
spec = importlib.util.spec_from_file_location("evaluate_models", SCRIPT)
ev = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = ev  # dataclasses look their module up there
spec.loader.exec_module(ev)

if 2 not in available_scales("bicubic"):
    pytest.skip("no embedded x2 bicubic model in this installation", allow_module_level=True)
# the papers'-protocol model: a large, known gain on MATLAB-bicubic LR images
MODEL = model_path(2, "bicubic")
LABEL = MODEL.stem

DEGRADATIONS = "matlab,cubic"

FAKE_RUN_ANCHORS = '''
import sys
from pathlib import Path
import cv2
lr_dir, out_dir, s = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for name, flag in (("Cubic", cv2.INTER_CUBIC), ("Nearest", cv2.INTER_NEAREST)):
    (out_dir / name).mkdir(parents=True, exist_ok=True)
    for p in sorted(lr_dir.glob("*.png")):
        img = cv2.imread(str(p))
        cv2.imwrite(str(out_dir / name / p.name), cv2.resize(img, None, fx=s, fy=s, interpolation=flag))
'''


def fake_anchors(folder: Path, run_anchors: str = FAKE_RUN_ANCHORS) -> Path:
    """An anchors folder whose setup.sh prints this Python and whose run_anchors.py writes
    OpenCV bicubic ("Cubic") and nearest ("Nearest") upscales."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "setup.sh").write_text(f"#!/bin/sh\necho '{sys.executable}'\n")
    (folder / "run_anchors.py").write_text(run_anchors)
    return folder


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("hr")
    # odd sizes, so the mod-crop matters
    cv2.imwrite(str(folder / "astronaut.png"), data.astronaut()[100:197, 150:249, ::-1])
    cv2.imwrite(str(folder / "coffee.png"), data.coffee()[150:245, 200:301, ::-1])
    return folder


@pytest.fixture(scope="module")
def models():
    return ev.load_models([MODEL])


@pytest.fixture(scope="module")
def run(hr_dir, models, tmp_path_factory):
    """One evaluation without anchors, its LR folders written."""
    lr_root = tmp_path_factory.mktemp("lr")
    paths = ev.list_images(hr_dir)
    results = ev.evaluate(paths, models, ev.parse_degradations(DEGRADATIONS), None, lr_root, progress=False)
    return results, lr_root


def independent_lr(hr, method):
    """The LR image made without the degradations module."""
    x = hr.astype(np.float32) / np.float32(255)
    if method == "matlab":
        lr = imresize(x, 0.5)
    else:
        lr = cv2.resize(x, (hr.shape[1] // 2, hr.shape[0] // 2), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(lr * 255.0), 0, 255).astype(np.uint8)


def matlab_bicubic_up(lr):
    return np.clip(np.rint(imresize(lr.astype(np.float64) / 255, 2) * 255), 0, 255).astype(np.uint8)


def hr_crop(hr_dir, name):
    hr = cv2.imread(str(hr_dir / f"{name}.png"))
    return hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]


def table_cells(table):
    lines = table.splitlines()
    assert lines[1] == "|" + "---|" * (lines[0].count("|") - 1)
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_table_rows_and_columns(run):
    results, _ = run
    assert list(results["scales"]) == ["x2"]
    rows = table_cells(ev.format_table(results["scales"]["x2"]))
    assert rows[0] == ["degradation", "bicubic PSNR (dB)", f"{LABEL} gain"]
    assert [r[0] for r in rows[1:]] == ["matlab", "cubic"]
    mean = results["scales"]["x2"]["degradations"]["matlab"]
    assert rows[1][1] == f"{mean['bicubic']['mean']['psnr']:.2f}"
    gain = mean["models"][LABEL]["mean"]["psnr"] - mean["bicubic"]["mean"]["psnr"]
    assert rows[1][2] == f"{gain:+.2f}"

    per_image = table_cells(ev.format_table(results["scales"]["x2"], "ssim", per_image=True))
    assert per_image[0][1] == "bicubic SSIM"
    assert [r[0] for r in per_image[1:]] == ["matlab · astronaut", "matlab · coffee", "**matlab** (mean)",
                                             "cubic · astronaut", "cubic · coffee", "**cubic** (mean)"]


def test_bicubic_matches_an_independent_computation(run, hr_dir):
    results, _ = run
    for method in ("matlab", "cubic"):
        entry = results["scales"]["x2"]["degradations"][method]["bicubic"]
        for name in ("astronaut", "coffee"):
            hr = hr_crop(hr_dir, name)
            up = matlab_bicubic_up(independent_lr(hr, method))
            assert entry["per_image"][name]["psnr"] == pytest.approx(calculate_psnr(up, hr, 2, test_y_channel=True),
                                                                     abs=1e-6)
            assert entry["per_image"][name]["ssim"] == pytest.approx(calculate_ssim(up, hr, 2, test_y_channel=True),
                                                                     abs=1e-8)
        assert entry["mean"]["psnr"] == pytest.approx(np.mean([v["psnr"] for v in entry["per_image"].values()]))


def test_embedded_x2_model_beats_bicubic_on_matlab(run):
    row = run[0]["scales"]["x2"]["degradations"]["matlab"]
    assert row["models"][LABEL]["mean"]["psnr"] - row["bicubic"]["mean"]["psnr"] > 1.0
    assert row["models"][LABEL]["mean"]["ssim"] > row["bicubic"]["mean"]["ssim"]


def test_json_round_trips(run, tmp_path):
    results, _ = run
    ev.save_json(results, tmp_path / "r.json")
    loaded = ev.load_json(tmp_path / "r.json")
    assert loaded == results
    assert ev.format_report(loaded, per_image=True, ssim=True) == ev.format_report(results, per_image=True, ssim=True)


def test_lr_folders_in_basicsr_layout(run, hr_dir):
    results, lr_root = run
    assert sorted(p.name for p in lr_root.iterdir()) == ["GTmod2", "LR_cubic_x2", "LR_matlab_x2"]
    for name in ("astronaut", "coffee"):
        hr = hr_crop(hr_dir, name)
        assert np.array_equal(cv2.imread(str(lr_root / "GTmod2" / f"{name}.png")), hr)
        for method in ("matlab", "cubic"):
            lr = cv2.imread(str(lr_root / f"LR_{method}_x2" / f"{name}.png"))
            assert lr.shape == (hr.shape[0] // 2, hr.shape[1] // 2, 3)
            # the written LR image is the one that was scored
            psnr = calculate_psnr(matlab_bicubic_up(lr), hr, 2, test_y_channel=True)
            entry = results["scales"]["x2"]["degradations"][method]["bicubic"]["per_image"][name]
            assert psnr == pytest.approx(entry["psnr"], abs=1e-9)


def test_anchors_are_scored_beside_the_models(hr_dir, models, tmp_path):
    anchors = ev.Anchors.prepare(fake_anchors(tmp_path / "anchors"))
    assert anchors.python == sys.executable
    results = ev.evaluate(ev.list_images(hr_dir), models, ev.parse_degradations("matlab"), anchors, progress=False)
    scale = results["scales"]["x2"]
    assert scale["anchors"] == ["Cubic", "Nearest"]
    row = scale["degradations"]["matlab"]
    for name in ("astronaut", "coffee"):
        hr = hr_crop(hr_dir, name)
        lr = independent_lr(hr, "matlab")
        up = cv2.resize(lr, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        assert row["anchors"]["Cubic"]["per_image"][name]["psnr"] == pytest.approx(
            calculate_psnr(up, hr, 2, test_y_channel=True), abs=1e-6)

    rows = table_cells(ev.format_table(scale))
    assert rows[0] == ["degradation", "bicubic PSNR (dB)", f"{LABEL} gain", "Cubic gain", "Nearest gain",
                       "best anchor", "best anchor gain", f"{LABEL} − best anchor"]
    base = row["bicubic"]["mean"]["psnr"]
    cubic, model = row["anchors"]["Cubic"]["mean"]["psnr"], row["models"][LABEL]["mean"]["psnr"]
    assert cubic > row["anchors"]["Nearest"]["mean"]["psnr"]
    assert rows[1][5:] == ["Cubic", f"{cubic - base:+.2f}", f"{model - cubic:+.2f}"]


def test_failing_anchor_run_is_a_clear_error(hr_dir, models, tmp_path):
    folder = fake_anchors(tmp_path / "anchors", "raise SystemExit('no model files here')\n")
    anchors = ev.Anchors.prepare(folder)
    with pytest.raises(ev.EvalError, match="run_anchors.py failed at x2.*no model files here"):
        ev.evaluate(ev.list_images(hr_dir), models, ev.parse_degradations("matlab"), anchors, progress=False)


def test_find_anchors(tmp_path, capsys):
    missing = tmp_path / "shared" / "anchors"
    assert ev.find_anchors(None, False, default=missing) is None
    assert capsys.readouterr().err.strip() == (f"anchors skipped: no {missing} "
                                               "(give --anchors DIR, or --no-anchors to silence this)")
    assert ev.find_anchors(None, True, default=missing) is None
    assert capsys.readouterr().err == ""
    with pytest.raises(ev.EvalError, match="no run_anchors.py and setup.sh"):
        ev.find_anchors(tmp_path, False, default=missing)
    fake_anchors(missing)
    assert ev.find_anchors(None, False, default=missing) == missing


def test_command_line(hr_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for p in hr_dir.iterdir():
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "r.json"
    assert ev.main([str(images), "--scales", "2", "--degradations", "matlab", "--no-anchors", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped broken.png: not an image file" in captured.err
    results = ev.load_json(out)
    assert results["images"] == ["astronaut", "coffee"] and list(results["skipped"]) == ["broken.png"]
    assert captured.out.strip() == ev.format_report(results).strip()


@pytest.mark.parametrize("argv, message", [
    (["--model", "MISSING.ebsr"], "cannot load model: MISSING.ebsr: cannot read"),
    (["--model", "MISSING.ebsr", "--scales", "2"], "with --model each model is scored at its own scale"),
    (["--scales", "5"], "scale must be one of"),
])
def test_user_errors_exit_2(hr_dir, tmp_path, capsys, argv, message):
    bad = tmp_path / "MISSING.ebsr"
    argv = [str(bad) if a == "MISSING.ebsr" else a for a in argv]
    assert ev.main([str(hr_dir), "--no-anchors", *argv]) == 2
    err = capsys.readouterr().err
    assert "evaluate_models: error:" in err and message.replace("MISSING.ebsr", str(bad)) in err
    assert "Traceback" not in err


def test_bad_degradation_is_a_usage_error(hr_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ev.main([str(hr_dir), "--degradations", "matlab,bicubic"])
    assert exit_info.value.code == 2
    assert "unknown downscale 'bicubic'" in capsys.readouterr().err


def test_comparison_picture_shows_each_model_on_the_chosen_degradation(hr_dir, tmp_path):
    """scripts/make_comparison.py: input, bicubic, one panel per --model, original, side by side."""
    spec = importlib.util.spec_from_file_location("make_comparison", SCRIPT.parent / "make_comparison.py")
    mc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc)
    out = tmp_path / "pics" / "cmp.png"
    mc.main([str(hr_dir / "astronaut.png"), str(out), "--scale", "2", "--degradation", "cubic+jpeg75",
             "--model", "bicubic", "--model", str(MODEL), "--crop", "4", "6", "30", "36"])
    img = cv2.imread(str(out))
    assert img.shape == (60, 5 * 72 + 4 * 4, 3)  # input, bicubic, two models, original
    hr = cv2.imread(str(hr_dir / "astronaut.png"))
    original = img[:, -72:]
    assert np.abs(original[45:].astype(int) - hr[8 + 45:68, 12:84].astype(int)).max() == 0  # below the labels
    with pytest.raises(SystemExit, match="cannot read"):
        mc.main([str(tmp_path / "missing.png"), str(out)])


def test_model_option_repeats_and_lists():
    parser = ev.build_parser()
    a, b, c = Path("a.ebsr"), Path("b.ebsr"), Path("c.ebsr")
    assert parser.parse_args(["hr", "--model", "a.ebsr", "--model", "b.ebsr", "c.ebsr"]).model == [a, b, c]
    assert parser.parse_args(["hr"]).model is None
