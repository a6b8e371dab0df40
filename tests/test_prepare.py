"""ebsr-prepare: DIV2K-style sub-image pairs, whole val images, LMDB, flat-crop filtering."""
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from ebsr_basicsr.cli.prepare import main as prepare_cli
from ebsr_basicsr.data.prepare import (
    PrepareConfig,
    PrepareError,
    bicubic_downsample,
    crop_positions,
    default_name,
    prepare,
)

pytest.importorskip("basicsr")


def _textured(h, w, seed):
    """A photo-like 8-bit image: smooth shapes plus fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([
        128 + 60 * np.sin(xx / 7.0 + c) * np.cos(yy / 11.0 - c) + rng.normal(0, 12, (h, w))
        for c in range(3)
    ], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture()
def hr_folder(tmp_path):
    folder = tmp_path / "toy_train_HR"
    folder.mkdir()
    cv2.imwrite(str(folder / "0001.png"), _textured(101, 130, 1))  # not divisible by 12
    img2 = _textured(96, 96, 2)
    img2[:, 48:] = 90  # right half perfectly flat
    cv2.imwrite(str(folder / "0002.png"), img2)
    cv2.imwrite(str(folder / "0003.jpg"), _textured(60, 72, 3))
    return folder


def _names(folder):
    return sorted(os.listdir(folder))


def test_crop_positions_follow_extract_subimages():
    assert crop_positions(100, 48, 24, 0) == [0, 24, 48, 52]
    assert crop_positions(96, 48, 24, 0) == [0, 24, 48]
    assert crop_positions(100, 48, 24, 10) == [0, 24, 48]  # 4 px left <= threshold
    assert crop_positions(40, 48, 24, 0) == []


def test_default_name():
    assert default_name("/x/DIV2K_train_HR") == "DIV2K"
    assert default_name("/x/photos-train") == "photos"
    assert default_name("/x/Flickr2K_HR/") == "Flickr2K"
    assert default_name("/x/mine") == "mine"


def test_train_pairs(hr_folder, tmp_path):
    out = tmp_path / "out"
    report = prepare(PrepareConfig(str(hr_folder), str(out), scales=(2, 3, 4), crop_size=48, step=24),
                     progress=False)
    hr_dir = out / "toy_train_HR_sub"
    assert report.hr_dir == str(hr_dir)
    names = _names(hr_dir)
    assert names[0] == "0001_s001.png" and "0003_s001.png" in names
    assert len(names) == report.written
    for s in (2, 3, 4):
        lr_dir = out / "toy_train_LR_bicubic" / f"X{s}_sub"
        assert _names(lr_dir) == names  # HR/LR pairs match by name
        for n in names[:3] + names[-2:]:
            hr = cv2.imread(str(hr_dir / n))
            lr = cv2.imread(str(lr_dir / n))
            assert hr.shape == (48, 48, 3) and lr.shape == (48 // s, 48 // s, 3)

    # 0001 is 101x130 -> mod-cropped to 96x120 -> rows 0,24,48; cols 0,24,48,72
    assert len([n for n in names if n.startswith("0001_")]) == 12

    # the LR crop is the crop of the bicubic-downsampled whole image: same content as
    # downsampling the HR crop, away from the crop border
    hr_full = cv2.imread(str(hr_folder / "0001.png"))[:96, :120]
    lr_full = bicubic_downsample(hr_full, 4)
    name = "0001_s006.png"  # row 1 (y=24), col 1 (x=24)
    lr = cv2.imread(str(out / "toy_train_LR_bicubic" / "X4_sub" / name))
    np.testing.assert_array_equal(lr, lr_full[6:18, 6:18])
    np.testing.assert_array_equal(cv2.imread(str(hr_dir / name)), hr_full[24:72, 24:72])
    lr_of_crop = bicubic_downsample(hr_full[24:72, 24:72], 4).astype(int)
    assert np.abs(lr_of_crop[2:-2, 2:-2] - lr.astype(int)[2:-2, 2:-2]).max() <= 1


def test_bicubic_matches_basicsr_imresize():
    from basicsr.utils.matlab_functions import imresize

    img = _textured(48, 36, 5)
    ref = np.clip(np.round(imresize(img.astype(np.float32) / 255.0, 1 / 3) * 255), 0, 255)
    np.testing.assert_array_equal(bicubic_downsample(img, 3), ref.astype(np.uint8))


def test_flat_crops_are_dropped_and_counted(hr_folder, tmp_path):
    kwargs = dict(scales=(2,), crop_size=48, step=48)
    full = prepare(PrepareConfig(str(hr_folder), str(tmp_path / "a"), **kwargs), progress=False)
    filtered = prepare(PrepareConfig(str(hr_folder), str(tmp_path / "b"), min_std=1.0, **kwargs),
                       progress=False)
    assert full.dropped_flat == 0
    assert filtered.dropped_flat == 2  # 0002's flat right half: two 48x48 crops
    assert filtered.written == full.written - 2
    kept = _names(tmp_path / "b" / "toy_train_HR_sub")
    assert "0002_s001.png" in kept and "0002_s002.png" not in kept  # numbering is kept
    by_grad = prepare(PrepareConfig(str(hr_folder), str(tmp_path / "c"), min_grad=0.5, **kwargs),
                      progress=False)
    assert by_grad.dropped_flat == 2


def test_val_mode_keeps_whole_images(hr_folder, tmp_path):
    out = tmp_path / "Set"
    report = prepare(PrepareConfig(str(hr_folder), str(out), val=True), progress=False)
    assert report.written == 3
    gt = cv2.imread(str(out / "GTmod12" / "0001.png"))
    assert gt.shape == (96, 120, 3)
    for s in (2, 3, 4):
        assert _names(out / f"LRbicx{s}") == ["0001.png", "0002.png", "0003.png"]
        lr = cv2.imread(str(out / f"LRbicx{s}" / "0001.png"))
        assert lr.shape == (96 // s, 120 // s, 3)
    np.testing.assert_array_equal(cv2.imread(str(out / "LRbicx4" / "0001.png")), bicubic_downsample(gt, 4))


def test_lmdb(hr_folder, tmp_path):
    import lmdb

    out = tmp_path / "out"
    report = prepare(PrepareConfig(str(hr_folder), str(out), scales=(4,), crop_size=48, step=48, lmdb=True),
                     progress=False)
    hr_lmdb = out / "toy_train_HR_sub.lmdb"
    lr_lmdb = out / "toy_train_LR_bicubic_X4_sub.lmdb"
    assert report.lmdb_paths == [str(hr_lmdb), str(lr_lmdb)]
    meta = (hr_lmdb / "meta_info.txt").read_text().splitlines()
    assert len(meta) == report.written
    assert meta[0] == "0001_s001.png (48,48,3) 1"
    assert (lr_lmdb / "meta_info.txt").read_text().splitlines()[0] == "0001_s001.png (12,12,3) 1"
    env = lmdb.open(str(lr_lmdb), readonly=True, lock=False)
    with env.begin() as txn:
        buf = txn.get(b"0001_s001")
    env.close()
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(img, cv2.imread(str(out / "toy_train_LR_bicubic" / "X4_sub" / "0001_s001.png")))


def test_workers_give_the_same_result(hr_folder, tmp_path):
    kwargs = dict(scales=(2, 4), crop_size=48, step=24)
    prepare(PrepareConfig(str(hr_folder), str(tmp_path / "a"), **kwargs), progress=False)
    prepare(PrepareConfig(str(hr_folder), str(tmp_path / "b"), workers=2, **kwargs), progress=False)
    for sub in ("toy_train_HR_sub", "toy_train_LR_bicubic/X2_sub"):
        names = _names(tmp_path / "a" / sub)
        assert names == _names(tmp_path / "b" / sub)
        for n in names[::5]:
            assert (tmp_path / "a" / sub / n).read_bytes() == (tmp_path / "b" / sub / n).read_bytes()


def test_errors(tmp_path, hr_folder):
    with pytest.raises(PrepareError, match="does not exist"):
        prepare(PrepareConfig(str(tmp_path / "missing"), str(tmp_path / "o")), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(PrepareError, match="no images"):
        prepare(PrepareConfig(str(empty), str(tmp_path / "o")), progress=False)
    with pytest.raises(PrepareError, match="divisible"):
        prepare(PrepareConfig(str(hr_folder), str(tmp_path / "o"), scales=(3,), crop_size=50, step=24),
                progress=False)
    prepare(PrepareConfig(str(hr_folder), str(tmp_path / "o"), scales=(2,), crop_size=48, step=48),
            progress=False)
    with pytest.raises(PrepareError, match="already exists"):
        prepare(PrepareConfig(str(hr_folder), str(tmp_path / "o"), scales=(2,), crop_size=48, step=48),
                progress=False)
    prepare(PrepareConfig(str(hr_folder), str(tmp_path / "o"), scales=(2,), crop_size=48, step=48,
                          overwrite=True), progress=False)
    with pytest.raises(PrepareError, match="no sub-images"):
        prepare(PrepareConfig(str(hr_folder), str(tmp_path / "big"), scales=(2,), crop_size=480, step=240),
                progress=False)


def test_cli(hr_folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(prepare_cli, [str(hr_folder), "--out", str(out), "--name", "toy", "--scales", "2,4",
                                         "--crop-size", "48", "--step", "48", "--min-std", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "dropped 2 of" in result.output
    assert (out / "toy_train_LR_bicubic" / "X4_sub" / "0001_s001.png").is_file()

    result = runner.invoke(prepare_cli, [str(tmp_path / "nope"), "--out", str(out)])
    assert result.exit_code != 0 and "does not exist" in result.output
    result = runner.invoke(prepare_cli, [str(hr_folder), "--out", str(out), "--scales", "x"])
    assert result.exit_code != 0

    result = runner.invoke(prepare_cli, [str(hr_folder), "--out", str(tmp_path / "val"), "--val", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "val" / "GTmod12" / "0002.png").is_file()


def test_prepare_command_names_what_writes_a_folder():
    from ebsr_basicsr.data.prepare import prepare_command

    src = "path/to/HR"
    assert prepare_command("datasets/DIV2K/DIV2K_train_HR_sub", 4, src) == \
        "ebsr-prepare path/to/HR --out datasets/DIV2K --name DIV2K --scales 4"
    assert prepare_command("datasets/DIV2K/DIV2K_train_LR_bicubic/X3_sub", 4, src) == \
        "ebsr-prepare path/to/HR --out datasets/DIV2K --name DIV2K --scales 3"
    assert prepare_command("d/DIV2K_train_LR_bicubic_X2_sub.lmdb", None, src) == \
        "ebsr-prepare path/to/HR --out d --name DIV2K --scales 2 --lmdb"
    assert prepare_command("datasets/Set5/GTmod12", 4, src) == "ebsr-prepare path/to/HR --out datasets/Set5 --val"
    assert prepare_command("datasets/Set5/LRbicx3.lmdb", 4, src) == \
        "ebsr-prepare path/to/HR --out datasets/Set5 --val --lmdb"
    assert prepare_command("my sets/S/GTmod4", 4, src) == \
        "ebsr-prepare path/to/HR --out 'my sets/S' --scales 4 --mod 4 --val"
    assert prepare_command("datasets/Set5/LRbicx8", 8, src) == \
        "ebsr-prepare path/to/HR --out datasets/Set5 --scales 8 --val"
    for other in ("datasets/mine", "X4_sub", "a/X4_sub", "a/b_train_LR_bicubic/X4_sub.lmdb"):
        assert prepare_command(other, 4, src) is None


def _bad_images(folder):
    """Good images beside an empty file, text named .png, a cut PNG and JPEG, and a name with
    control characters."""
    cv2.imwrite(str(folder / "good.png"), _textured(96, 96, 7))
    png = (folder / "good.png").read_bytes()
    ok, jpg = cv2.imencode(".jpg", _textured(96, 96, 8))
    (folder / "good2.jpg").write_bytes(jpg.tobytes())
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "cutj.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (folder / "bad\nname\x1b[2J.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return {
        "bad\\nname\\x1b[2J.png": "truncated PNG (the file ends before the IEND chunk)",
        "cut.png": "truncated PNG (the file ends inside a 'IDAT' chunk)",
        "cutj.jpg": "truncated JPEG (no end-of-image marker)",
        "empty.png": "empty file",
        "notes.png": "not an image file (unrecognised content)",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_images_are_reported_and_the_rest_prepared(tmp_path, workers):
    folder = tmp_path / "mixed"
    folder.mkdir()
    expected = _bad_images(folder)
    out = tmp_path / "out"
    result = CliRunner().invoke(prepare_cli, [str(folder), "--out", str(out), "--scales", "2", "--crop-size", "48",
                                              "--step", "48", "--workers", str(workers), "--quiet"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {name}: {why}" for name, why in sorted(expected.items())] + [
        "5 of 7 images failed, 2 prepared"]
    assert "7 input images -> 8 sub-images per folder" in result.stdout
    names = _names(out / "mixed_train_HR_sub")
    assert names == [f"good2_s00{i}.png" for i in range(1, 5)] + [f"good_s00{i}.png" for i in range(1, 5)]
    assert _names(out / "mixed_train_LR_bicubic" / "X2_sub") == names


def test_only_bad_images(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("text")
    report = prepare(PrepareConfig(str(folder), str(tmp_path / "out"), scales=(2,), crop_size=48, step=48, lmdb=True),
                     progress=False)
    assert report.written == 0 and report.lmdb_paths == []
    assert report.failed == [("a.png", "empty file"), ("b.jpg", "not an image file (unrecognised content)")]
    result = CliRunner().invoke(prepare_cli, [str(folder), "--out", str(tmp_path / "o2"), "--val", "--quiet"])
    assert result.exit_code == 1 and result.stderr.splitlines()[-1] == "2 of 2 images failed, 0 prepared"
