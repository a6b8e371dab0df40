"""``ebsr-upscale`` against inputs that try to break it: decompression bombs, truncated and
fake videos, missing paths, file names with control characters or invalid UTF-8, endless
inputs; and what it tells a user watching a log (progress lines, one line per error)."""
import logging
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from ebsr_basicsr.upscale.batch import BatchOptions, plan_batch, process_job, run_batch
from ebsr_basicsr.upscale.imageio import (ImageReadError, ImageTooLargeError, decode_image, image_size, read_file,
                                          read_image, write_image)
from ebsr_basicsr.upscale.report import ProgressLog, printable
from ebsr_basicsr.upscale.upscaler import MemoryBudgetError, memory_estimate, plan_tiles, upscale_image
from ebsr_basicsr.upscale.video import VideoError, check_complete, probe_video, upscale_video
from ebsr_basicsr.weights import available_scales, default_model_path

from test_imageio import encode, photo
from test_upscale_cli import StandInEngine, cli, count_frames, make_video, standin_model


def png_of_zeros(width, height, channels=3, level=1) -> bytes:
    """A valid PNG of black pixels built without allocating them: a few MB that decode to
    width * height * channels bytes (a "decompression bomb")."""
    color = {1: 0, 3: 2, 4: 6}[channels]
    comp = zlib.compressobj(level)
    row = bytes(1 + width * channels)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ebsr_basicsr.cli.upscale", *map(os.fsdecode, args)],
                          capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def model():
    scales = available_scales()
    if not scales:
        pytest.skip("no embedded model")
    return default_model_path(2 if 2 in scales else scales[0])


# ------------------------------------------------------------------------------------------
# decompression bombs and memory
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif", ".bmp"])
def test_image_size_comes_from_the_header(ext):
    img = photo(37, 53)
    data = encode(img, ext)
    assert image_size(data) == (53, 37)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # lossless WebP: VP8L
    assert image_size(encode(np.dstack([img, img[..., :1]]), ext, params)) == (53, 37)
    assert image_size(encode(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), ext)) == (53, 37)
    if ext == ".jpg":  # cut short: the JPEG parser says so, the others do not know
        with pytest.raises(ImageReadError, match="truncated"):
            image_size(data[:10])
    else:
        assert image_size(data[:10]) is None
    assert image_size(b"not an image at all") is None


def test_a_bomb_is_refused_from_its_header_before_decoding():
    bomb = png_of_zeros(20000, 20000)
    assert len(bomb) < 6_000_000 and image_size(bomb) == (20000, 20000)  # 1.2 GB decoded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"20000x20000 \(400 megapixels\).*200 megapixels"):
        decode_image(bomb)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: nothing decoded
    # a lower limit refuses smaller images; the check after decoding catches headers that do not say
    small = encode(photo(40, 48), ".png")
    with pytest.raises(ImageTooLargeError):
        decode_image(small, max_pixels=1000)
    assert decode_image(small, max_pixels=0).shape == (40, 48, 3)  # 0: no limit


def test_endless_or_oversized_inputs_are_not_read_to_the_end(tmp_path):
    with pytest.raises(ImageTooLargeError, match="larger than"):
        read_file("/dev/zero", max_bytes=1 << 20)
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(3000))
    with pytest.raises(ImageTooLargeError):
        read_file(big, max_bytes=1000)
    assert len(read_file(big, max_bytes=3008)) == 3008


def test_the_18000_pixel_png_is_refused_quickly_with_little_memory(tmp_path, model):
    """The 1.1 MB PNG of 20000x20000 once grew a run to 10.8 GB. An 18000x18000 one must be
    refused (or done) in under 2 minutes and 2 GB: by the pixel limit, and without it by the
    memory budget before anything is decoded."""
    src = tmp_path / "big.png"
    src.write_bytes(png_of_zeros(18000, 18000))
    for extra, reason in [((), "more than the limit of 200 megapixels"),
                          (("--max-pixels", "0", "--memory-limit", "2G"), "even in tiles of 64 px")]:
        code = ("import resource, subprocess, sys, time; t = time.time(); "
                "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
                "print(p.returncode, r, time.time() - t); print(p.stderr)")
        out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "ebsr_basicsr.cli.upscale", str(src),
                              "-o", str(tmp_path / "out"), "-m", str(model), *extra],
                             capture_output=True, text=True, timeout=300)
        rc, peak_kb, seconds = out.stdout.split("\n", 1)[0].split()
        assert int(rc) == 1 and reason in out.stdout, out.stdout
        assert int(peak_kb) < 2 << 20 and float(seconds) < 120, out.stdout
    assert list((tmp_path / "out").iterdir()) == []


