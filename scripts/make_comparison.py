"""Make the README's before/after picture: input, bicubic and the model, side by side.

    python scripts/make_comparison.py IMAGE OUT.png [--scale 4] [--model FILE] [--crop Y X H W]

IMAGE is a high-resolution photo: it is downscaled by MATLAB-style bicubic (basicsr's
``imresize``) to make the input, which is then shown enlarged by nearest neighbour (what you
start from), by bicubic, and by the model (the embedded one by default), over a crop given in
input pixels.
"""
import argparse
from pathlib import Path

import cv2
import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--crop", type=int, nargs=4, metavar=("Y", "X", "H", "W"), default=(20, 40, 48, 48))
    args = ap.parse_args(argv)

    from basicsr.utils.matlab_functions import imresize

    from ebsr_basicsr.runtime import Engine
    from ebsr_basicsr.weights import default_model_path

    s = args.scale
    engine = Engine.load(args.model or default_model_path(s))
    hr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    hr = hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]
    lr = np.clip(np.rint(imresize(hr / 255.0, 1 / s) * 255), 0, 255).astype(np.uint8)
    y, x, h, w = args.crop
    views = {
        f"input (x{s} nearest)": cv2.resize(lr, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST),
        "bicubic": np.clip(np.rint(imresize(lr / 255.0, s) * 255), 0, 255).astype(np.uint8),
        f"ebsr-basicsr x{s}": engine.upscale(lr),
        "original": hr,
    }
    tiles = []
    for label, img in views.items():
        tile = np.ascontiguousarray(img[y * s:(y + h) * s, x * s:(x + w) * s])
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    cv2.imwrite(str(args.out), row)


if __name__ == "__main__":
    main()
