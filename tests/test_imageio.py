"""Reading and writing image files: depth, channels, EXIF orientation, failures, atomic writes."""
import hashlib
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from ebsr_basicsr.upscale.imageio import (ImageReadError, ImageWriteError, apply_orientation,
                                  decode_image, encode_image, exif_orientation, read_image, sniff_format,
                                  write_image)

from helpers import jpeg_with_orientation, photo


def encode(img, ext, params=()):
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# reading what is stored
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_roundtrip_keeps_pixels(tmp_path, ext):
    img = photo()
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []
    path = tmp_path / f"ünïcode é{ext}"
    path.write_bytes(encode(img, ext, params))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_jpeg_reads_as_bgr(tmp_path):
    img = photo()
    path = tmp_path / "a.jpg"
    path.write_bytes(encode(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]))
    out = read_image(path)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 4


def test_sixteen_bit_gray_and_alpha_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (10, 12), dtype=np.uint16)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    for name, img in [("deep.png", deep), ("gray.png", gray), ("gray16.png", gray16), ("rgba.png", rgba),
                      ("deep.tif", deep), ("gray16.tif", gray16)]:
        (tmp_path / name).write_bytes(encode(img, Path(name).suffix))
        out = read_image(tmp_path / name)
        assert out.dtype == img.dtype and out.shape == img.shape, name
        np.testing.assert_array_equal(out, img)


def test_sniff_format():
    img = photo(8, 8)
    assert sniff_format(encode(img, ".png")) == "png"
    assert sniff_format(encode(img, ".jpg")) == "jpg"
    assert sniff_format(encode(img, ".webp")) == "webp"
    assert sniff_format(encode(img, ".tif")) == "tif"
    assert sniff_format(encode(img, ".bmp")) == "bmp"
    assert sniff_format(b"hello") is None


# ------------------------------------------------------------------------------------------
# EXIF orientation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("endian", ["<", ">"])
def test_jpeg_orientation_6_is_rotated_clockwise(tmp_path, endian):
    img = photo(40, 48)
    plain = encode(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100])
    data = jpeg_with_orientation(plain, 6, endian)
    assert exif_orientation(data) == 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    out = read_image(path)
    assert out.shape == (48, 40, 3)
    expected = np.rot90(img, -1)  # 90 degrees clockwise
    assert np.abs(out.astype(int) - expected).mean() < 3
    # and the stored (unrotated) pixels are still available
    raw = read_image(path, apply_exif=False)
    assert raw.shape == (40, 48, 3)


def test_orientation_tag_one_and_absent_change_nothing():
    img = photo(20, 30)
    plain = encode(img, ".jpg")
    assert exif_orientation(plain) == 1
    assert decode_image(jpeg_with_orientation(plain, 1)).shape == img.shape
    assert exif_orientation(jpeg_with_orientation(plain, 9)) == 1  # invalid value: ignored


def test_apply_orientation_matches_definition():
    a = np.arange(6).reshape(2, 3)
    assert (apply_orientation(a, 1) == a).all()
    assert (apply_orientation(a, 2) == a[:, ::-1]).all()
    assert (apply_orientation(a, 3) == np.rot90(a, 2)).all()
    assert (apply_orientation(a, 4) == a[::-1]).all()
    assert (apply_orientation(a, 5) == a.T).all()
    assert (apply_orientation(a, 6) == np.rot90(a, -1)).all()
    assert (apply_orientation(a, 7) == np.rot90(a, 2).T).all()
    assert (apply_orientation(a, 8) == np.rot90(a, 1)).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_all_orientations_agree_with_pillow(fmt):
    """Each format, each orientation: what PIL's exif_transpose shows is what we read.

    TIFF matters most: OpenCV's TIFF decoder applies the tag itself even with
    IMREAD_UNCHANGED, so applying it again would turn the picture twice."""
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    rgb = photo(12, 20)[..., ::-1]
    src = Image.fromarray(np.ascontiguousarray(rgb))
    for o in range(1, 9):
        buf = io.BytesIO()
        if fmt == "TIFF":
            src.save(buf, format=fmt, tiffinfo={274: o})
        else:
            exif = Image.Exif()
            exif[0x0112] = o
            kw = {"quality": 100} if fmt == "JPEG" else ({"lossless": True} if fmt == "WEBP" else {})
            src.save(buf, format=fmt, exif=exif.tobytes(), **kw)
        data = buf.getvalue()
        assert exif_orientation(data) == o, (fmt, o)
        ours = decode_image(data)[..., ::-1]
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert ours.shape == ref.shape, (fmt, o)
        assert np.abs(ours.astype(int) - ref).max() <= (2 if fmt == "JPEG" else 0), (fmt, o)


