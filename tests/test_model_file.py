"""The model file's defences: format, op schema, hostile files, and a mutation fuzzer.

Needs neither torch nor basicsr: the models come from ``ebsr_basicsr/weights`` and from
:func:`tiny_model` (built here with NumPy); with torch installed, the fuzzer also mutates
small exported networks of every kind.
"""
import copy
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ebsr_basicsr.packing import pack_weights
from ebsr_basicsr.runtime import Engine, ModelFileError
from ebsr_basicsr.runtime import engine as engine_module
from ebsr_basicsr.runtime.format import FORMAT_VERSION, decode_model, encode_model, load_model, save_model
from ebsr_basicsr.runtime.ops_schema import OPS
from ebsr_basicsr.weights import MODELS, model_path

from helpers import export_tiny_model, photo
from model_fuzz import assemble, dump, split

HERE = Path(__file__).resolve().parent
FUZZ_CASES = int(os.environ.get("EBSR_FUZZ_CASES", "2500"))
FUZZ_SEED = int(os.environ.get("EBSR_FUZZ_SEED", "0"))


def tiny_model(feat=8, scale=2):
    """A small valid model built with NumPy: a binary unit with every option the first one
    lacks (zero padding, threshold, conv spatial and MLP channel re-scaling with a shift,
    identity shortcut), then a binary upsampling unit (shuffle, nearest shortcut, absmean,
    affine). ``feat`` channels, not a multiple of 64."""
    rng = np.random.default_rng(0)
    tensors = {}

    def t(name, *shape):
        tensors[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        return name

    def bits(name, cin, cout):
        tensors[name] = pack_weights(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32))
        return name

    unit = dict(kind="conv", kernel=3, fp_activations=False)
    up = feat * scale * scale
    graph = [
        dict(op="normalize", **{"in": ["input"]}, out="v1", mean=[0.45, 0.44, 0.40], range=1.0),
        dict(op="conv2d", **{"in": ["v1"]}, out="v2", weight=t("w0", feat, 3, 3, 3), bias=t("b0", feat), stride=1,
             padding=1, shuffle=1),
        dict(op="binary_unit", **{"in": ["v2"]}, out="v3", **unit, in_channels=feat, out_channels=feat, pad_value=0.0,
             neg_slope=0.1, shuffle=1, shortcut="identity", w_bits=bits("u1.w", feat, feat), mul=t("u1.m", feat),
             bias=t("u1.b", feat), threshold=t("u1.t", feat),
             spatial={"mode": "conv", "kernel": 3, "weight": t("u1.sw", feat), "bias": t("u1.sb", 1)},
             channel={"mode": "mlp", "shift": True, "fc1_w": t("u1.f1w", 4, feat), "fc1_b": t("u1.f1b", 4),
                      "fc2_w": t("u1.f2w", 2 * feat, 4), "fc2_b": t("u1.f2b", 2 * feat)}),
        dict(op="binary_unit", **{"in": ["v3"]}, out="v4", **unit, in_channels=feat, out_channels=up, pad_value=1.0,
             neg_slope=None, shuffle=scale, shortcut="nearest", w_bits=bits("u2.w", feat, up), mul=t("u2.m", up),
             bias=t("u2.b", up), spatial={"mode": "absmean", "kernel": 3},
             channel={"mode": "affine", "shift": False, "weight": t("u2.cw", up), "bias": t("u2.cb", up)}),
        dict(op="conv2d", **{"in": ["v4"]}, out="v5", weight=t("w1", 3, feat, 3, 3), bias=t("b1", 3), stride=1,
             padding=1, shuffle=1),
        dict(op="denormalize", **{"in": ["v5"]}, out="v6", range=1.0, mean=[0.45, 0.44, 0.40]),
    ]
    header = {"arch": "Tiny", "scale": scale, "in_channels": 3, "graph": graph, "output": "v6",
              "version": FORMAT_VERSION}
    return header, tensors


@pytest.fixture
def good_file(tmp_path):
    """The shipped RGB x2 model (the hostile edits below name its ops and shapes)."""
    path = tmp_path / "good.ebsr"
    path.write_bytes(model_path(2, "bicubic").read_bytes())
    return path


def rewrite(path: Path, edit, name="hostile.ebsr") -> Path:
    """A copy of ``path`` whose header ``edit(header)`` changed, checksum recomputed."""
    header, data = split(path.read_bytes())
    edit(header)
    out = path.with_name(name)
    out.write_bytes(assemble(dump(header), data))
    return out


