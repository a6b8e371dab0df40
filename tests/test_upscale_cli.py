"""Upscaling images, folders and videos: the library (upscaler, video, batch) and ``ebsr-upscale``.

Library and CLI-layer tests use ``StandInEngine``, a small NumPy engine with the runtime
``Engine``'s interface (defined here, never shipped). The CLI-layer tests substitute it for
``Engine.load`` with monkeypatch; the end-to-end tests run the real command on a real model
file (the ``model_file`` fixture).
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from ebsr_basicsr.upscale import batch as batch_mod
from ebsr_basicsr.upscale.batch import BatchOptions, plan_batch, process_job, run_batch
from ebsr_basicsr.upscale.imageio import read_image, write_image
from ebsr_basicsr.upscale.upscaler import (EngineOutputError, UnsupportedImageError, memory_estimate, plan_tiles,
                                          upscale_image)
from ebsr_basicsr.upscale.video import (VideoError, VideoSink, assemble_frames, extract_frames, has_audio, iter_frames,
                                probe_video, upscale_video)

from helpers import export_tiny_model, jpeg_with_orientation, photo

REAL_VIDEO = os.environ.get("EBSR_TEST_VIDEO")  # optional: a real video file to try a few frames of
FFMPEG = shutil.which("ffmpeg")
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# stand-in engine (test only)
# ------------------------------------------------------------------------------------------
class StandInEngine:
    """Same interface as ``ebsr_basicsr.runtime.Engine``; a 3x3 local filter then nearest upscaling.

    Pure NumPy element-wise arithmetic, so a pixel's value does not depend on where the
    array it is computed in starts: tiles with a pad >= 1 must reproduce the whole image
    exactly. ``calls`` records the input shapes."""

    def __init__(self, scale=2):
        self.scale = scale
        self.header = {"arch": "StandIn", "network_g": {"num_feat": 8}, "scale": scale, "format_version": 0}
        self.calls = []

    def run(self, x):
        assert x.dtype == np.float32 and x.ndim == 3 and x.shape[2] == 3 and x.flags.c_contiguous
        self.calls.append(x.shape)
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        h, w = x.shape[:2]
        mean = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / np.float32(9)
        sharp = x + np.float32(0.5) * (x - mean)  # may leave [0, 1]: run() does not clip
        return np.repeat(np.repeat(sharp, self.scale, 0), self.scale, 1).astype(np.float32)

    def upscale(self, img):
        rgb = img[..., ::-1].astype(np.float32) / 255
        return np.rint(np.clip(self.run(np.ascontiguousarray(rgb)), 0, 1) * 255).astype(np.uint8)[..., ::-1]


class StandInLoader:
    """Picklable engine factory for worker processes."""

    def __init__(self, scale=2):
        self.scale = scale

    def __call__(self):
        return StandInEngine(self.scale)


class ModelFileError(Exception):
    pass


def standin_model(path: Path, scale=2) -> Path:
    path.write_bytes(f"STANDIN {scale}".encode())
    return path


def standin_load(path):
    """Replacement for batch.load_engine in the CLI-layer tests."""
    data = Path(path).read_bytes()
    if not data.startswith(b"STANDIN "):
        raise ModelFileError("not an EBSR runtime model (bad magic)")
    return StandInEngine(int(data.split()[1]))


# ------------------------------------------------------------------------------------------
# test inputs
# ------------------------------------------------------------------------------------------
def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_video(path, frames=12, size=(32, 24), fps=10.0):
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    base = cv2.resize(photo(), (w, h), interpolation=cv2.INTER_AREA)
    for i in range(frames):
        writer.write(np.roll(base, 2 * i, axis=1))
    writer.release()
    return path


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return n, fps, size


GOOD = ["cat.png", "astronaut.jpg", "coffee.webp", "deep16.png", "gray.png", "rgba.png", "rotated.jpg",
        "clip.mp4"]
BAD = ["corrupt.png", "empty.png", "notes.jpg", "broken.mp4"]


def make_inputs(folder: Path) -> Path:
    """A folder with real photos, every special case and every kind of broken file."""
    folder.mkdir(parents=True, exist_ok=True)
    cat = photo(40, 48, "chelsea")
    write_image(folder / "cat.png", cat)
    write_image(folder / "astronaut.jpg", photo(40, 48, "astronaut"), quality=92)
    write_image(folder / "coffee.webp", photo(40, 48, "coffee"), quality=90)
    deep = cat.astype(np.uint16) * 257 + np.arange(48, dtype=np.uint16)[None, :, None]  # not multiples of 257
    write_image(folder / "deep16.png", deep)
    write_image(folder / "gray.png", cv2.cvtColor(cat, cv2.COLOR_BGR2GRAY))
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))
    write_image(folder / "rgba.png", np.dstack([cat, alpha]))
    ok, jpg = cv2.imencode(".jpg", cat, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (folder / "rotated.jpg").write_bytes(jpeg_with_orientation(jpg.tobytes(), 6))
    png = (folder / "cat.png").read_bytes()
    (folder / "corrupt.png").write_bytes(png[: len(png) * 2 // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("shopping list: milk, eggs\n")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    (folder / "readme.txt").write_text("not an input\n")
    make_video(folder / "clip.mp4")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs") / "in")


@pytest.fixture
def engine():
    return StandInEngine(2)


# ------------------------------------------------------------------------------------------
# upscaler
# ------------------------------------------------------------------------------------------
def test_upscale_keeps_layout_and_depth(engine):
    cat = photo()
    out = upscale_image(engine, cat)
    assert out.shape == (80, 96, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, engine.upscale(cat))  # same math as Engine.upscale

    deep = cat.astype(np.uint16) * 257 + 100
    out16 = upscale_image(engine, deep)
    assert out16.dtype == np.uint16 and out16.shape == (80, 96, 3)
    assert np.count_nonzero(out16 % 257) > out16.size // 2  # 16-bit precision, not 8-bit values
    ref8 = upscale_image(engine, cat)
    assert np.abs(out16 / 257.0 - ref8).mean() < 1.0

    gray = cv2.cvtColor(cat, cv2.COLOR_BGR2GRAY)
    g = upscale_image(engine, gray)
    assert g.shape == (80, 96) and g.dtype == np.uint8
    assert all(s == (40, 48, 3) for s in engine.calls[-1:])  # the model saw 3 channels
    g1 = upscale_image(engine, gray[..., None])
    assert g1.shape == (80, 96, 1)
    np.testing.assert_array_equal(g1[..., 0], g)
    g16 = upscale_image(engine, gray.astype(np.uint16) * 257)
    assert g16.shape == (80, 96) and g16.dtype == np.uint16


def test_gray_in_gray_out_matches_the_model_on_replicated_gray(engine):
    gray = cv2.cvtColor(photo(), cv2.COLOR_BGR2GRAY)
    rgb = np.repeat(gray[..., None], 3, 2)
    diff = upscale_image(engine, gray).astype(int) - upscale_image(engine, rgb)[..., 0]
    assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) < diff.size // 100  # luma of equal channels


def test_alpha_is_upscaled_bicubic_and_reattached(engine):
    cat = photo()
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))
    out = upscale_image(engine, np.dstack([cat, alpha]))
    assert out.shape == (80, 96, 4)
    np.testing.assert_array_equal(out[..., :3], upscale_image(engine, cat))
    ref = np.clip(cv2.resize(alpha.astype(np.float32) / 255, (96, 80), interpolation=cv2.INTER_CUBIC), 0, 1)
    assert np.abs(out[..., 3].astype(int) - np.rint(ref * 255)).max() <= 1
    opaque = upscale_image(engine, np.dstack([cat, np.full((40, 48), 255, np.uint8)]))
    assert (opaque[..., 3] == 255).all()
    a16 = upscale_image(engine, np.dstack([cat, alpha]).astype(np.uint16) * 257)
    assert a16.dtype == np.uint16 and a16.shape == (80, 96, 4)


@pytest.mark.parametrize("tile,pad", [(16, 2), (7, 3), (13, 1), (100, 0)])
def test_tiles_with_enough_pad_are_seamless(engine, tile, pad):
    img = photo(40, 48)  # 7 and 13 divide neither 40 nor 48
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))
    for other in [gray, img.astype(np.uint16) * 257 + 7, np.dstack([img, alpha])]:
        np.testing.assert_array_equal(upscale_image(engine, other, tile=tile, tile_pad=pad),
                                      upscale_image(engine, other))
    whole = upscale_image(engine, img)
    n_before = len(engine.calls)
    tiled = upscale_image(engine, img, tile=tile, tile_pad=pad)
    np.testing.assert_array_equal(tiled, whole)
    if tile < 48:
        assert len(engine.calls) - n_before > 1
        assert all(max(s[0], s[1]) <= tile + 2 * pad for s in engine.calls[n_before:])


def test_tiles_without_pad_show_seams(engine):
    img = photo(40, 48)
    assert not np.array_equal(upscale_image(engine, img, tile=16, tile_pad=0), upscale_image(engine, img))


def test_automatic_tiling_under_a_memory_budget(engine):
    budget = 40 << 20
    assert plan_tiles(engine, 40, 48, budget=1 << 30) == 0
    tile = plan_tiles(engine, 400, 480, tile_pad=4, budget=budget)
    assert 64 <= tile < 400 and tile % 8 == 0
    # the largest multiple of 8 whose estimate fits
    assert memory_estimate(engine, 400, 480, tile=tile, tile_pad=4) <= budget
    assert memory_estimate(engine, 400, 480, tile=tile + 8, tile_pad=4) > budget
    big = np.tile(photo(40, 48), (10, 10, 1))  # 400 x 480
    whole = upscale_image(engine, big, memory_budget=1 << 34)
    n = len(engine.calls)
    out = upscale_image(engine, big, tile_pad=4, memory_budget=budget)
    assert len(engine.calls) - n > 1  # it was split...
    assert len(set(engine.calls[n:])) == 1  # ...into windows of one size (the engine reuses its buffers)...
    np.testing.assert_array_equal(out, whole)  # ...without seams
    # the header's feature width counts: a wider model gets smaller tiles
    wide = StandInEngine(2)
    wide.header = {"network_g": {"num_feat": 64}}
    assert plan_tiles(wide, 400, 480, tile_pad=4, budget=budget) < tile


def test_bad_arrays_and_bad_engines(engine):
    with pytest.raises(UnsupportedImageError, match="float64"):
        upscale_image(engine, photo().astype(np.float64))
    with pytest.raises(UnsupportedImageError, match="layout"):
        upscale_image(engine, np.zeros((4, 4, 2), np.uint8))

    class Wrong(StandInEngine):
        def run(self, x):
            return super().run(x)[:-1]
    with pytest.raises(EngineOutputError, match="expected"):
        upscale_image(Wrong(), photo())


# ------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------
def test_video_keeps_fps_and_frame_count(tmp_path, engine):
    src = make_video(tmp_path / "clip.mp4", frames=12, size=(32, 24), fps=10)
    info = probe_video(src)
    assert (info.width, info.height, info.frame_count) == (32, 24, 12)
    seen = []
    res = upscale_video(engine, src, tmp_path / "clip_x2.mp4", frames_dir=tmp_path / "frames",
                        ffmpeg=None, on_frame=seen.append)
    assert res.frames == 12 and seen == list(range(1, 13))
    n, fps, size = count_frames(tmp_path / "clip_x2.mp4")
    assert (n, size) == (12, (64, 48)) and fps == pytest.approx(10)
    frames = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in frames][:2] == ["000001.png", "000002.png"] and len(frames) == 12
    assert read_image(frames[0]).shape == (48, 64, 3)
    assert res.audio.startswith("not copied: ffmpeg not found")
    assert res.notes == ["audio (if any) not copied: ffmpeg not found on PATH; the video is silent"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_odd_frame_sizes_are_cropped_to_even_and_reported(tmp_path):
    with VideoSink(tmp_path / "odd.mp4", 10) as sink:
        for i in range(3):
            sink.write(np.full((75, 99, 3), 40 * i, np.uint8))
        res = sink.finish()
    assert count_frames(res.path)[::2] == (3, (98, 74))
    assert any("cropped from 99x75 to 98x74" in n for n in res.notes)


def test_unreadable_videos_fail_clearly(tmp_path, engine):
    (tmp_path / "text.mp4").write_text("hello")
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name, reason in [("text.mp4", "cannot open|no decodable"), ("empty.mp4", "empty file"),
                         ("missing.mp4", "no such file")]:
        with pytest.raises(VideoError, match=reason):
            upscale_video(engine, tmp_path / name, tmp_path / "out.mp4", ffmpeg=None)
    assert not (tmp_path / "out.mp4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_video_leaves_existing_output_intact(tmp_path, engine):
    src = make_video(tmp_path / "clip.mp4", frames=4)
    dst = tmp_path / "clip_x2.mp4"
    dst.write_bytes(b"previous result")

    class Failing(StandInEngine):
        def run(self, x):
            if len(self.calls) >= 2:
                raise RuntimeError("kernel exploded")
            return super().run(x)
    with pytest.raises(RuntimeError):
        upscale_video(Failing(), src, dst, ffmpeg=None)
    assert dst.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_real_video_a_few_frames(tmp_path, engine):
    if not REAL_VIDEO or not Path(REAL_VIDEO).is_file():
        pytest.skip("set EBSR_TEST_VIDEO to a real video file to run this test")
    video = Path(REAL_VIDEO)
    short = tmp_path / "bikes5.mp4"
    with VideoSink(short, probe_video(video).fps) as sink:
        for i, frame in enumerate(iter_frames(video)):
            sink.write(cv2.resize(frame, (160, 68), interpolation=cv2.INTER_AREA))
            if i == 4:
                break
        sink.finish()
    res = upscale_video(engine, short, tmp_path / "bikes5_x2.mp4", ffmpeg=None)
    n, fps, size = count_frames(res.path)
    assert (n, size) == (5, (320, 136)) and fps == pytest.approx(25)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not on PATH")
def test_audio_track_is_copied(tmp_path, engine):
    src = tmp_path / "talk.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10:duration=1",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:v", "mpeg4", "-c:a", "aac",
                    "-shortest", str(src)], check=True, stdin=subprocess.DEVNULL)
    res = upscale_video(engine, src, tmp_path / "talk_x2.mp4")
    assert res.audio in ("copied", "re-encoded")
    assert has_audio(res.path, FFMPEG)
    n, fps, size = count_frames(res.path)
    assert size == (64, 48) and fps == pytest.approx(10) and n == probe_video(src).frame_count
    # a source without audio: the silent video is kept, with a note
    silent = make_video(tmp_path / "silent.mp4", frames=3)
    res = upscale_video(engine, silent, tmp_path / "silent_x2.mp4")
    assert res.audio == "none in source" and count_frames(res.path)[0] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ffmpeg_failure_keeps_the_silent_video(tmp_path, engine):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho '  Stream #0:1[0x2](und): Audio: aac, 44100 Hz' >&2\n"
                    "echo 'Conversion failed!' >&2\nexit 1\n")
    fake.chmod(0o755)
    src = make_video(tmp_path / "clip.mp4", frames=3)
    res = upscale_video(engine, src, tmp_path / "clip_x2.mp4", ffmpeg=str(fake))
    assert res.audio == "not copied: ffmpeg failed (Conversion failed!)"
    assert res.notes == ["audio not copied: ffmpeg failed (Conversion failed!); the video is silent"]
    assert count_frames(res.path)[0] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_frame_scripts_roundtrip(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=6, fps=12)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "extract_frames.py"), str(src),
                          str(tmp_path / "frames")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "12" in out.stdout  # the fps is printed
    assert len(list((tmp_path / "frames").glob("*.png"))) == 6
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "assemble_frames.py"), str(tmp_path / "frames"),
                          str(tmp_path / "again.mp4"), "--fps", "12"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    n, fps, size = count_frames(tmp_path / "again.mp4")
    assert (n, size) == (6, (32, 24)) and fps == pytest.approx(12)
    # library forms, and a bad frame folder
    info = extract_frames(src, tmp_path / "f2")
    assert info.frame_count == 6 and info.fps == pytest.approx(12)
    (tmp_path / "f2" / "000007.png").write_bytes(b"")
    with pytest.raises(VideoError, match="000007.png: empty file"):
        assemble_frames(tmp_path / "f2", tmp_path / "bad.mp4", 12, ffmpeg=None)
    assert not (tmp_path / "bad.mp4").exists()


# ------------------------------------------------------------------------------------------
# batch (library)
# ------------------------------------------------------------------------------------------
def test_plan_names_kinds_and_refusals(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ["a.png", "b.JPG", "c.mp4", "sub/d.tif", "x.png", "x.jpg", "skip.txt", ".hidden.png"]:
        (src / name).write_bytes(b"?")
    out = tmp_path / "out"
    plan = plan_batch([src], 4, BatchOptions(output_dir=out))
    names = {j.src.name: (j.dst.relative_to(out).as_posix(), j.kind) for j in plan.jobs}
    assert names == {"a.png": ("a_x4.png", "image"), "b.JPG": ("b_x4.jpg", "image"),
                     "c.mp4": ("c_x4.mp4", "video"), "x.png": ("x_x4.png", "image"),
                     "x.jpg": ("x_x4.jpg", "image")}
    plan = plan_batch([src], 2, BatchOptions(output_dir=out, recursive=True, suffix="-big", ext="webp"))
    dsts = sorted(j.dst.relative_to(out).as_posix() for j in plan.jobs)
    assert dsts == ["a-big.webp", "b-big.webp", "c-big.mp4", "sub/d-big.webp", "x-big.webp"]
    assert [(r.src.name, r.status) for r in plan.results] == [("x.png", "failed")]  # same output as x.jpg
    assert "also the output of" in plan.results[0].reason

    # output == input: refused at planning time, whatever the folder
    plan = plan_batch([src / "a.png"], 4, BatchOptions(output_dir=src, suffix=""))
    assert plan.jobs == [] and "refusing to overwrite" in plan.results[0].reason
    # writing a_x4.png over another input of the batch is refused too
    (src / "a_x4.png").write_bytes(b"?")
    plan = plan_batch([src / "a.png", src / "a_x4.png"], 4, BatchOptions(output_dir=src))
    assert [r.src.name for r in plan.results] == ["a.png"] and "input file" in plan.results[0].reason
    # but scanning the folder into itself ignores earlier results (no a_x4_x4.png)
    plan = plan_batch([src], 4, BatchOptions(output_dir=src))
    assert "a_x4.png" not in [j.src.name for j in plan.jobs]
    # an explicit file of unknown type fails, a missing one too
    plan = plan_batch([src / "skip.txt", tmp_path / "nope.png"], 4, BatchOptions(output_dir=out))
    assert [r.status for r in plan.results] == ["failed", "failed"]
    assert "unsupported file type '.txt'" in plan.results[0].reason
    assert "no such file" in plan.results[1].reason


def test_batch_collects_failures_and_goes_on(tmp_path, inputs, engine):
    before = {p.name: sha(p) for p in inputs.iterdir()}
    out = tmp_path / "out"
    opts = BatchOptions(output_dir=out, frames_dir=tmp_path / "frames", ffmpeg=None)
    plan = plan_batch([inputs], 2, opts)
    progress = []
    summary = run_batch(plan, engine, options=opts, on_progress=progress.append)
    status = {r.src.name: r.status for r in summary.results}
    assert {n for n, s in status.items() if s == "done"} == set(GOOD)
    assert {n for n, s in status.items() if s == "failed"} == set(BAD)
    assert (summary.done, summary.skipped, summary.failed) == (len(GOOD), 0, len(BAD))
    assert summary.line() == f"{len(GOOD)} done, 0 skipped, {len(BAD)} failed"
    reasons = {r.src.name: r.reason for r in summary.results if r.status == "failed"}
    assert "truncated PNG" in reasons["corrupt.png"]
    assert reasons["empty.png"] == "empty file"
    assert "not an image" in reasons["notes.jpg"]
    assert "cannot open" in reasons["broken.mp4"] or "no decodable" in reasons["broken.mp4"]
    assert all(r.traceback is None for r in summary.results)
    assert sum(progress) == 7 + 12  # 7 images + 12 frames

    # outputs: sizes, depth, channels, orientation
    assert read_image(out / "cat_x2.png").shape == (80, 96, 3)
    assert read_image(out / "astronaut_x2.jpg").shape == (80, 96, 3)
    assert read_image(out / "coffee_x2.webp").shape == (80, 96, 3)
    deep = read_image(out / "deep16_x2.png")
    assert deep.dtype == np.uint16 and deep.shape == (80, 96, 3)
    assert read_image(out / "gray_x2.png").shape == (80, 96)
    assert read_image(out / "rgba_x2.png").shape == (80, 96, 4)
    assert read_image(out / "rotated_x2.jpg").shape == (96, 80, 3)  # upright, EXIF applied
    n, fps, size = count_frames(out / "clip_x2.mp4")
    assert (n, size) == (12, (64, 48)) and fps == pytest.approx(10)
    assert len(list((tmp_path / "frames" / "clip_x2").glob("*.png"))) == 12
    assert not any(p.name.startswith(".") for p in out.iterdir())
    # inputs never modified, nothing written next to them
    assert {p.name: sha(p) for p in inputs.iterdir()} == before

    # skip-existing: second run skips everything that was done, and touches nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    opts2 = BatchOptions(output_dir=out, skip_existing=True, ffmpeg=None)
    summary2 = run_batch(plan_batch([inputs], 2, opts2), engine, options=opts2)
    assert (summary2.done, summary2.skipped, summary2.failed) == (0, len(GOOD), len(BAD))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_unreadable_file_is_one_failure(tmp_path, engine, monkeypatch):
    """Permission problems (simulated: the tests may run as root) fail that file only."""
    import builtins
    from ebsr_basicsr.upscale import imageio as imageio_mod
    good, locked = tmp_path / "good.png", tmp_path / "locked.png"
    write_image(good, photo())
    write_image(locked, photo())

    def guarded_open(path, *args, **kwargs):
        if Path(path).name == "locked.png":
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)
    monkeypatch.setattr(imageio_mod, "open", guarded_open, raising=False)
    opts = BatchOptions(output_dir=tmp_path / "out")
    summary = run_batch(plan_batch([good, locked], 2, opts), engine, options=opts)
    assert summary.line() == "1 done, 0 skipped, 1 failed"
    failed = [r for r in summary.results if r.status == "failed"][0]
    assert failed.src == locked and failed.reason == "cannot read file (Permission denied)"


def test_failure_keeps_the_previous_output(tmp_path, engine):
    src = tmp_path / "a.png"
    write_image(src, photo())
    dst = tmp_path / "out" / "a_x2.png"
    dst.parent.mkdir()
    dst.write_bytes(b"old")

    class Failing(StandInEngine):
        def run(self, x):
            raise ValueError("model blew up")
    opts = BatchOptions(output_dir=tmp_path / "out")
    res = process_job(Failing(), plan_batch([src], 2, opts).jobs[0], opts)
    assert res.status == "failed" and "ValueError: model blew up" in res.reason
    assert res.traceback and "Traceback" in res.traceback  # unexpected: kept for --verbose
    assert dst.read_bytes() == b"old"


def test_workers_give_the_same_results(tmp_path, inputs, engine):
    """Two spawned workers, each loading the engine once, produce identical files."""
    files = [inputs / n for n in ["cat.png", "deep16.png", "gray.png", "rgba.png", "corrupt.png"]]
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = run_batch(plan_batch(files, 2, BatchOptions(output_dir=one)), engine,
                   options=BatchOptions(output_dir=one))
    progress = []
    s2 = run_batch(plan_batch(files, 2, BatchOptions(output_dir=two)), engine,
                   options=BatchOptions(output_dir=two), engine_loader=StandInLoader(2), workers=2,
                   threads=1, on_progress=progress.append)
    assert (s2.done, s2.failed) == (s1.done, s1.failed) == (4, 1)
    assert sum(progress) == 4
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for p in one.iterdir():
        assert sha(p) == sha(two / p.name), p.name


def test_thread_requests_beyond_the_pool_are_reduced(caplog):
    import numba
    before = numba.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="ebsr_basicsr"):
            batch_mod.set_threads(10_000)
        assert "threads requested" in caplog.text
        batch_mod.set_threads(1)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


# ------------------------------------------------------------------------------------------
# CLI layer (stand-in engine substituted for Engine.load)
# ------------------------------------------------------------------------------------------
def cli(args, monkeypatch=None):
    """Run ebsr-upscale in-process; the package logger is restored afterwards (main sets it up)."""
    import logging
    from ebsr_basicsr.cli.upscale import main
    if monkeypatch is not None:
        monkeypatch.setattr(batch_mod, "load_engine", standin_load)
    pkg = logging.getLogger("ebsr_basicsr")
    saved = pkg.handlers[:], pkg.level, pkg.propagate
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        pkg.handlers, pkg.level, pkg.propagate = saved[0], saved[1], saved[2]


def test_help_reads_well():
    res = cli(["--help"])
    assert res.exit_code == 0
    for text in ["INPUT...", "--scale", "--model", "--tile", "--tile-pad", "--suffix", "--ext", "--jpeg-quality",
                 "--recursive", "--skip-existing", "--frames-dir", "--workers", "--threads", "--quiet",
                 "--verbose", "--max-pixels", "--memory-limit", "--keep-partial", "--progress-interval",
                 "Examples:", "ebsr-upscale photos/", "130 if interrupted"]:
        assert text in res.output, text


def test_help_does_not_import_torch_or_the_library():
    code = ("import sys; from ebsr_basicsr.cli.upscale import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'basicsr', 'numba', 'cv2') if m in sys.modules]\n"
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_library_path_imports_no_torch():
    code = ("import sys, ebsr_basicsr.upscale.batch, ebsr_basicsr.upscale.video, ebsr_basicsr.weights\n"
            "import ebsr_basicsr.cli.upscale\n"
            "bad = [m for m in ('torch', 'basicsr', 'numba') if m in sys.modules]\nassert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_cli_batch_exit_codes_messages_summary(tmp_path, inputs, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    before = {p.name: sha(p) for p in inputs.iterdir()}
    out = tmp_path / "out"
    res = cli([inputs, "-o", out, "--model", model], monkeypatch)
    assert res.exit_code == 1, res.output
    err = res.stderr
    assert "Traceback" not in err
    for name in BAD:
        lines = [ln for ln in err.splitlines() if name in ln]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert f"{len(GOOD)} done, 0 skipped, {len(BAD)} failed" in err.splitlines()[-1]
    assert read_image(out / "cat_x2.png").shape == (80, 96, 3)
    assert {p.name: sha(p) for p in inputs.iterdir()} == before

    # second run with --skip-existing: nothing rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = cli([inputs, "-o", out, "--model", model, "--skip-existing"], monkeypatch)
    assert f"0 done, {len(GOOD)} skipped, {len(BAD)} failed" in res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # only good files: exit 0
    res = cli([inputs / "cat.png", inputs / "rgba.png", "-o", tmp_path / "o2", "--model", model, "--ext", "jpg",
               "--jpeg-quality", "80", "--suffix", "_big"], monkeypatch)
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["cat_big.jpg", "rgba_big.jpg"]
    assert "2 done, 0 skipped, 0 failed" in res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "transparency dropped" in ln]
    assert len(notes) == 1 and notes[0].startswith(f"warning: {inputs / 'rgba.png'}: ")

    # --quiet: errors only
    res = cli([inputs / "cat.png", inputs / "empty.png", "-o", tmp_path / "o3", "--model", model, "-q"],
              monkeypatch)
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "empty.png" in lines[0]
    assert lines[1].startswith("1 done, 0 skipped, 1 failed")


def test_cli_interrupt_leaves_no_partial_files(tmp_path, inputs, monkeypatch):
    class Interrupted(StandInEngine):
        def run(self, x):
            if len(self.calls) == 5:  # in the middle of the video
                raise KeyboardInterrupt
            return super().run(x)
    model = standin_model(tmp_path / "m.ebsr", 2)
    monkeypatch.setattr(batch_mod, "load_engine", lambda path: Interrupted(2))
    out = tmp_path / "out"
    res = cli([inputs / "clip.mp4", inputs / "cat.png", "-o", out, "-m", model, "--frames-dir", tmp_path / "frames"])
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert list(out.iterdir()) == []
    assert not [p for p in (tmp_path / "frames").rglob(".*")]


def test_remove_temp_files_of_an_interrupted_job(tmp_path):
    from ebsr_basicsr._files import AtomicFile
    out, frames = tmp_path / "out", tmp_path / "fr"
    out.mkdir()
    frames.mkdir()
    job = batch_mod.Job(0, tmp_path / "a.mp4", out / "clip[1]*_x2.mp4", "video", frames)  # glob characters
    stale = [AtomicFile(job.dst).path, AtomicFile(job.dst).path, AtomicFile(frames / "000003.png").path]
    keep = [out / "clip[1]*_x2.mp4", AtomicFile(out / "clip1_x2.mp4").path, AtomicFile(out / "other.mp4").path,
            frames / "000001.png"]
    for p in keep:
        p.write_bytes(b"x")
    batch_mod.remove_temp_files(job)
    assert [p.exists() for p in stale] == [False] * 3 and all(p.exists() for p in keep)


def test_cli_tiling_and_verbose(tmp_path, inputs, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli([inputs / "cat.png", "-o", a, "-m", model], monkeypatch).exit_code == 0
    res = cli([inputs / "cat.png", "-o", b, "-m", model, "--tile", "7", "--tile-pad", "2", "-v"], monkeypatch)
    assert res.exit_code == 0
    assert sha(a / "cat_x2.png") == sha(b / "cat_x2.png")
    assert "cat.png ->" in res.stderr and "model:" in res.stderr


def test_cli_model_and_scale_errors(tmp_path, inputs, monkeypatch):
    model3 = standin_model(tmp_path / "m3.ebsr", 3)
    img = inputs / "cat.png"
    # --scale given and different from the model's: usage error
    res = cli([img, "-o", tmp_path / "o", "-m", model3, "--scale", "4"], monkeypatch)
    assert res.exit_code == 2 and "x3 model" in res.stderr
    # only --model: its scale is used
    res = cli([img, "-o", tmp_path / "o", "-m", model3], monkeypatch)
    assert res.exit_code == 0 and read_image(tmp_path / "o" / "cat_x3.png").shape == (120, 144, 3)
    # a damaged model file: one line naming it, exit 1, no traceback
    bad = tmp_path / "bad.ebsr"
    bad.write_bytes(b"\x00garbage")
    res = cli([img, "-o", tmp_path / "o", "-m", bad], monkeypatch)
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    expected = f"error: {bad}: cannot load model: not an EBSR runtime model (bad magic)"
    assert res.stderr.strip().splitlines() == [expected]
    # no embedded model for the scale: clear usage error
    from ebsr_basicsr.weights import available_scales
    missing = [s for s in (2, 3, 4) if s not in available_scales()]
    if missing:
        res = cli([img, "-o", tmp_path / "o", "--scale", missing[0]], monkeypatch)
        assert res.exit_code == 2 and f"no embedded model for x{missing[0]}" in res.stderr and "--model" in res.stderr
    # a missing input is a failed file, not a usage error
    res = cli([tmp_path / "nope.png", "-o", tmp_path / "o", "-m", model3], monkeypatch)
    assert res.exit_code == 1 and f"error: {tmp_path / 'nope.png'}: no such file or directory" in res.stderr
    # click usage errors
    assert cli([img, "-m", model3, "--ext", "gif"], monkeypatch).exit_code == 2
    assert cli([img, "-m", model3, "--jpeg-quality", "0"], monkeypatch).exit_code == 2
    assert cli([img, "-m", model3, "-q", "-v"], monkeypatch).exit_code == 2
    assert cli([img, "-m", model3, "--suffix", "a/b"], monkeypatch).exit_code == 2


def test_cli_refuses_to_write_over_inputs(tmp_path, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    folder = tmp_path / "pics"
    folder.mkdir()
    write_image(folder / "a.png", photo())
    before = sha(folder / "a.png")
    res = cli([folder, "-o", folder, "-m", model, "--suffix", ""], monkeypatch)
    assert res.exit_code == 1 and "refusing to overwrite" in res.stderr
    assert sha(folder / "a.png") == before
    # same folder with the default suffix is fine, and a rerun does not pick up a_x2.png
    assert cli([folder, "-o", folder, "-m", model], monkeypatch).exit_code == 0
    res = cli([folder, "-o", folder, "-m", model], monkeypatch)
    assert res.exit_code == 0 and "1 done" in res.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x2.png"]


# ------------------------------------------------------------------------------------------
# end to end with the real runtime and a real model file
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A runtime model file: $EBSR_TEST_MODEL, else an embedded model, else a small x2 EBSRNet
    with fresh weights, exported here (skips only if torch, needed to export it, is absent;
    the command itself never imports torch)."""
    env = os.environ.get("EBSR_TEST_MODEL")
    if env:
        return Path(env)
    from ebsr_basicsr.weights import available_scales, default_model_path
    scales = available_scales()
    if scales:
        return default_model_path(min(scales))
    pytest.importorskip("torch", reason="no embedded model file, and torch is needed to export a tiny one")
    opt = {"type": "EBSRNet", "num_in_ch": 3, "num_out_ch": 3, "upscale": 2, "num_feat": 16, "num_block": 2,
           "upsampler": "fp"}
    return export_tiny_model(tmp_path_factory.mktemp("model") / "tiny_x2.ebsr", opt)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ebsr_basicsr.cli.upscale", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_e2e_real_model_batch(tmp_path, inputs, model_file):
    from ebsr_basicsr.runtime import Engine
    s = Engine.load(model_file).scale
    before = {p.name: sha(p) for p in inputs.iterdir()}
    out = tmp_path / "out"
    res = run_cli(inputs, "-o", out, "--model", model_file)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    for name in BAD:
        assert name in res.stderr
    assert f"{len(GOOD)} done, 0 skipped, {len(BAD)} failed" in res.stderr
    assert read_image(out / f"cat_x{s}.png").shape == (40 * s, 48 * s, 3)
    assert read_image(out / f"deep16_x{s}.png").dtype == np.uint16
    assert read_image(out / f"gray_x{s}.png").shape == (40 * s, 48 * s)
    assert read_image(out / f"rgba_x{s}.png").shape == (40 * s, 48 * s, 4)
    assert read_image(out / f"rotated_x{s}.jpg").shape == (48 * s, 40 * s, 3)
    n, fps, size = count_frames(out / f"clip_x{s}.mp4")
    assert (n, size) == (12, (32 * s, 24 * s)) and fps == pytest.approx(10)
    assert {p.name: sha(p) for p in inputs.iterdir()} == before
    res = run_cli(inputs, "-o", out, "--model", model_file, "--skip-existing", "--quiet")
    assert f"0 done, {len(GOOD)} skipped, {len(BAD)} failed" in res.stderr


