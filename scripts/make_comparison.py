"""Make the README's before/after pictures: input, bicubic and models, side by side.

    python scripts/make_comparison.py IMAGE OUT.png [--scale 4] [--degradation cubic]
        [--model robust --model bicubic --model FILE ...] [--crop Y X H W]

IMAGE is a high-resolution photo. Its LR input is made by ``--degradation``
(``ebsr_basicsr.data.degradations``: ``matlab``, the papers' MATLAB bicubic, by default;
``cubic`` is OpenCV's resize without antialiasing, ``matlab+jpeg75`` adds JPEG at quality 75,
...), then shown enlarged by nearest neighbour (what you start from), by bicubic, by each
``--model`` (an embedded model's name or a model file; the default model when none is given)
and beside the original, over a crop given in input pixels. Each panel's label carries its
PSNR on the Y channel against the original over the crop.
"""
import argparse
from pathlib import Path

import cv2
import numpy as np


def _y_psnr(img, ref):
    from basicsr.metrics import calculate_psnr
    return calculate_psnr(img, ref, 0, test_y_channel=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--degradation", default="matlab", help="how the LR input is made (default: matlab)")
    ap.add_argument("--model", action="append", help="embedded model name or model file (repeatable)")
    ap.add_argument("--crop", type=int, nargs=4, metavar=("Y", "X", "H", "W"), default=(20, 40, 48, 48))
    args = ap.parse_args(argv)

    from ebsr_basicsr.data.degradations import bicubic_upscale, parse_degradation
    from ebsr_basicsr.runtime import Engine
    from ebsr_basicsr.weights import DEFAULT_MODEL, MODELS, resolve_model

    s = args.scale
    hr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if hr is None:
        raise SystemExit(f"cannot read {args.image}")
    hr = hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]
    degradation = parse_degradation(args.degradation)
    lr = degradation.apply_uint8(hr, s, np.random.default_rng(0))
    views = {
        f"input: {args.degradation}": cv2.resize(lr, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST),
        "bicubic": bicubic_upscale(lr, s),
    }
    for model in args.model or [DEFAULT_MODEL]:
        label = f"model: {model}" if model in MODELS else Path(model).stem
        views[label] = Engine.load(resolve_model(model, s)).upscale(lr)
    y, x, h, w = args.crop
    crop = (slice(y * s, (y + h) * s), slice(x * s, (x + w) * s))
    tiles = []
    for label, img in list(views.items()) + [("original", hr)]:
        tile = np.ascontiguousarray(img[crop])
        lines = [label] if label == "original" or label.startswith("input") else \
            [label, f"{_y_psnr(tile, hr[crop]):.2f} dB"]
        for i, text in enumerate(lines):
            for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
                cv2.putText(tile, text, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, thickness,
                            cv2.LINE_AA)
        tiles.append(tile)
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), row):
        raise SystemExit(f"cannot write {args.out}")


if __name__ == "__main__":
    main()
