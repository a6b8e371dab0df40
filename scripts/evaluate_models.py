"""Score runtime models on a folder of HR photos for several degradations, beside bicubic and
the fast FP models people use today (the anchors), as one table per scale.

    python scripts/evaluate_models.py HR_DIR [--model A.ebsr B.ebsr ...] [--scales 2,3,4]
        [--degradations matlab,cubic,area,matlab+jpeg75] [--anchors DIR | --no-anchors]
        [--json OUT.json] [--write-lr DIR] [--per-image] [--ssim]

Models: without ``--model`` the embedded default models of each scale in ``--scales``; with
``--model`` each file is scored at its own scale.

For each scale and degradation, every HR image is mod-cropped to the scale and its LR image
is made by the degradation (``ebsr_basicsr.data.degradations``: ``matlab`` is MATLAB's
antialiased bicubic, the papers' protocol; ``cubic``/``area``/``linear`` are OpenCV's
resizes; ``+jpeg75``, ``+noise4``... add compression or noise, drawn from a fixed seed). The
baseline is MATLAB-style bicubic upsampling of that LR image (basicsr ``imresize``); models
run through the bitwise runtime. PSNR and SSIM are computed on the Y channel with
``crop_border = scale`` (basicsr's metrics), as in the papers.

Anchors: OpenCV dnn_superres models (ESPCN, FSRCNN, FSRCNN-small, LapSRN) run by a folder
holding ``run_anchors.py`` and ``setup.sh`` (``--anchors DIR``; by default ``shared/anchors``
beside the repository, when it exists). They run in their own Python (the one ``setup.sh``
prints) on the same LR images.

The table of a scale has one row per degradation: bicubic PSNR, then each model's and each
anchor's gain over bicubic, then the best anchor and its gain, then each model's margin over
that best anchor (means over the images). ``--json`` writes every number (per image and
mean, PSNR and SSIM); ``--write-lr DIR`` also writes ``DIR/GTmod<s>/<name>.png`` and
``DIR/LR_<degradation>_x<s>/<name>.png`` for a BasicSR validation set. Exit status 2 on a
usage error, an unreadable model or a failing anchor run; unreadable images are skipped.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ebsr_basicsr.data.degradations import Degradation, DegradationError, bicubic_upscale, parse_degradation
from ebsr_basicsr.upscale.imageio import (IMAGE_EXTENSIONS, ImageReadError, ImageWriteError, read_image,
                                          write_image)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: where the anchors are looked for when ``--anchors`` is not given
DEFAULT_ANCHORS = REPO_ROOT.parent / "shared" / "anchors"
DEFAULT_DEGRADATIONS = "matlab,cubic,area,matlab+jpeg75"
SEED = 0
#: SSIM's Gaussian window (11 x 11, valid) must fit in the HR image once the border is cropped
SSIM_WINDOW = 11


class EvalError(Exception):
    """A user-facing error (the message says what and why); the script exits with status 2."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def list_images(hr_dir: Path) -> List[Path]:
    """The image files of ``hr_dir`` (not recursive), sorted by name."""
    if not hr_dir.is_dir():
        raise EvalError(f"{hr_dir}: not a folder")
    return sorted(p for p in hr_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def to_bgr8(img: np.ndarray) -> np.ndarray:
    """An image as :func:`read_image` returns it as uint8 BGR: 16-bit rounded to 8 bits, gray
    repeated on three channels, alpha dropped."""
    if img.dtype == np.uint16:
        img = np.rint(img / 257.0).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


def load_hr(path: Path) -> np.ndarray:
    """uint8 BGR HR image; ImageReadError with the reason when it cannot be read."""
    return to_bgr8(read_image(path))


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    return np.ascontiguousarray(img[:h, :w])


def check_images(paths: Sequence[Path], scales: Sequence[int]) -> Tuple[List[Path], Dict[str, str]]:
    """The paths that can be scored at every scale, and {file name: reason} for the others
    (unreadable, too small for the metrics, or a name already taken by another file)."""
    good, skipped, names = [], {}, set()
    for path in paths:
        try:
            h, w = load_hr(path).shape[:2]
        except ImageReadError as e:
            skipped[path.name] = str(e)
            continue
        small = [s for s in scales if min(h - h % s, w - w % s) - 2 * s < SSIM_WINDOW]
        if small:
            skipped[path.name] = f"{w}x{h} is too small to score at x{max(small)}"
        elif path.stem in names:
            skipped[path.name] = f"another image is already named {path.stem!r}"
        else:
            names.add(path.stem)
            good.append(path)
    return good, skipped


def image_seed(seed: int, scale: int, degradation: str, name: str) -> np.random.Generator:
    """The generator of one LR image's noise: fixed by the seed, scale, degradation and image
    name, so adding images or degradations changes no other LR image."""
    return np.random.default_rng([seed, scale, zlib.crc32(degradation.encode()), zlib.crc32(name.encode())])


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> Dict[str, float]:
    """PSNR (dB) and SSIM of ``sr`` against ``hr`` on Y, ``crop_border = scale``."""
    from basicsr.metrics import calculate_psnr, calculate_ssim

    if sr.shape != hr.shape:
        raise EvalError(f"output is {sr.shape[1]}x{sr.shape[0]}, expected {hr.shape[1]}x{hr.shape[0]}")
    return {"psnr": float(calculate_psnr(sr, hr, scale, test_y_channel=True)),
            "ssim": float(calculate_ssim(sr, hr, scale, test_y_channel=True))}


# --------------------------------------------------------------------------------------------
# models and anchors
# --------------------------------------------------------------------------------------------
@dataclass
class Model:
    """A runtime model file and its loaded engine."""

    path: Path
    engine: object
    ensemble: bool = False

    @property
    def scale(self) -> int:
        return int(self.engine.scale)

    def upscale(self, lr: np.ndarray) -> np.ndarray:
        return self.engine.upscale(lr, self.ensemble)


def load_models(paths: Sequence[Path], ensemble: bool = False) -> Dict[str, Model]:
    """{name: Model} for the model files, named by file stem (made unique); with ``ensemble``
    each also as ``<name>+``, run with geometric self-ensemble. EvalError when a file does
    not load."""
    from ebsr_basicsr.runtime import Engine, ModelFileError

    models = {}
    for path in paths:
        try:
            engine = Engine.load(path)
        except ModelFileError as e:
            raise EvalError(f"cannot load model: {e}") from None
        name, n = Path(path).stem, 1
        while name in models or name == "bicubic":
            n += 1
            name = f"{Path(path).stem}#{n}"
        models[name] = Model(Path(path), engine)
        if ensemble:
            models[name + "+"] = Model(Path(path), engine, ensemble=True)
    return models


def default_model_paths(scales: Sequence[int]) -> List[Path]:
    from ebsr_basicsr.weights import NoDefaultModel, default_model_path

    try:
        return [default_model_path(s) for s in scales]
    except (NoDefaultModel, ValueError) as e:
        raise EvalError(str(e)) from None


def find_anchors(explicit: Optional[Path], disabled: bool, default: Path = DEFAULT_ANCHORS) -> Optional[Path]:
    """The anchors folder to use, or None (with a line on stderr saying why they are skipped)."""
    if disabled:
        return None
    folder = explicit if explicit is not None else default
    ok = (folder / "run_anchors.py").is_file() and (folder / "setup.sh").is_file()
    if explicit is not None and not ok:
        raise EvalError(f"--anchors {explicit}: no run_anchors.py and setup.sh there")
    if not ok:
        say(f"anchors skipped: no {default} (give --anchors DIR, or --no-anchors to silence this)")
        return None
    return folder


@dataclass
class Anchors:
    """The anchors folder and the Python that runs them."""

    folder: Path
    python: str

    @classmethod
    def prepare(cls, folder: Path) -> "Anchors":
        """Run the folder's ``setup.sh`` (builds its environment once) and keep the Python it prints."""
        say(f"anchors: {folder} (setup.sh)")
        done = subprocess.run(["sh", str(folder / "setup.sh")], capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines or not Path(lines[-1].strip()).is_file():
            raise EvalError(f"anchors: {folder / 'setup.sh'} failed (exit {done.returncode}): "
                            f"{last_line(done.stderr) or 'it printed no python'}")
        return cls(folder, lines[-1].strip())

    def run(self, lr_dir: Path, out_dir: Path, scale: int) -> List[str]:
        """Upscale every PNG of ``lr_dir`` into ``out_dir/<anchor>/``; the anchors that ran."""
        done = subprocess.run([self.python, str(self.folder / "run_anchors.py"), str(lr_dir), str(out_dir),
                               str(scale)], capture_output=True, text=True)
        if done.returncode != 0:
            raise EvalError(f"anchors: run_anchors.py failed at x{scale} (exit {done.returncode}): "
                            f"{last_line(done.stderr)}")
        return sorted(p.name for p in out_dir.iterdir() if p.is_dir()) if out_dir.is_dir() else []


def last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def summarize(per_image: Dict[str, Dict[str, float]]) -> dict:
    """``{"per_image": ..., "mean": {"psnr", "ssim"}}`` (means over the images)."""
    mean = {k: float(np.mean([m[k] for m in per_image.values()])) for k in ("psnr", "ssim")}
    return {"per_image": per_image, "mean": mean}


def write_lr_files(folder: Optional[Path], scale: int, degradation: str, name: str, hr: np.ndarray,
                   lr: np.ndarray) -> None:
    """BasicSR's benchmark layout: ``GTmod<s>/<name>.png`` and ``LR_<degradation>_x<s>/<name>.png``."""
    if folder is None:
        return
    try:
        gt = folder / f"GTmod{scale}" / f"{name}.png"
        if not gt.exists():
            gt.parent.mkdir(parents=True, exist_ok=True)
            write_image(gt, hr)
        lr_path = folder / f"LR_{degradation}_x{scale}" / f"{name}.png"
        lr_path.parent.mkdir(parents=True, exist_ok=True)
        write_image(lr_path, lr)
    except (OSError, ImageWriteError) as e:
        raise EvalError(f"--write-lr: cannot write under {folder}: {e}") from None


def score_anchors(anchors: Anchors, lr_dir: Path, hr_paths: Sequence[Path], scale: int) -> Dict[str, dict]:
    """Run the anchors on the LR images of ``lr_dir`` and score their outputs."""
    out_dir = lr_dir.parent / "anchors_out"
    shutil.rmtree(out_dir, ignore_errors=True)
    names = anchors.run(lr_dir, out_dir, scale)
    per_image = {a: {} for a in names}
    for path in hr_paths:
        hr = mod_crop(load_hr(path), scale)
        for anchor in names:
            try:
                sr = to_bgr8(read_image(out_dir / anchor / f"{path.stem}.png"))
                per_image[anchor][path.stem] = score(sr, hr, scale)
            except (ImageReadError, EvalError) as e:
                raise EvalError(f"anchor {anchor} x{scale}, {path.stem}: {e}") from None
    return {a: summarize(v) for a, v in per_image.items()}


def evaluate_degradation(degradation: Degradation, scale: int, hr_paths: Sequence[Path], models: Dict[str, Model],
                         anchors: Optional[Anchors], workdir: Path, write_lr: Optional[Path], seed: int,
                         bar=None) -> dict:
    """Bicubic, models and anchors on the LR images of one degradation at one scale."""
    spec = degradation.name
    lr_dir = workdir / "lr"
    shutil.rmtree(lr_dir, ignore_errors=True)
    lr_dir.mkdir(parents=True)
    bicubic, per_model = {}, {m: {} for m in models}
    for path in hr_paths:
        hr = mod_crop(load_hr(path), scale)
        lr = degradation.apply_uint8(hr, scale, image_seed(seed, scale, spec, path.stem))
        if not cv2.imwrite(str(lr_dir / f"{path.stem}.png"), lr):
            raise EvalError(f"cannot write a temporary LR image under {lr_dir}")
        write_lr_files(write_lr, scale, spec, path.stem, hr, lr)
        bicubic[path.stem] = score(bicubic_upscale(lr, scale), hr, scale)
        for name, model in models.items():
            per_model[name][path.stem] = score(model.upscale(lr), hr, scale)
        if bar is not None:
            bar.update(1)
    result = {"bicubic": summarize(bicubic), "models": {m: summarize(v) for m, v in per_model.items()},
              "anchors": {}}
    if anchors is not None:
        if bar is not None:
            bar.set_postfix_str(f"{spec}: anchors")
        result["anchors"] = score_anchors(anchors, lr_dir, hr_paths, scale)
    return result


def evaluate(hr_paths: Sequence[Path], models: Dict[str, Model], degradations: Sequence[Degradation],
             anchors: Optional[Anchors] = None, write_lr: Optional[Path] = None, seed: int = SEED,
             progress: bool = True) -> dict:
    """Every number of one run: ``{"seed", "images", "scales": {"x<s>": {"scale", "models",
    "anchors", "degradations": {spec: {"bicubic", "models": {..}, "anchors": {..}}}}}}`` where
    each leaf is ``{"per_image": {image: {"psnr", "ssim"}}, "mean": {"psnr", "ssim"}}``.
    Each model is scored at its own scale."""
    from tqdm import tqdm

    by_scale: Dict[int, Dict[str, Model]] = {}
    for name, model in models.items():
        by_scale.setdefault(model.scale, {})[name] = model
    results = {"seed": seed, "images": [p.stem for p in hr_paths], "scales": {}}
    with tempfile.TemporaryDirectory(prefix="evaluate_models_") as tmp:
        for scale in sorted(by_scale):
            group = by_scale[scale]
            rows = {}
            with tqdm(total=len(hr_paths) * len(degradations), desc=f"x{scale}", unit="image", file=sys.stderr,
                      disable=not progress, leave=False) as bar:
                for degradation in degradations:
                    bar.set_postfix_str(degradation.name)
                    rows[degradation.name] = evaluate_degradation(degradation, scale, hr_paths, group, anchors,
                                                                  Path(tmp), write_lr, seed, bar)
            anchor_names = sorted({a for row in rows.values() for a in row["anchors"]})
            results["scales"][f"x{scale}"] = {
                "scale": scale,
                "models": {m: {"path": str(v.path), "arch": v.engine.arch} for m, v in group.items()},
                "anchors": anchor_names, "degradations": rows}
    return results


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
FORMATS = {"psnr": ("{:.2f}", "{:+.2f}", "PSNR (dB)"), "ssim": ("{:.4f}", "{:+.4f}", "SSIM")}


def table_row(label: str, values: Dict[str, float], models: Sequence[str], anchors: Sequence[str],
              metric: str) -> List[str]:
    """One row: bicubic, gains over it, best anchor and its gain, each model's margin over it.
    ``values`` maps "bicubic", model names and ``("anchor", name)`` keys to the metric."""
    plain, signed, _ = FORMATS[metric]
    base = values["bicubic"]
    cells = [label, plain.format(base)]
    cells += [signed.format(values[m] - base) for m in models]
    present = [a for a in anchors if ("anchor", a) in values]
    cells += [signed.format(values[("anchor", a)] - base) if a in present else "" for a in anchors]
    if anchors:
        if present:
            best = max(present, key=lambda a: values[("anchor", a)])
            top = values[("anchor", best)]
            cells += [best, signed.format(top - base)] + [signed.format(values[m] - top) for m in models]
        else:
            cells += ["", ""] + [""] * len(models)
    return cells


def row_values(row: dict, models: Sequence[str], metric: str, image: Optional[str] = None) -> Dict:
    def pick(entry):
        return entry["mean"][metric] if image is None else entry["per_image"][image][metric]

    values = {"bicubic": pick(row["bicubic"])}
    values.update({m: pick(row["models"][m]) for m in models})
    values.update({("anchor", a): pick(e) for a, e in row["anchors"].items()})
    return values


def format_table(scale_result: dict, metric: str = "psnr", per_image: bool = False) -> str:
    """The markdown table of one scale (rows = degradations; with ``per_image`` each
    degradation's image rows come before its mean)."""
    models, anchors = list(scale_result["models"]), list(scale_result["anchors"])
    unit = FORMATS[metric][2]
    header = ["degradation", f"bicubic {unit}"] + [f"{m} gain" for m in models] + [f"{a} gain" for a in anchors]
    if anchors:
        header += ["best anchor", "best anchor gain"] + [f"{m} − best anchor" for m in models]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec, row in scale_result["degradations"].items():
        if per_image:
            for image in row["bicubic"]["per_image"]:
                lines.append("| " + " | ".join(table_row(f"{spec} · {image}", row_values(row, models, metric, image),
                                                         models, anchors, metric)) + " |")
        label = f"**{spec}** (mean)" if per_image else spec
        lines.append("| " + " | ".join(table_row(label, row_values(row, models, metric), models, anchors, metric))
                     + " |")
    return "\n".join(lines)


def format_report(results: dict, per_image: bool = False, ssim: bool = False) -> str:
    """All tables of a run, one per scale (and one more per scale for SSIM with ``ssim``)."""
    parts = []
    for key, scale_result in results["scales"].items():
        scale = scale_result["scale"]
        models = ", ".join(f"{m} ({v['arch']}, {v['path']})" for m, v in scale_result["models"].items())
        anchors = ", ".join(scale_result["anchors"]) or "none"
        parts.append(f"### {key}: {len(results['images'])} images, Y channel, border {scale} cropped; "
                     f"gains over bicubic\n\nmodels: {models}\nanchors: {anchors}\n")
        parts.append(format_table(scale_result, "psnr", per_image) + "\n")
        if ssim:
            parts.append(format_table(scale_result, "ssim", per_image) + "\n")
    return "\n".join(parts)


def save_json(results: dict, path: Path) -> None:
    try:
        path.write_text(json.dumps(results, indent=1) + "\n")
    except OSError as e:
        raise EvalError(f"--json: cannot write {path}: {e.strerror or e}") from None


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def parse_scales(text: str) -> List[int]:
    try:
        scales = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected scales like 2,3,4, got {text!r}") from None
    if not scales:
        raise argparse.ArgumentTypeError("no scale given")
    return scales


def parse_degradations(text: str) -> List[Degradation]:
    out = {}
    try:
        for spec in text.split(","):
            if spec.strip():
                degradation = parse_degradation(spec)
                out.setdefault(degradation.name, degradation)
    except DegradationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not out:
        raise argparse.ArgumentTypeError("no degradation given")
    return list(out.values())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hr_dir", type=Path, help="folder of HR images")
    ap.add_argument("--model", type=Path, nargs="+", action="extend", default=None,
                    help="runtime model files (.ebsr); repeat the option or list several after it")
    ap.add_argument("--scales", type=parse_scales, default=None,
                    help="scales of the embedded models to score, without --model (default 2,3,4)")
    ap.add_argument("--degradations", type=parse_degradations, default=DEFAULT_DEGRADATIONS,
                    help=f"comma-separated degradations (default {DEFAULT_DEGRADATIONS})")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--anchors", type=Path, default=None, metavar="DIR",
                       help=f"folder with run_anchors.py and setup.sh (default {DEFAULT_ANCHORS} if present)")
    group.add_argument("--no-anchors", action="store_true", help="do not run the anchors")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="write every number to this JSON file")
    ap.add_argument("--write-lr", type=Path, default=None, metavar="DIR",
                    help="also write GTmod<s>/ and LR_<degradation>_x<s>/ PNGs under DIR")
    ap.add_argument("--per-image", action="store_true", help="add per-image rows to the tables")
    ap.add_argument("--ssim", action="store_true", help="print an SSIM table after each PSNR table")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the noise of noisy degradations")
    ap.add_argument("--ensemble", action="store_true",
                    help="also score each model with geometric self-ensemble (as NAME+; 8x the time)")
    return ap


def run(args: argparse.Namespace) -> dict:
    if args.model and args.scales:
        raise EvalError("--scales picks the embedded models; with --model each model is scored at its own scale")
    models = load_models(args.model or default_model_paths(args.scales or [2, 3, 4]), args.ensemble)
    paths = list_images(args.hr_dir)
    hr_paths, skipped = check_images(paths, sorted({m.scale for m in models.values()}))
    for name, reason in skipped.items():
        say(f"skipped {name}: {reason}")
    if not hr_paths:
        raise EvalError(f"{args.hr_dir}: no image to score")
    folder = find_anchors(args.anchors, args.no_anchors)
    anchors = Anchors.prepare(folder) if folder is not None else None
    results = evaluate(hr_paths, models, args.degradations, anchors, args.write_lr, args.seed)
    results["skipped"] = skipped
    print(format_report(results, args.per_image, args.ssim))
    if args.json is not None:
        save_json(results, args.json)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except EvalError as e:
        say(f"evaluate_models: error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
