"""Score runtime models against bicubic on a folder of HR photos.

    python scripts/evaluate_models.py HR_DIR [--model FILE ...] [--scales 2,3,4]

Without ``--model`` the embedded default models are scored. For each HR image (mod-cropped to
the scale), the LR input is made by MATLAB-style bicubic downsampling (basicsr's ``imresize``),
the baseline is MATLAB-style bicubic upsampling of that LR image, and the model runs through the
bitwise runtime. PSNR and SSIM are computed on the Y channel with ``crop_border = scale``
(basicsr's metrics), as in the papers. Prints a markdown table per model and the mean gain.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def score(engine, hr_paths, scale):
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils.matlab_functions import imresize

    rows = []
    for path in hr_paths:
        hr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
        hr = hr[:h, :w]
        lr = np.clip(np.rint(imresize(hr.astype(np.float64) / 255, 1 / scale) * 255), 0, 255).astype(np.uint8)
        bicubic = np.clip(np.rint(imresize(lr.astype(np.float64) / 255, scale) * 255), 0, 255).astype(np.uint8)
        sr = engine.upscale(lr)
        metrics = {}
        for name, img in (("bicubic", bicubic), ("model", sr)):
            metrics[name] = (calculate_psnr(img, hr, scale, test_y_channel=True),
                             calculate_ssim(img, hr, scale, test_y_channel=True))
        rows.append((path.stem, metrics))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hr_dir", type=Path)
    ap.add_argument("--model", type=Path, nargs="*", default=None)
    ap.add_argument("--scales", default="2,3,4", help="scales of the embedded models to score")
    args = ap.parse_args(argv)

    from ebsr_basicsr.runtime import Engine
    from ebsr_basicsr.weights import default_model_path

    paths = args.model or [default_model_path(int(s)) for s in args.scales.split(",")]
    hr_paths = sorted(p for p in args.hr_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp", ".tif"))
    for model in paths:
        engine = Engine.load(model)
        rows = score(engine, hr_paths, engine.scale)
        print(f"\n{model.name}: {engine.arch} x{engine.scale}, {engine.header['network_g']}\n")
        print("| image | bicubic PSNR / SSIM | model PSNR / SSIM | gain dB |")
        print("|---|---|---|---|")
        for name, m in rows:
            print(f"| {name} | {m['bicubic'][0]:.2f} / {m['bicubic'][1]:.4f} | {m['model'][0]:.2f} / "
                  f"{m['model'][1]:.4f} | {m['model'][0] - m['bicubic'][0]:+.2f} |")
        mean = {k: np.mean([m[k] for _, m in rows], axis=0) for k in ("bicubic", "model")}
        print(f"| **mean** | {mean['bicubic'][0]:.2f} / {mean['bicubic'][1]:.4f} | {mean['model'][0]:.2f} / "
              f"{mean['model'][1]:.4f} | **{mean['model'][0] - mean['bicubic'][0]:+.2f}** |")


if __name__ == "__main__":
    main()