class Sized(StandInEngine):
    """A stand-in that states its own working memory (the method the runtime engine may have)."""

    def working_bytes(self, h, w):
        return h * w * 1000


def test_the_estimate_counts_the_whole_pipeline_and_prefers_the_engine_own():
    engine = StandInEngine(2)
    base = memory_estimate(engine, 100, 100, channels=3, itemsize=1)
    # input, output (4x the pixels) and one output-sized buffer for the encoding are in it
    assert base > 100 * 100 * 3 * (1 + 2 * 4)
    assert memory_estimate(engine, 100, 100, channels=3, itemsize=2) - base == 100 * 100 * 3 * (1 + 2 * 4)
    # alpha: one more output-sized plane before it is copied in
    rgba = memory_estimate(engine, 100, 100, channels=4, itemsize=1)
    assert rgba - base == 100 * 100 * (1 + 2 * 4) + 200 * 200
    # tiles bound only the engine's part
    assert memory_estimate(engine, 1000, 1000, tile=100) < memory_estimate(engine, 1000, 1000)
    sized = Sized(2)
    assert memory_estimate(sized, 100, 100) - memory_estimate(sized, 100, 100, tile=50, tile_pad=5) == \
        (100 * 100 - 60 * 60) * 1000 + (100 * 100 - 60 * 60) * (12 + 48)


def test_automatic_tiles_are_announced_and_impossible_images_refused(tmp_path):
    engine = StandInEngine(2)
    img = np.tile(photo(40, 48), (5, 5, 1))  # 200 x 240
    whole = memory_estimate(engine, 200, 240)
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    log = logging.getLogger("ebsr_basicsr.upscale.upscaler")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        out = upscale_image(engine, img, memory_budget=whole - 1)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert len(records) == 1 and records[0].startswith("240x200 image: automatic tiles of"), records
    np.testing.assert_array_equal(out, upscale_image(engine, img, memory_budget=whole))
    with pytest.raises(MemoryBudgetError, match="even in tiles of 64 px.*memory budget"):
        plan_tiles(engine, 200, 240, budget=200 * 240 * 9)  # less than the input and output alone
    with pytest.raises(MemoryBudgetError, match="use a smaller --tile"):
        plan_tiles(engine, 200, 240, tile=128, budget=memory_estimate(engine, 200, 240, tile=64))
    # in a batch: that file fails, the others are done
    write_image(tmp_path / "big.png", img)
    write_image(tmp_path / "small.png", photo(40, 48))
    opts = BatchOptions(output_dir=tmp_path / "out", memory_budget=memory_estimate(engine, 40, 48))
    summary = run_batch(plan_batch([tmp_path / "big.png", tmp_path / "small.png"], 2, opts), engine, options=opts)
    reasons = {r.src.name: r.reason for r in summary.results}
    assert summary.line() == "1 done, 0 skipped, 1 failed" and "memory budget" in reasons["big.png"]


def test_the_engine_buffers_are_released_after_each_file(tmp_path):
    class Pooled(StandInEngine):
        class Pool:
            cleared = 0

            def clear(self):
                self.cleared += 1
        pool = Pool()

    engine = Pooled(2)
    write_image(tmp_path / "a.png", photo())
    opts = BatchOptions(output_dir=tmp_path / "out")
    assert process_job(engine, plan_batch([tmp_path / "a.png"], 2, opts).jobs[0], opts).status == "done"
    assert engine.pool.cleared == 1


