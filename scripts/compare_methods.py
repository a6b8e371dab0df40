"""Fixed-budget comparison of the binary SR methods and of each EBSR/SCALES option.

    python scripts/compare_methods.py --root WORKDIR [--iters 1000] [--only NAME ...]
    python scripts/compare_methods.py --root WORKDIR --only "SCALES SwinIR-light"   # one variant
    python scripts/compare_methods.py --root WORKDIR --iters 1000 --time   # re-time, machine quiet

Every variant is trained by BasicSR (``basicsr train``) from the same option file
(``options/train/CPU/compare_x4.yml``: x4, 16 blocks x 64, the same data, seed, patch size,
batch, upsampler and iterations; the SwinIR variant has SwinIR-light's size instead), exported
to ``WORKDIR/models/compare_<name>.ebsr``, and that file is scored on the validation photos
with the bitwise runtime: PSNR/SSIM on Y (crop_border 4, MATLAB bicubic LR;
``scripts/evaluate_models.py`` scores the same file over other degradations), params and OPs
from ``count_complexity``. Results are appended to ``WORKDIR/compare.jsonl`` as they come (a
rerun skips variants already there) and printed as a markdown table. ``--only NAME ...``
trains and scores (or with ``--time`` times) only the variants named.

Runtime speed is measured apart (``--time``): best of a few runs of a 256x256 input on the
threads given, the variants taking turns in each round. Training in the background makes
timings meaningless, so run it when the machine is otherwise idle; where it cannot be, the
ratios of variants timed in one run stay fairer than their times. The times are stored next
to the scores.

WORKDIR must hold ``datasets/photos`` and ``datasets/photos_val`` made by ``ebsr-prepare``
(see the option file's header).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "options" / "train" / "CPU" / "compare_x4.yml"

VARIANTS = {  # name -> network_g overrides on top of the base option file
    "BNN-SR": {"type": "BNNSR"},
    "E2FIF": {"type": "E2FIFNet"},
    "EBSR-light": {"type": "EBSRNet"},
    "SCALES": {"type": "SCALESNet"},
    "EBSR spatial=absmean": {"type": "EBSRNet", "spatial": "absmean"},
    "EBSR spatial=None": {"type": "EBSRNet", "spatial": None},
    "EBSR channel=None (no shift)": {"type": "EBSRNet", "channel": None, "shift": None},
    "EBSR shift=static": {"type": "EBSRNet", "shift": "static"},
    "EBSR shift=None": {"type": "EBSRNet", "shift": None},
    "EBSR mlp_ratio=1": {"type": "EBSRNet", "mlp_ratio": 1.0},
    "SCALES layer_scale=off": {"type": "SCALESNet", "layer_scale": False},
    "SCALES spatial=None": {"type": "SCALESNet", "spatial": None},
    "SCALES spatial=conv": {"type": "SCALESNet", "spatial": "conv"},
    "SCALES channel=None": {"type": "SCALESNet", "channel": None},
    "SCALES channel=mlp": {"type": "SCALESNet", "channel": "mlp"},
    # the upsampler, the other choice behind the shipped models (quality per runtime ms)
    "SCALES upsampler=binary": {"type": "SCALESNet", "upsampler": "binary"},
    "SCALES upsampler=fp": {"type": "SCALESNet", "upsampler": "fp"},
    # SCALES' re-scalings on the transformer backbone, at SwinIR-light's size (60 features,
    # 4 stages x 6 blocks, 6 heads, window 8: the architecture's defaults)
    "SCALES SwinIR-light": {"type": "SCALESSwinIR", "num_feat": 60, "num_block": 4},
}


def make_options(root: Path, name: str, network: dict, iters: int) -> dict:
    """The BasicSR options of one variant: the base file with its ``network_g`` overrides
    (options its arch does not take are dropped), ``iters`` iterations and no validation."""
    import yaml

    opt = yaml.safe_load(BASE.read_text())
    opt["name"] = _experiment(root, name).name
    opt["network_g"] = {k: v for k, v in {**opt["network_g"], **network}.items()
                        if k in _accepted(network.get("type", opt["network_g"]["type"]))}
    opt["train"]["total_iter"] = iters
    opt.pop("val", None)  # scored below with the runtime, on the same photos
    opt["datasets"].pop("val", None)
    for sched_key in ("periods", "milestones"):
        if sched_key in opt["train"]["scheduler"]:
            opt["train"]["scheduler"][sched_key] = [iters] if sched_key == "periods" else [iters // 2]
    return opt


def train(root: Path, name: str, network: dict, iters: int) -> tuple[Path, dict]:
    import yaml

    opt = make_options(root, name, network, iters)
    path = root / f"{opt['name']}.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    subprocess.run([sys.executable, "-m", "ebsr_basicsr.train", "-opt", str(path), "--auto_resume"], cwd=root,
                   check=True, stdout=subprocess.DEVNULL)
    return root / "experiments" / opt["name"] / "models" / "net_g_latest.pth", opt["network_g"]


def _experiment(root: Path, name: str) -> Path:
    return root / "experiments" / ("compare_" + "".join(c if c.isalnum() else "_" for c in name))


def _accepted(arch: str) -> set:
    import inspect

    from ebsr_basicsr.archs import ARCHS

    return set(inspect.signature(ARCHS[arch]).parameters) | {"type"}


def model_path(root: Path, name: str) -> Path:
    """Where the runtime model file of a variant is written (for ``evaluate_models.py --model``)."""
    return root / "models" / (_experiment(root, name).name + ".ebsr")


def evaluate(root: Path, name: str, checkpoint: Path, network: dict) -> dict:
    """Export the checkpoint to :func:`model_path` and score that file with the bitwise runtime on
    the validation photos (``evaluate_models.py``'s MATLAB-bicubic scoring at x4)."""
    from ebsr_basicsr import count_complexity
    from ebsr_basicsr.runtime.format import save_model
    from ebsr_basicsr.training.export import build_from_checkpoint, export_network

    sys.path.insert(0, str(ROOT / "scripts"))
    import evaluate_models as ev

    net = build_from_checkpoint(checkpoint, network)
    path = model_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, *export_network(net, network))
    hr = ev.list_images(root / "datasets" / "photos_val" / "GTmod12")
    result = ev.evaluate(hr, ev.load_models([path]), ev.parse_degradations("matlab"), progress=False)
    row = result["scales"][f"x{network.get('upscale', 4)}"]["degradations"]["matlab"]
    model = row["models"][path.stem]["mean"]
    c = count_complexity(net)
    return {"psnr": model["psnr"], "ssim": model["ssim"],
            "bicubic_psnr": row["bicubic"]["mean"]["psnr"], "bicubic_ssim": row["bicubic"]["mean"]["ssim"],
            "ops_g": c["ops_g"], "params_k": c["params_k"]}