def test_e2e_real_model_workers_and_tiles(tmp_path, inputs, model_file):
    files = [inputs / "cat.png", inputs / "gray.png", inputs / "rgba.png"]
    a, b = tmp_path / "a", tmp_path / "b"
    res = run_cli(*files, "-o", a, "--model", model_file, "--threads", "1")
    assert res.returncode == 0, res.stderr
    res = run_cli(*files, "-o", b, "--model", model_file, "--workers", "2", "--threads", "1")
    assert res.returncode == 0, res.stderr
    for p in a.iterdir():
        assert sha(p) == sha(b / p.name), p.name
    # tiles whose pad covers the whole image see exactly what the untiled pass sees
    res = run_cli(inputs / "cat.png", "-o", tmp_path / "t", "--model", model_file, "--threads", "1",
                  "--tile", "16", "--tile-pad", "64")
    assert res.returncode == 0, res.stderr
    tiled = next((tmp_path / "t").iterdir())
    assert sha(tiled) == sha(a / tiled.name)
    # a usual pad: same size, close to the untiled result
    res = run_cli(inputs / "cat.png", "-o", tmp_path / "t2", "--model", model_file, "--tile", "16")
    assert res.returncode == 0, res.stderr
    diff = np.abs(read_image(tmp_path / "t2" / tiled.name).astype(int) - read_image(a / tiled.name))
    assert diff.mean() < 2