def _ops(header, kind):
    return [op for op in header["graph"] if op["op"] == kind]


def _by_offset(header):
    return sorted(header["tensors"].values(), key=lambda t: t["offset"])


# ------------------------------------------------------------------------------ the format
def test_format_round_trip(tmp_path):
    tensors = {"a": np.arange(5, dtype=np.float32), "b": np.arange(6, dtype=np.uint64).reshape(2, 3),
               "empty": np.zeros((0, 4), np.float32)}
    path = tmp_path / "m.ebsr"
    save_model(path, {"hello": "world"}, tensors)
    header, back = load_model(path)
    assert header == {"hello": "world"}
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and np.array_equal(back[k], tensors[k])


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "truncated"),
    (lambda raw: raw[:10], "truncated"),
    (lambda raw: raw + b"\0", "trailing bytes"),
    (lambda raw: b"NOTAMODL" + raw[8:], "bad magic"),
    (lambda raw: raw[:8] + struct.pack("<I", 99) + raw[12:], "version 99 is not supported"),
    (lambda raw: raw[:-100] + bytes([raw[-100] ^ 1]) + raw[-99:], "checksum mismatch"),
    (lambda raw: raw[:20] + b"x" + raw[21:], "damaged header"),
    (lambda raw: raw[:40] + b"#" + raw[41:], "damaged header|checksum mismatch"),
    (lambda raw: raw[:12] + struct.pack("<Q", 2 ** 63) + raw[20:], "damaged header .it claims"),
    (lambda raw: b"", "not an ebsr-basicsr model"),
])
def test_damaged_files_are_refused_with_a_reason(good_file, damage, message):
    bad = good_file.with_name("bad.ebsr")
    bad.write_bytes(damage(good_file.read_bytes()))
    with pytest.raises(ModelFileError, match=message) as err:
        Engine.load(bad)
    assert str(err.value).startswith(f"{bad}: ")


def test_unreadable_paths_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        Engine.load(tmp_path / "missing.ebsr")
    with pytest.raises(ModelFileError, match="directory"):
        Engine.load(tmp_path)


def test_checksum_covers_header_and_data(good_file):
    raw = good_file.read_bytes()
    assert hashlib.sha256(raw[:-32]).digest() == raw[-32:]
    header_len = struct.unpack_from("<Q", raw, 12)[0]
    header = json.loads(raw[20:20 + header_len])
    assert header["arch"] == "SCALESNet" and header["scale"] == 2 and header["version"] == FORMAT_VERSION == 1
    assert header["network_g"]["upscale"] == 2


# ------------------------------------------------------------------------------ hostile files
def _negative_offset(h):
    _by_offset(h)[-1]["offset"] = -64


def _overlap(h):
    first, second = _by_offset(h)[:2]
    first["offset"] = second["offset"]


def _swap_conv_weights(h):
    a, b = _ops(h, "conv2d")[:2]
    a["weight"], b["weight"] = b["weight"], a["weight"]


def _set(path, value):
    """An edit setting the value at ``path`` (keys; ``("unit", k)`` is the first binary unit's)."""
    def edit(h):
        node = _ops(h, "binary_unit")[0] if path[0] == "unit" else h
        for key in path[1:-1] if path[0] == "unit" else path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