def time_runtimes(models: dict, repeats: int = 5) -> dict:
    """{name: best-of-``repeats`` milliseconds} of the exported models (``{name: (checkpoint,
    network_g)}``) on a 256x256 input. The models take turns in each round, so a change of
    the machine's load between rounds hits them alike and their ratios stay fair."""
    import numpy as np

    from ebsr_basicsr.training.export import build_from_checkpoint, export_network
    from ebsr_basicsr.runtime import Engine

    engines = {name: Engine(*export_network(build_from_checkpoint(checkpoint, network), network))
               for name, (checkpoint, network) in models.items()}
    x = np.random.default_rng(0).random((256, 256, 3), dtype=np.float32)
    for engine in engines.values():
        engine.run(x[:32, :32])
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(repeats):
        for name, engine in engines.items():
            t = time.perf_counter()
            engine.run(x)
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: seconds * 1000 for name, seconds in best.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--time", action="store_true",
                    help="only (re)measure the runtime speed of the variants already trained")
    ap.add_argument("--threads", type=int, default=1, help="runtime threads for --time")
    args = ap.parse_args(argv)
    unknown = [name for name in args.only or () if name not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r} for --only; the variants are: " + ", ".join(map(repr, VARIANTS)))
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    results_file = args.root / "compare.jsonl"
    rows = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    done = {r["name"]: r for r in rows if r["iters"] == args.iters}
    if args.time:
        from ebsr_basicsr.kernels import set_num_threads

        set_num_threads(args.threads)
        timed = {name: (_experiment(args.root, name) / "models" / "net_g_latest.pth", result["network_g"])
                 for name, result in done.items() if not args.only or name in args.only}
        for name, ms in time_runtimes(timed).items():
            done[name]["runtime_ms_256"] = ms
            print(f"{name}: {ms:.0f} ms", flush=True)
        results_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, network in VARIANTS.items():
        if args.time or (args.only and name not in args.only) or name in done:
            continue
        checkpoint, full = train(args.root, name, network, args.iters)
        result = {"name": name, "iters": args.iters, "network_g": full, **evaluate(args.root, name, checkpoint, full)}
        with results_file.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done[name] = result
        print(f"{name}: {result['psnr']:.2f} dB", flush=True)
    if not done:
        return
    first = next(iter(done.values()))
    print("\n| method | PSNR / SSIM (Y) | gain over bicubic | params K | OPs G | runtime 256² ms |")
    print("|---|---|---|---|---|---|")
    print(f"| bicubic | {first['bicubic_psnr']:.2f} / {first['bicubic_ssim']:.4f} | – | – | – | – |")
    for name in VARIANTS:
        if name in done:
            r = done[name]
            print(f"| {name} | {r['psnr']:.2f} / {r['ssim']:.4f} | {r['psnr'] - r['bicubic_psnr']:+.2f} | "
                  f"{r['params_k']:.0f} | {r['ops_g']:.2f} | {_ms(r)} |")


def _ms(result: dict) -> str:
    return f"{result['runtime_ms_256']:.0f}" if "runtime_ms_256" in result else "–"


if __name__ == "__main__":
    main()