def test_e2e_bad_model_file(tmp_path, inputs, model_file):
    bad = tmp_path / "bad.ebsr"
    bad.write_bytes(b"not a model at all")
    res = run_cli(inputs / "cat.png", "-o", tmp_path / "o", "--model", bad)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert str(bad) in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_model_by_embedded_name_or_file(tmp_path):
    """--model takes an embedded model's name (for the --scale given) or a file; anything else
    is a usage error that names the choices."""
    from ebsr_basicsr.weights import MODELS, available_scales, model_path

    img = tmp_path / "in.png"
    cv2.imwrite(str(img), np.full((12, 10, 3), 90, np.uint8))
    for name in MODELS:
        if 2 in available_scales(name):
            res = cli([img, "-o", tmp_path / name, "--model", name, "--scale", "2", "-v"])
            assert res.exit_code == 0, res.output
            assert str(model_path(2, name)) in res.stderr
            assert read_image(tmp_path / name / "in_x2.png").shape == (24, 20, 3)
    res = cli([img, "-o", tmp_path / "x", "--model", "sharpest"])
    assert res.exit_code == 2
    assert "neither a model file nor an embedded model" in res.output and "robust" in res.output


def test_ensemble_flag_runs_the_self_ensemble(tmp_path):
    from ebsr_basicsr.runtime import Engine
    from ebsr_basicsr.weights import available_scales, model_path

    name = "robust" if 2 in available_scales("robust") else "bicubic"
    img = np.ascontiguousarray(read_image_like(tmp_path))
    res = cli([tmp_path / "in.png", "-o", tmp_path / "out", "--model", name, "--scale", "2", "--ensemble"])
    assert res.exit_code == 0, res.output
    expected = Engine.load(model_path(2, name)).upscale(img, ensemble=True)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "in_x2.png"), expected)


def read_image_like(folder):
    """A small real photo crop written to ``folder/in.png`` (BGR uint8), returned."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[100:130, 120:154, ::-1])
    cv2.imwrite(str(folder / "in.png"), img)
    return img