# ------------------------------------------------------------------------------------------
# failures
# ------------------------------------------------------------------------------------------
def test_bad_files_raise_a_short_reason(tmp_path):
    img = photo()
    png = encode(img, ".png")
    jpg = encode(img, ".jpg")
    cases = {
        "empty.png": (b"", "empty file"),
        "text.jpg": (b"this is not a picture\n", "not an image"),
        "cut.png": (png[: len(png) // 2], "truncated PNG"),
        "cut.jpg": (jpg[: len(jpg) // 2], "truncated JPEG"),
        "head.jpg": (jpg[:10], "truncated JPEG"),
        "cut.webp": (encode(img, ".webp")[:60], "WebP"),
        "garbage.bmp": (b"BM" + bytes(100), "BMP"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert reason in msg, (name, msg)
        assert "\n" not in msg
    with pytest.raises(ImageReadError, match="cannot read file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def test_write_keeps_depth_and_alpha_where_the_format_can(tmp_path):
    rng = np.random.default_rng(1)
    deep = rng.integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    write_image(tmp_path / "d.png", deep)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), deep)
    write_image(tmp_path / "d.tif", deep)
    np.testing.assert_array_equal(read_image(tmp_path / "d.tif"), deep)
    write_image(tmp_path / "d.jpg", deep)  # JPEG: 8 bit
    assert read_image(tmp_path / "d.jpg").dtype == np.uint8
    rgba = rng.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    write_image(tmp_path / "a.webp", rgba, quality=101)
    np.testing.assert_array_equal(read_image(tmp_path / "a.webp"), rgba)
    write_image(tmp_path / "a.jpg", rgba)  # JPEG: alpha dropped
    assert read_image(tmp_path / "a.jpg").shape == (8, 9, 3)


def test_jpeg_quality_is_used(tmp_path):
    img = photo()
    write_image(tmp_path / "lo.jpg", img, quality=10)
    write_image(tmp_path / "hi.jpg", img, quality=98)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    img = photo()
    dst = tmp_path / "out.png"
    write_image(dst, img)
    before = sha(dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert oct(dst.stat().st_mode & 0o777) != oct(0o600)  # not the temp file's private mode

    # a failure while renaming: the old file is intact, the temp file is gone
    def broken_replace(a, b):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ImageWriteError, match="No space left"):
        write_image(dst, img[::-1].copy())
    monkeypatch.undo()
    assert sha(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]

    # an encoding failure never touches the destination
    with pytest.raises(ImageWriteError):
        write_image(dst, img.astype(np.float64))
    assert sha(dst) == before


def test_refuses_to_write_over_a_protected_file(tmp_path):
    img = photo()
    src = tmp_path / "in.png"
    write_image(src, img)
    before = sha(src)
    with pytest.raises(ImageWriteError, match="refusing to overwrite"):
        write_image(src, img[::-1].copy(), protect=[src])
    link = tmp_path / "link.png"
    os.link(src, link)  # same file under another name
    with pytest.raises(ImageWriteError, match="refusing"):
        write_image(link, img, protect=[src])
    assert sha(src) == before


def test_unknown_output_extension(tmp_path):
    with pytest.raises(ImageWriteError, match="extension"):
        write_image(tmp_path / "x.gifx", photo())
    with pytest.raises(ImageWriteError):
        encode_image(photo(), "gif")