HOSTILE = {  # what a crafted file (checksum recomputed) changes, and the reason it is refused for
    "negative offset": (_negative_offset, "has offset -64, not an integer in 0"),
    "shape -1": (lambda h: _by_offset(h)[0].update(shape=[-1]), r"has shape \[-1\]"),
    "overlap": (_overlap, "overlap"),
    "shape 2**70": (lambda h: _by_offset(h)[0].update(shape=[2 ** 70], nbytes=2 ** 72), r"has shape \[1180591"),
    "table as a list": (lambda h: h.update(tensors=list(h["tensors"].values())), "tensor table .not a JSON object"),
    "deep nesting": (lambda h: h.update(network_g="@@DEEP@@"), "nested more than 32 levels"),
    "NaN": (lambda h: h.update(network_g=float("nan")), "damaged header .NaN is not a number"),
    "repeated key": (lambda h: h.update(network_g="@@TWICE@@"), "a key appears twice"),
    "dtype": (lambda h: _by_offset(h)[0].update(dtype="float64"), "dtype 'float64', not one of"),
    "wrong weight shapes": (_swap_conv_weights, r"op 1 \(conv2d\)\.weight: tensor '.*' has shape \(64, 64, 3, 3\), "
                                                r"expected \(64, 3, 3, 3\)"),
    "scale 0": (_set(("scale",), 0), r"header\.scale: 0 is out of range \(2, 3, 4\)"),
    "scale 3 in an x2 graph": (_set(("scale",), 3), "the output has 3 channels on the grid x2, expected 3 channels "
                                                    "on the grid x3"),
    "kernel 99": (_set(("unit", "kernel"), 99), r"op 2 \(binary_unit\)\.kernel: 99 is out of range \(1, 3\)"),
    "shuffle 0": (_set(("unit", "shuffle"), 0), r"\.shuffle: 0 is out of range \(1\.\.4\)"),
    "in_channels 4096": (_set(("unit", "in_channels"), 4096), r"w_bits: tensor '.*' has shape \(3, 3, 1, 64\), "
                                                              r"expected \(3, 3, 64, 64\)"),
    "in_channels true": (_set(("unit", "in_channels"), True), "expected an integer, got True"),
    "huge integer": (_set(("unit", "neg_slope"), 10 ** 400), r"neg_slope: expected a finite number, got 1000"),
    "image channels": (_set(("in_channels",), 4096), r"header\.in_channels: 4096 is out of range \(1, 3\)"),
    "pad_value 2": (_set(("unit", "pad_value"), 2), r"pad_value: 2 is out of range \(-1, 0, 1\)"),
    "unknown attribute": (_set(("unit", "dilation"), 2), "unknown attribute 'dilation'"),
    "unknown op": (lambda h: h["graph"][3].update(op="teleport"), "unknown op 'teleport'"),
    "missing tensor": (_set(("unit", "mul"), "nope"), "mul: refers to a missing tensor 'nope'"),
    "unused tensor": (lambda h: _ops(h, "binary_unit")[0].pop("threshold"), "is not used by any op"),
    "undefined input": (lambda h: h["graph"].insert(0, h["graph"].pop(3)), "is not defined before this op"),
    "output": (_set(("output",), "v99"), "the output 'v99' is not made by any op"),
    "value defined twice": (lambda h: h["graph"][2].update(out="v1"), "value 'v1' is defined twice"),
    "denormalize scale": (lambda h: _ops(h, "denormalize")[0].update(scale=3), "upscaled x3 to a map of 3 channels"),
    "graph as an object": (lambda h: h.update(graph={}), "the graph must be a list of ops"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_are_refused_with_a_reason(good_file, name):
    edit, message = HOSTILE[name]
    bad = rewrite(good_file, edit)
    if name in ("deep nesting", "repeated key"):  # JSON json.dumps cannot write
        header, data = split(bad.read_bytes())
        text = dump(header).replace(b'"@@DEEP@@"', b"[" * 100000 + b"]" * 100000)
        text = text.replace(b'"@@TWICE@@"', b'{"a": 1, "a": 2}')
        bad.write_bytes(assemble(text, data))
    with pytest.raises(ModelFileError, match=message) as err:
        Engine.load(bad)
    assert str(err.value).startswith(f"{bad}: ")


def test_negative_offset_read_no_header_bytes(good_file):
    """Loading such a file once produced an all-black image: now nothing is made of it."""
    with pytest.raises(ModelFileError):
        load_model(rewrite(good_file, _negative_offset))


def test_every_schema_op_has_an_engine_class_and_back():
    assert set(engine_module._OPS) == set(OPS)


def test_tiny_model_runs_and_its_checks_bite():
    header, tensors = tiny_model()
    raw = encode_model(header, tensors)
    engine = Engine(*decode_model(raw, "tiny"), "tiny")
    out = engine.upscale(photo(9, 11))
    assert out.shape == (18, 22, 3) and out.dtype == np.uint8
    bad = copy.deepcopy(tensors)
    bad["u1.w"][0, 0, 0, 0] |= np.uint64(1) << np.uint64(40)  # channel 40 of an 8-channel unit
    with pytest.raises(ModelFileError, match=r"tiny: invalid model: op 2 \(binary_unit\)\.w_bits: .* beyond channel 8"):
        Engine(copy.deepcopy(header), bad, "tiny")
    bad = copy.deepcopy(tensors)
    bad["u2.cw"][3] = np.nan
    with pytest.raises(ModelFileError, match=r"op 3 \(binary_unit\)\.channel\.weight: .* NaN or infinite"):
        Engine(copy.deepcopy(header), bad, "tiny")
    for edit, message in [
        (lambda h: h["graph"][2]["channel"].update(shift=False), r"fc2_w: .* expected \(8, 4\)"),
        (lambda h: h["graph"][2].update(fp_activations=True), "FP activations has no threshold"),
        (lambda h: h["graph"][3].update(shortcut="identity"), "identity shortcut needs"),
        (lambda h: h["graph"][3]["spatial"].update(kernel=4), "spatial kernel must be odd"),
        (lambda h: h["graph"][3]["channel"].update(mode="mlp"), r"channel: unknown attribute 'bias'"),
        (lambda h: h["graph"][5].update(mean=[0.5, 0.5]), "2 means for an input of 3 channels"),
        (lambda h: h["graph"][4].update(padding=0), "padding 0 is not kernel 3 // 2"),
        (lambda h: h["graph"][4].update({"in": ["v4", "v2"]}), r"the residual \(8 channels on the grid x1\) does"),
        (lambda h: h["graph"][3].update(shuffle=3), "out_channels 32 is not divisible by shuffle 3 squared"),
    ]:
        h = copy.deepcopy(header)
        edit(h)
        with pytest.raises(ModelFileError, match=message):
            Engine(h, tensors, "tiny")


def test_cli_refuses_a_hostile_model_and_writes_nothing(tmp_path, good_file):
    bad = rewrite(good_file, _negative_offset)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), photo())
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "ebsr_basicsr.cli.upscale", str(image), "-o", str(out),
                          "--model", str(bad)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "has offset -64" in lines[0], res.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------ the fuzzer
