"""Turn a folder of HR images into the paired datasets that BasicSR's option files read.

Training sets (default) follow BasicSR's DIV2K layout::

    <out>/<name>_train_HR_sub/0001_s001.png                    HR sub-images
    <out>/<name>_train_LR_bicubic/X4_sub/0001_s001.png         matching LR sub-images
    <out>/<name>_train_HR_sub.lmdb, <name>_train_LR_bicubic_X4_sub.lmdb   (with lmdb=True)

Validation/test sets (``val=True``) keep whole images, in the layout of BasicSR's
benchmark folders (Set5, Set14, ...)::

    <out>/GTmod12/<image>.png         HR, mod-cropped so that every scale divides it
    <out>/LRbicx4/<image>.png         LR per scale (same file names as the HR)

How: every HR image is mod-cropped (its size cut down to a multiple of all requested
scales), the LR images are made from the *whole* mod-cropped HR with MATLAB-style
bicubic downsampling (``basicsr.utils.matlab_functions.imresize``, as DIV2K's LR images
were made), then HR and LR are cut at the same positions (HR ``crop_size``/``step``, LR
``crop_size/s``/``step/s``), which is what BasicSR's ``extract_subimages`` gives when run
on DIV2K's HR and LR folders. Sub-images are numbered in row-major order over all
positions (``_s001``, ``_s002`` ...), so dropping flat crops never renumbers the others.

Flat crops: wallpapers and photos often have large blurred or uniform regions that teach
a super-resolution network nothing. ``min_std`` (standard deviation of the grey HR crop,
0..255) and ``min_grad`` (mean absolute grey-level difference between neighbouring
pixels, 0..255) drop crops below the given thresholds; the report counts them.

Command line: ``ebsr-prepare`` or ``python -m ebsr_basicsr.data.prepare``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path, PurePath
from typing import Iterable, NamedTuple, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
DEFAULT_SCALES = (2, 3, 4)
PNG_COMPRESSION = 3  # what BasicSR's extract_subimages uses: fast, and files stay small


class PrepareError(ValueError):
    """Invalid input for dataset preparation (missing/empty folder, bad sizes...)."""


@dataclass
class PrepareConfig:
    """Settings of one preparation run (see the module docstring)."""

    input_dir: str
    out_dir: str
    name: str | None = None
    scales: Sequence[int] = DEFAULT_SCALES
    val: bool = False
    crop_size: int = 480
    step: int = 240
    thresh_size: int = 0
    mod: int | None = None
    min_std: float = 0.0
    min_grad: float = 0.0
    lmdb: bool = False
    workers: int = 1
    overwrite: bool = False
    compress_level: int = PNG_COMPRESSION


@dataclass
class PrepareReport:
    """What a preparation run wrote."""

    images: int = 0
    written: int = 0  # sub-images (train) or whole images (val) per folder
    dropped_flat: int = 0
    skipped_small: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (file name, reason) of each image that could not be read
    hr_dir: str = ""
    lr_dirs: dict = field(default_factory=dict)  # scale -> folder
    lmdb_paths: list = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers
def default_name(input_dir: str) -> str:
    """Dataset name from the input folder: ``DIV2K_train_HR`` -> ``DIV2K``,
    ``photos-train`` -> ``photos``."""
    name = Path(input_dir).resolve().name
    for suffix in ("_train_HR", "_valid_HR", "_HR", "-HR", "_train", "-train", "_val", "-val"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def list_images(input_dir: str) -> list[Path]:
    """Image files directly inside ``input_dir`` (sorted), or a PrepareError."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise PrepareError(f"input folder does not exist or is not a folder: {input_dir}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise PrepareError(
            f"no images in {input_dir} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    stems = [p.stem for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise PrepareError(f"several images share a name (different extensions): {duplicates[:5]}")
    return files


def lcm(values: Iterable[int]) -> int:
    return reduce(lambda a, b: a * b // math.gcd(a, b), values, 1)


def crop_positions(length: int, crop_size: int, step: int, thresh_size: int) -> list[int]:
    """Start offsets of crops along one axis, as BasicSR's extract_subimages places them:
    every ``step``, plus one crop flush with the end when more than ``thresh_size`` pixels
    would otherwise be left over."""
    if length < crop_size:
        return []
    positions = list(range(0, length - crop_size + 1, step))
    if length - (positions[-1] + crop_size) > thresh_size:
        positions.append(length - crop_size)
    return positions


def flatness(crop_bgr: np.ndarray) -> tuple[float, float]:
    """(standard deviation, mean absolute neighbour difference) of the grey crop, 0..255."""
    grey = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    std = float(grey.std())
    gx = np.abs(np.diff(grey, axis=1)).mean() if grey.shape[1] > 1 else 0.0
    gy = np.abs(np.diff(grey, axis=0)).mean() if grey.shape[0] > 1 else 0.0
    return std, float((gx + gy) / 2.0)


def read_image(path: Path) -> np.ndarray:
    """8-bit BGR image, upright by its EXIF orientation (grey is expanded to 3 channels,
    alpha dropped, 16 bits rounded to 8). A PrepareError gives the reason a file is not one
    (unreadable, empty, truncated, corrupt, not an image), as ``ebsr-upscale`` reads them."""
    from ..upscale.imageio import ImageReadError, read_image as read_stored

    try:
        img = read_stored(path)
    except ImageReadError as exc:
        raise PrepareError(str(exc)) from None
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise PrepareError(f"{img.dtype} pixels are not supported (8- or 16-bit images only)")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[:, :, :3]) if img.shape[2] == 4 else img


def bicubic_downsample(img_bgr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(img, 1/scale, 'bicubic')`` of an 8-bit image, rounded to 8 bits."""
    from basicsr.utils.matlab_functions import imresize  # heavy import: only when used

    h, w = img_bgr.shape[:2]
    if h % scale or w % scale:
        raise PrepareError(f"image size {w}x{h} is not divisible by scale {scale}")
    lr = imresize(img_bgr.astype(np.float32) / 255.0, 1.0 / scale)
    lr = np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)
    if lr.shape[:2] != (h // scale, w // scale):  # imresize rounds the size up
        raise RuntimeError(f"unexpected LR size {lr.shape[:2]} for {w}x{h} / {scale}")
    return lr


def mod_crop(img: np.ndarray, mod: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % mod, : w - w % mod]


def _write_png(path: str, img: np.ndarray, compress_level: int) -> None:
    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level]):
        raise OSError(f"cannot write {path}")


# -------------------------------------------------------------------------- the work
def output_dirs(cfg: PrepareConfig) -> tuple[str, dict]:
    """(HR folder, {scale: LR folder}) that ``cfg`` writes to."""
    mod = cfg.mod or lcm(cfg.scales)
    if cfg.val:
        hr = os.path.join(cfg.out_dir, f"GTmod{mod}")
        lrs = {s: os.path.join(cfg.out_dir, f"LRbicx{s}") for s in cfg.scales}
    else:
        name = cfg.name or default_name(cfg.input_dir)
        hr = os.path.join(cfg.out_dir, f"{name}_train_HR_sub")
        lrs = {s: os.path.join(cfg.out_dir, f"{name}_train_LR_bicubic", f"X{s}_sub") for s in cfg.scales}
    return hr, lrs


def prepare_command(folder: str, scale: int | None = None, source: str = "path/to/HR_images") -> str | None:
    """The ``ebsr-prepare`` command that writes ``folder`` (a path as an option file names
    it, e.g. ``datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub``), with ``source`` standing for
    the folder of HR images; None when ``folder`` is not named the way ebsr-prepare names its
    output. ``scale`` (the option file's) is used when the name does not tell it."""
    path = PurePath(folder)
    name = path.name
    lmdb = name.endswith(".lmdb")
    stem = name[: -len(".lmdb")] if lmdb else name
    out, data_name, scales, val, mod = path.parent, None, [scale] if scale else [], False, None
    if match := re.fullmatch(r"GTmod(\d+)", stem):
        val, mod = True, int(match[1])
    elif match := re.fullmatch(r"LRbicx(\d+)", stem):
        val, scales = True, [int(match[1])]
    elif match := re.fullmatch(r"(.+)_train_HR_sub", stem):
        data_name = match[1]
    elif match := re.fullmatch(r"(.+)_train_LR_bicubic_X(\d+)_sub", stem):  # the LMDB of an LR folder
        data_name, scales = match[1], [int(match[2])]
    elif (match := re.fullmatch(r"X(\d+)_sub", stem)) and not lmdb and \
            (parent := re.fullmatch(r"(.+)_train_LR_bicubic", path.parent.name)):
        out, data_name, scales = path.parent.parent, parent[1], [int(match[1])]
    else:
        return None
    words = ["ebsr-prepare", source, "--out", out.as_posix()]
    if val:
        # the default scales 2,3,4 give GTmod12 and LRbicx2/3/4 (BasicSR's benchmark layout)
        if mod is not None and mod != lcm(DEFAULT_SCALES):
            words += ["--scales", ",".join(map(str, scales or [mod])), "--mod", str(mod)]
        elif mod is None and scales[0] not in DEFAULT_SCALES:
            words += ["--scales", str(scales[0])]
        words.append("--val")
    else:
        words += ["--name", data_name]
        if scales:
            words += ["--scales", ",".join(map(str, scales))]
    if lmdb:
        words.append("--lmdb")
    return " ".join(shlex.quote(w) for w in words)


class _Result(NamedTuple):
    """What :func:`_process_image` did with one HR image."""

    name: str  # the file's name
    written: int = 0
    dropped: int = 0
    too_small: bool = False
    error: str | None = None  # why the image could not be read


def _process_image(job) -> _Result:
    """Worker: prepare one HR image."""
    path, cfg, hr_dir, lr_dirs = job
    mod = cfg.mod or lcm(cfg.scales)
    name, stem = Path(path).name, Path(path).stem
    try:
        hr = mod_crop(read_image(Path(path)), mod)
    except PrepareError as exc:
        return _Result(name, error=str(exc))
    h, w = hr.shape[:2]
    if h == 0 or w == 0:
        return _Result(name, too_small=True)
    lrs = {s: bicubic_downsample(hr, s) for s in cfg.scales}

    if cfg.val:
        _write_png(os.path.join(hr_dir, f"{stem}.png"), hr, cfg.compress_level)
        for s, lr in lrs.items():
            _write_png(os.path.join(lr_dirs[s], f"{stem}.png"), lr, cfg.compress_level)
        return _Result(name, written=1)

    ys = crop_positions(h, cfg.crop_size, cfg.step, cfg.thresh_size)
    xs = crop_positions(w, cfg.crop_size, cfg.step, cfg.thresh_size)
    if not ys or not xs:
        return _Result(name, too_small=True)
    written = dropped = 0
    index = 0
    for y in ys:
        for x in xs:
            index += 1
            crop = hr[y : y + cfg.crop_size, x : x + cfg.crop_size]
            if cfg.min_std > 0 or cfg.min_grad > 0:
                std, grad = flatness(crop)
                if std < cfg.min_std or grad < cfg.min_grad:
                    dropped += 1
                    continue
            sub_name = f"{stem}_s{index:03d}.png"
            _write_png(os.path.join(hr_dir, sub_name), np.ascontiguousarray(crop), cfg.compress_level)
            for s, lr in lrs.items():
                c, y_s, x_s = cfg.crop_size // s, y // s, x // s
                lr_crop = np.ascontiguousarray(lr[y_s : y_s + c, x_s : x_s + c])
                _write_png(os.path.join(lr_dirs[s], sub_name), lr_crop, cfg.compress_level)
            written += 1
    return _Result(name, written, dropped)


def _init_worker():
    # Each worker resizes with torch: one thread each, or N workers fight over the cores.
    import torch

    torch.set_num_threads(1)


def _validate(cfg: PrepareConfig) -> None:
    if not cfg.scales:
        raise PrepareError("no scale given")
    for s in cfg.scales:
        if int(s) != s or s < 1:
            raise PrepareError(f"scales must be positive integers, got {s}")
    if cfg.mod is not None and any(cfg.mod % s for s in cfg.scales):
        raise PrepareError(f"mod {cfg.mod} must be a multiple of every scale {list(cfg.scales)}")
    if not cfg.val:
        if cfg.crop_size <= 0 or cfg.step <= 0 or cfg.thresh_size < 0:
            raise PrepareError("crop size and step must be > 0 and the threshold >= 0")
        for s in cfg.scales:
            if cfg.crop_size % s or cfg.step % s:
                raise PrepareError(
                    f"crop size {cfg.crop_size} and step {cfg.step} must be divisible by every "
                    f"scale {list(cfg.scales)} (so that LR crops line up with HR crops)"
                )
    if cfg.workers < 1:
        raise PrepareError("workers must be >= 1")


def _make_lmdb(folder: str, lmdb_path: str, progress: bool) -> None:
    """LMDB of every PNG in ``folder`` with basicsr's layout (``basicsr.utils.lmdb_util``:
    keys = file stems, ``meta_info.txt`` lines ``name.png (h,w,c) compress_level``)."""
    from basicsr.utils.lmdb_util import LmdbMaker, read_img_worker
    from tqdm import tqdm

    names = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    if not names:
        raise PrepareError(f"nothing to put into {lmdb_path}: {folder} has no PNG")
    keys = [os.path.splitext(n)[0] for n in names]
    non_ascii = [k for k in keys if not k.isascii()]
    if non_ascii:
        raise PrepareError(f"LMDB keys must be ASCII; rename these images: {non_ascii[:5]}")
    # Map size: an upper bound of the data (uncompressed 8-bit pixels) plus slack.
    raw = 0
    for n in names:
        with open(os.path.join(folder, n), "rb") as f:
            f.seek(16)  # PNG IHDR: width and height, big-endian, at bytes 16..24
            width, height = int.from_bytes(f.read(4), "big"), int.from_bytes(f.read(4), "big")
        raw += width * height * 3
    maker = LmdbMaker(lmdb_path, map_size=int(raw * 1.5) + (64 << 20))
    try:
        for name, key in tqdm(list(zip(names, keys)), unit="img", desc=os.path.basename(lmdb_path),
                              disable=not progress):
            _, img_byte, shape = read_img_worker(os.path.join(folder, name), key, maker.compress_level)
            maker.put(img_byte, key, shape)
    finally:
        maker.close()


def prepare(cfg: PrepareConfig, progress: bool = True) -> PrepareReport:
    """Run one preparation (see the module docstring). Raises PrepareError on bad input
    or when an output folder already exists and ``cfg.overwrite`` is False. An image that
    cannot be read does not stop the run: it is listed in ``report.failed`` with the reason."""
    from tqdm import tqdm

    cfg.scales = sorted({int(s) for s in cfg.scales})
    _validate(cfg)
    files = list_images(cfg.input_dir)
    hr_dir, lr_dirs = output_dirs(cfg)
    targets = [hr_dir, *lr_dirs.values()]
    lmdb_paths = []
    if cfg.lmdb:
        if cfg.val:
            lmdb_paths = [d + ".lmdb" for d in targets]
        else:
            name = cfg.name or default_name(cfg.input_dir)
            lmdb_paths = [hr_dir + ".lmdb"] + [
                os.path.join(cfg.out_dir, f"{name}_train_LR_bicubic_X{s}_sub.lmdb") for s in cfg.scales
            ]
    existing = [p for p in targets + lmdb_paths if os.path.exists(p)]
    if existing and not cfg.overwrite:
        raise PrepareError(f"output already exists (use overwrite to replace it): {existing[0]}")
    for p in existing:
        shutil.rmtree(p)
    for d in targets:
        os.makedirs(d, exist_ok=True)

    report = PrepareReport(images=len(files), hr_dir=hr_dir, lr_dirs=dict(lr_dirs), lmdb_paths=lmdb_paths)
    jobs = [(str(p), cfg, hr_dir, lr_dirs) for p in files]
    what = "images" if cfg.val else "sub-images"
    bar = tqdm(total=len(jobs), unit="img", desc=f"{Path(cfg.input_dir).name} -> {what}", disable=not progress)
    if cfg.workers > 1:
        import multiprocessing

        with multiprocessing.Pool(cfg.workers, initializer=_init_worker) as pool:
            results = []
            for result in pool.imap_unordered(_process_image, jobs):
                results.append(result)
                bar.update(1)
    else:
        results = []
        for job in jobs:
            results.append(_process_image(job))
            bar.update(1)
    bar.close()

    for result in sorted(results):
        report.written += result.written
        report.dropped_flat += result.dropped
        if result.too_small:
            report.skipped_small.append(Path(result.name).stem)
        if result.error is not None:
            report.failed.append((result.name, result.error))
    if report.skipped_small:
        logger.warning("%d image(s) smaller than the crop size were skipped: %s",
                       len(report.skipped_small), ", ".join(report.skipped_small[:10]))
    if report.failed and report.written == 0:
        report.lmdb_paths = []  # nothing to put into them; the caller reports the failures
        return report
    if report.written == 0:
        raise PrepareError(
            f"no {what} written from {cfg.input_dir}: images smaller than the crop size "
            f"({cfg.crop_size}) or all crops dropped as flat"
        )
    logger.info("%d %s written (%d flat crops dropped) from %d images",
                report.written, what, report.dropped_flat, report.images)

    for folder, lmdb_path in zip(targets, lmdb_paths):
        _make_lmdb(folder, lmdb_path, progress)
    return report


if __name__ == "__main__":
    from ebsr_basicsr.cli.prepare import main

    main()
