"""benchmarks/profile_swinir.py: every part of a Swin model's run is timed once, the shares add
up, and the engine is left as it was."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from helpers import export_tiny_model  # noqa: E402

from ebsr_basicsr.runtime import Engine  # noqa: E402
from ebsr_basicsr.runtime.engine import BinaryUnit  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_swinir.py"
sys.path.insert(0, str(SCRIPT.parent))  # its helpers module, as when run from there
spec = importlib.util.spec_from_file_location("profile_swinir", SCRIPT)
ps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ps)

STAGES, DEPTH = 2, 2
SWIN = {"type": "SCALESSwinIR", "num_feat": 12, "num_block": STAGES, "depth": DEPTH, "num_heads": 2,
        "window_size": 4, "upscale": 2, "upsampler": "light"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("m") / "swin.ebsr", SWIN)


def test_profile_counts_every_part_and_leaves_the_engine_as_it_was(model):
    engine = Engine.load(model)
    image = ps.photo(20)  # not a multiple of the window: padded
    before = engine.run(image)
    ops = list(engine._ops)
    times, calls, total, line_times, timer = ps.profile(engine, image, repeats=2)

    blocks = STAGES * DEPTH
    assert calls["attention (QK^T, bias/mask, softmax, AV, shifts, adds)"] == blocks
    for part in ("pack signs", "XNOR/popcount", "re-scalings", "rest of the unit"):
        assert calls[f"binary linear: {part}"] == 4 * blocks, part
    assert calls["GELU"] == blocks
    assert calls["layer norm"] == 2 * blocks + 1  # two per block and the body's last
    assert calls["window partition/reverse"] == 2 * blocks
    assert calls["other: PadReflect"] == 1
    assert all(t >= -1e-4 for t in times.values())
    assert 0.5 * total < sum(times.values()) <= total * 1.001
    # the attention row split by line: the softmax's exp is one of them, and the lines add up
    # to no more than the row (the row also holds the block's call overhead)
    assert any("np.exp" in timer.source(line) for line in line_times)
    attention = times["attention (QK^T, bias/mask, softmax, AV, shifts, adds)"]
    assert sum(line_times.values()) <= attention * 1.05 + 1e-3

    assert engine._ops == ops
    swin = [op for op, _, _ in ops if type(op).__name__ == "SwinBlock"]
    assert len(swin) == blocks
    assert all(type(getattr(op, u)) is BinaryUnit and "_factors" not in vars(getattr(op, u))
               for op in swin for u in ps.UNIT_NAMES)
    np.testing.assert_array_equal(engine.run(image), before)

    report = ps.format_report(times, calls, total)
    assert "| **total** |" in report and "| binary linear |" in report
    assert "np.exp" in ps.format_lines(line_times, timer, total, min_share=0.0)


def test_cli_prints_the_cpu_and_shares(model, capsys):
    assert ps.main([str(model), "--size", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert f"SCALESSwinIR x2, 16x16 input, 1 thread(s), best of 1; CPU: {ps.cpu_model()}" in out
    assert "%" in out and "Swin block line" in out


def test_cli_refuses_a_bad_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.ebsr"
    bad.write_bytes(b"not a model")
    assert ps.main([str(bad)]) == 2
    assert "profile_swinir: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ps.main([str(bad), "--size", "0"])