def _fuzz_models(tmp_path) -> list:
    models = [model_path(2, name) for name in sorted(MODELS)]  # every shipped family
    tiny = tmp_path / "tiny.ebsr"
    save_model(tiny, *tiny_model())
    models.append(tiny)
    if importlib.util.find_spec("torch") is not None:  # every kind of exported network too
        for name, opt in {
            "ebsr": {"type": "EBSRNet", "upscale": 2, "num_feat": 8, "num_block": 1, "upsampler": "binary",
                     "pad_value": 0, "act_quantizer": "rsign"},
            "bnnsr": {"type": "BNNSR", "upscale": 3, "num_feat": 8, "num_block": 1},
            "swinir": {"type": "SCALESSwinIR", "upscale": 4, "num_feat": 12, "num_block": 1, "depth": 2,
                       "num_heads": 3, "window_size": 4},
            "luma": {"type": "SCALESNet", "upscale": 4, "num_in_ch": 1, "num_out_ch": 1, "num_feat": 8,
                     "num_block": 1, "upsampler": "light", "image_skip": "bilinear", "channel": None,
                     "body_end": None},
        }.items():
            models.append(export_tiny_model(tmp_path / f"{name}.ebsr", opt))
    return models


def test_fuzzed_model_files_are_refused_or_run(tmp_path):
    """Thousands of mutated files (checksum recomputed): each is refused with a
    ModelFileError naming it, or loads and upscales a tiny image; none crashes, hangs or
    allocates gigabytes. ``EBSR_FUZZ_CASES`` / ``EBSR_FUZZ_SEED`` change the run."""
    models = _fuzz_models(tmp_path)
    res = subprocess.run([sys.executable, str(HERE / "model_fuzz.py"), "--cases", str(FUZZ_CASES),
                          "--seed", str(FUZZ_SEED), *map(str, models)], capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-5000:]
    report = json.loads(res.stdout.splitlines()[-1])
    assert not report["failures"], "\n\n".join(report["failures"])
    counts = report["counts"]
    assert all(sum(c.values()) > 0 for c in counts.values()), counts  # every kind of mutation was tried
    assert sum(c["refused"] for c in counts.values()) > FUZZ_CASES // 2
    # bits flipped in the weights mostly still describe a valid model: it must load and run
    assert counts["data_bytes"]["ran"] > counts["data_bytes"]["refused"] > 0
    assert report["rss_growth_kib"] < 512 * 1024 and report["slowest_s"] < 30, report