def test_cli_pixel_limit_refuses_one_file_and_goes_on(tmp_path, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    (tmp_path / "bomb.png").write_bytes(png_of_zeros(3000, 3000, channels=1))
    write_image(tmp_path / "ok.png", photo())
    res = cli([tmp_path / "bomb.png", tmp_path / "ok.png", "-o", tmp_path / "out", "-m", model,
               "--max-pixels", "5M"], monkeypatch)
    assert res.exit_code == 1
    assert f"error: {tmp_path / 'bomb.png'}: image is 3000x3000 (9 megapixels), more than the limit of 5 megapixels" \
        in res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok_x2.png"]
    res = cli([tmp_path / "ok.png", "-o", tmp_path / "out", "-m", model, "--max-pixels", "lots"], monkeypatch)
    assert res.exit_code == 2 and "not a size" in res.stderr


# ------------------------------------------------------------------------------------------
# videos
# ------------------------------------------------------------------------------------------
def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    half = path.with_name(path.stem + "_half" + path.suffix)
    half.write_bytes(data[:len(data) // 2])
    return half


def test_a_truncated_video_fails_saying_how_many_frames_were_done(tmp_path, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    mkv = cut_in_half(make_video(tmp_path / "film.mkv", frames=20))  # header first: opens, then ends early
    mp4 = cut_in_half(make_video(tmp_path / "clip.mp4", frames=20))  # index last: cannot be opened at all
    good = make_video(tmp_path / "good.mp4", frames=4)
    out = tmp_path / "out"
    res = cli([mkv, mp4, good, "-o", out, "-m", model, "--frames-dir", tmp_path / "frames", "-q"], monkeypatch)
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    err = [ln for ln in lines if "film_half.mkv" in ln]
    assert len(err) == 1 and "ends after" in err[0] and "of the 20 frames it announces" in err[0], lines
    assert "nothing kept" in err[0] and "--keep-partial" in err[0]
    assert any("clip_half.mp4: cannot open video" in ln for ln in lines)
    assert lines[-1].startswith("1 done, 0 skipped, 2 failed")
    assert sorted(p.name for p in out.iterdir()) == ["good_x2.mp4"]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["good_x2"]  # no frames of the failed one

    # --keep-partial: the frames done are kept under another name; the file still failed
    res = cli([mkv, "-o", out, "-m", model, "--keep-partial", "--frames-dir", tmp_path / "frames"], monkeypatch)
    assert res.exit_code == 1
    kept = out / "film_half_x2.partial.mp4"
    n = count_frames(kept)[0]
    assert 0 < n < 20 and f"the {n} frames upscaled are kept in film_half_x2.partial.mp4" in res.stderr
    assert len(list((tmp_path / "frames" / "film_half_x2").iterdir())) == n
    assert not (out / "film_half_x2.mp4").exists()
    # and --skip-existing does not take the partial file for a result
    res = cli([mkv, "-o", out, "-m", model, "--skip-existing", "-q"], monkeypatch)
    assert "0 skipped, 1 failed" in res.stderr


def test_an_image_under_a_video_name_is_refused(tmp_path, engine=StandInEngine(2)):
    write_image(tmp_path / "photo.png", photo())
    for fmt in ("png", "jpg", "tif", "webp", "bmp"):
        fake = tmp_path / f"{fmt}.mp4"
        fake.write_bytes(encode(photo(), "." + fmt))
        with pytest.raises(VideoError, match="not a video"):
            upscale_video(engine, fake, tmp_path / "out.mp4", ffmpeg=None)
        with pytest.raises(VideoError, match="not a video"):
            probe_video(fake)
    assert not (tmp_path / "out.mp4").exists()
    # whatever OpenCV can read as one frame of unknown count is not a video either
    info = probe_video(make_video(tmp_path / "v.mp4", frames=3))
    info.frame_count = 0
    assert "not a video" in check_complete(info, 1, "x.mkv")
    assert check_complete(info, 2, "x.mkv") is None
    info.frame_count = 100
    assert check_complete(info, 99, "x.mkv") is None  # MKV only estimates its count
    assert "ends after 99 of the 100" in check_complete(info, 99, "x.mp4")


def test_cli_refuses_a_png_renamed_mp4(tmp_path, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    fake = tmp_path / "holiday.mp4"
    fake.write_bytes(encode(photo(), ".png"))
    res = cli([fake, "-o", tmp_path / "out", "-m", model], monkeypatch)
    assert res.exit_code == 1
    assert f"error: {fake}: not a video: this is a PNG image" in res.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_video_progress_lines_when_stderr_is_a_pipe(tmp_path, model):
    src = make_video(tmp_path / "clip.mp4", frames=30, size=(32, 24))
    res = run_cli(src, "-o", tmp_path / "out", "-m", model, "--progress-interval", "0.001")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("progress: ")]
    assert lines, res.stderr
    assert all("/30 frames (" in ln and " frames/s" in ln and "(clip.mp4)" in ln for ln in lines), lines
    assert any("left" in ln for ln in lines), lines
    assert "\r" not in res.stderr  # no progress bar drawn into a log
    quiet = run_cli(src, "-o", tmp_path / "out2", "-m", model, "--progress-interval", "0.001", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_progress_log_rate_and_time_left():
    now = [100.0]
    lines = []
    log = ProgressLog(795, "frames", 15, lines.append, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 1
        log.update()
    assert lines == []  # less than 15 s
    now[0] += 10
    log.current = "clip\n.mp4"
    log.update(10)
    assert lines == ["progress: 20/795 frames (2%), 1.00 frames/s, about 12 min 55 s left (clip\\n.mp4)"]
    log.update(0)
    assert len(lines) == 1
    assert ProgressLog(1, "images", 0, lines.append).interval == 0


# ------------------------------------------------------------------------------------------
# inputs and names
# ------------------------------------------------------------------------------------------
def test_a_missing_input_is_one_failure_among_good_ones(tmp_path, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    write_image(tmp_path / "a.png", photo())
    write_image(tmp_path / "b.png", photo(40, 48, "coffee"))
    missing = tmp_path / "gone.png"
    res = cli([tmp_path / "a.png", missing, tmp_path / "b.png", "-o", tmp_path / "out", "-m", model], monkeypatch)
    assert res.exit_code == 1
    assert f"error: {missing}: no such file or directory" in res.stderr.splitlines()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png", "b_x2.png"]
    assert res.stderr.splitlines()[-1].startswith("2 done, 0 skipped, 1 failed")


def test_printable_escapes_what_breaks_a_line():
    assert printable("plain é 名前.png") == "plain é 名前.png"
    assert printable("a\nb\tc\rd\x1b[31me\x7f\x85\u2028\u202e.png") == \
        "a\\nb\\tc\\rd\\x1b[31me\\x7f\\x85\\u2028\\u202e.png"
    assert printable(os.fsdecode(b"bad\xffname.png")) == "bad\\xffname.png"


def test_control_characters_in_names_keep_each_error_on_one_line(tmp_path, monkeypatch):
    model = standin_model(tmp_path / "m.ebsr", 2)
    bad = tmp_path / "line\nbreak\tand \x1b[2Jescape.png"
    bad.write_bytes(b"not a picture")
    write_image(tmp_path / "new\nline.png", photo())
    res = cli([bad, tmp_path / "new\nline.png", "-o", tmp_path / "out", "-m", model], monkeypatch)
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors == [f"error: {tmp_path}/line\\nbreak\\tand \\x1b[2Jescape.png: "
                      "not an image file (unrecognised content)"]
    assert "\x1b" not in res.stderr and lines[-1].startswith("1 done, 0 skipped, 1 failed")
    assert (tmp_path / "out" / "new\nline_x2.png").is_file()  # the name itself is kept


def test_names_that_are_not_utf8(tmp_path, model):
    """OpenCV's binding crashes the process on such names: images are written without giving
    it the name; videos, which OpenCV must open by name, are refused with a reason."""
    folder = os.fsencode(tmp_path)
    img = folder + b"/caf\xe9.png"
    vid = folder + b"/clip\xff.mp4"
    with open(img, "wb") as f:
        f.write(encode(photo(), ".png"))
    with open(vid, "wb") as f:
        f.write((make_video(tmp_path / "ok.mp4", frames=2)).read_bytes())
    res = run_cli(img, vid, "-o", tmp_path / "out", "-m", model)
    assert res.returncode == 1, res.stderr
    assert os.listdir(os.fsencode(tmp_path / "out")) == [b"caf\xe9_x2.png"]
    assert read_image(os.fsdecode(folder + b"/out/caf\xe9_x2.png")).shape == (80, 96, 3)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: {tmp_path}/clip\\xff.mp4: the file or folder name is not valid UTF-8, which OpenCV "
                      f"cannot open (rename it)"], res.stderr
