"""Print the README's table of parameters and OPs of every registered architecture.

    python scripts/complexity_table.py [--scales 2,4] [--upsamplers fp,light,binary]

Counts follow the binary SR papers (``ebsr_basicsr.count_complexity``): a 320x180 LR input,
OPs = FP MACs + binary MACs / 64, params = FP + binary / 32 (biases, norms, thresholds out).
"""
import argparse

import torch

from ebsr_basicsr import count_complexity
from ebsr_basicsr.archs import ARCHS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--upsamplers", default="fp,light,binary")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    scales = [int(s) for s in args.scales.split(",")]
    ups = args.upsamplers.split(",")
    head = " | ".join(f"x{s} {u}: OPs G / params K" for s in scales for u in ups)
    print(f"| arch (default size) | {head} |")
    print("|---|" + "---|" * (len(scales) * len(ups)))
    for name in sorted(ARCHS):
        cells = []
        for s in scales:
            for u in ups:
                c = count_complexity(ARCHS[name](upscale=s, upsampler=u))
                cells.append(f"{c['ops_g']:.2f} / {c['params_k']:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
