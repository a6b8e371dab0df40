"""Speed of the models people would use instead, side by side with ours, in one run.

    python benchmarks/bench_speed.py                       # 256x256 at x2 and x4, 1 and 2 threads
    python benchmarks/bench_speed.py --photo               # + ebsr-upscale of a 1080p photo at x2
    python benchmarks/bench_speed.py --video               # + frames/s at 640x360 and 1280x720
    python benchmarks/bench_speed.py --model a_x2.ebsr --model b_x4.ebsr --rounds 5

Ours: the embedded default models (or ``--model`` files) through ``Engine.run`` (float RGB in,
float RGB out, colour handling included). Beside them, in interleaved rounds so that a busy
machine slows every contender alike:

* ESPCN and FSRCNN, the fast FP models of OpenCV's ``dnn_superres``, run by the anchors'
  own Python (``--anchors DIR``, the folder of ``run_anchors.py`` and ``setup.sh``, whose
  model table is used; default: ``../shared/anchors`` beside the repository, skipped if
  absent). Their time includes dnn_superres's own colour handling (Y net, bicubic chroma).
* PyTorch float32 eval of the same architecture in channels_last (the fastest torch layout on
  CPUs), when torch is installed: what running our network without the bitwise runtime costs.

Each cell is the median over ``--rounds`` of the best of ``--repeats`` calls. The tables give
ratios measured in the same run; the CPU model is printed first, since ratios, not times,
carry over between machines (Intel cores run 512-bit popcounts on one port, AMD Zen 4 on two).

``--photo``: the whole ``ebsr-upscale photo.png`` command (start-up, PNG decode and encode
included) on a 1920x1080 photo at x2 against the same steps with ESPCN (read, upscale, write a
PNG), with the peak resident memory of each process. ``--video``: frames per second of the
model alone on frames of 640x360 and 1280x720 at x2 and x4.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import PEAK_RSS_SOURCE, best_time, cpu_model, photo

ROOT = Path(__file__).resolve().parents[1]

# Runs in the anchors' Python: times ESPCN/FSRCNN with run_anchors.py's model table.
ANCHOR_TIMER = r"""
import json, sys, time
import cv2
sys.path.insert(0, sys.argv[1])
import run_anchors
scale, h, w, threads, repeats = (int(v) for v in sys.argv[2:7])
names = sys.argv[7].split(",")
rng = __import__("numpy").random.default_rng(0)
img = cv2.resize(cv2.imread(sys.argv[8]), (w, h), interpolation=cv2.INTER_AREA)
cv2.setNumThreads(threads)
out = {}
for name in names:
    algo, pattern = run_anchors.MODELS[name]
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(run_anchors.HERE / pattern.format(s=scale)))
    sr.setModel(algo, scale)
    sr.upsample(img)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sr.upsample(img)
        best = min(best, time.perf_counter() - t0)
    out[name] = best
print(json.dumps(out))
"""

# Runs in the anchors' Python: ESPCN as a command would (start-up, read, upscale, write).
ANCHOR_PHOTO = PEAK_RSS_SOURCE + r"""
import sys, time
t0 = time.perf_counter()
import cv2
sys.path.insert(0, sys.argv[1])
import run_anchors
cv2.setNumThreads(int(sys.argv[5]))
algo, pattern = run_anchors.MODELS["ESPCN"]
sr = cv2.dnn_superres.DnnSuperResImpl_create()
sr.readModel(str(run_anchors.HERE / pattern.format(s=int(sys.argv[2]))))
sr.setModel(algo, int(sys.argv[2]))
cv2.imwrite(sys.argv[4], sr.upsample(cv2.imread(sys.argv[3])))
print(time.perf_counter() - t0, peak_rss_kb())
"""


# Runs ebsr-upscale in a Python that reports its own peak memory when the command ends.
OURS_PHOTO = PEAK_RSS_SOURCE + r"""
import sys
from ebsr_basicsr.cli.upscale import main
try:
    main(sys.argv[1:])
finally:
    print("peak_rss_kb", peak_rss_kb(), file=sys.stderr)
"""


def anchors_python(folder: Path | None):
    if folder is None or not (folder / "run_anchors.py").is_file() or not (folder / "setup.sh").is_file():
        return None
    out = subprocess.run(["sh", str(folder / "setup.sh")], capture_output=True, text=True)
    py = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    return py if py and Path(py).exists() else None


def time_anchors(py, folder, scale, h, w, threads, repeats, names, image_path) -> dict:
    out = subprocess.run([py, "-c", ANCHOR_TIMER, str(folder), str(scale), str(h), str(w), str(threads),
                          str(repeats), ",".join(names), str(image_path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"anchor timing failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_runner(engine, h, w):
    """The engine's architecture in PyTorch float32 channels_last eval (random weights: speed
    does not depend on them), or None without torch."""
    try:
        import torch

        from ebsr_basicsr.archs import build_arch
    except ImportError:
        return None
    net = build_arch(dict(engine.header["network_g"])).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, engine.in_channels, h, w).contiguous(memory_format=torch.channels_last)

    def run(threads):
        torch.set_num_threads(threads)
        with torch.no_grad():
            net(x)
    return run


def median(values):
    return statistics.median(values) if values else float("nan")


def bench_models(engines, args, py, anchors_dir, image_path):
    from ebsr_basicsr import kernels

    threads_list = [int(t) for t in args.threads.split(",")]
    rgb = photo(args.size)
    names = ["ESPCN", "FSRCNN"]
    results = {}  # (scale, threads) -> {contender: [times]}
    torch_runs = {e.scale: torch_runner(e, args.size, args.size) for e in engines} if not args.no_torch else {}
    for r in range(args.rounds):
        for engine in engines:
            s = engine.scale
            for threads in threads_list:
                cell = results.setdefault((s, threads), {})
                kernels.set_num_threads(threads)
                engine.run(rgb)
                cell.setdefault("ours", []).append(best_time(lambda: engine.run(rgb), args.repeats))
                if torch_runs.get(s):
                    run = torch_runs[s]
                    run(threads)
                    cell.setdefault("torch", []).append(best_time(lambda: run(threads), args.repeats))
                if py:
                    for name, t in time_anchors(py, anchors_dir, s, args.size, args.size, threads, args.repeats,
                                                names, image_path).items():
                        cell.setdefault(name, []).append(t)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(f"\n{args.size}x{args.size} input, median of {args.rounds} rounds of the best of {args.repeats} (ms)\n")
    head = "| scale | threads | ours | " + " | ".join(f"{n} | ours / {n}" for n in names if py)
    head += " | torch channels_last | torch / ours |" if torch_runs else " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (s, threads), cell in sorted(results.items()):
        ours = median(cell["ours"]) * 1e3
        row = f"| x{s} | {threads} | {ours:.1f} | "
        row += " | ".join(f"{median(cell[n]) * 1e3:.1f} | **{ours / (median(cell[n]) * 1e3):.2f}x**"
                          for n in names if py)
        if "torch" in cell:
            t = median(cell["torch"]) * 1e3
            row += f" | {t:.1f} | {t / ours:.2f}x |"
        else:
            row += " |"
        print(row)
    if len(threads_list) > 1:
        lo, hi = min(threads_list), max(threads_list)
        print(f"\n{lo} -> {hi} threads: " + ", ".join(
            f"x{s} ours {median(results[(s, lo)]['ours']) / median(results[(s, hi)]['ours']):.2f}x"
            + (f", ESPCN {median(results[(s, lo)]['ESPCN']) / median(results[(s, hi)]['ESPCN']):.2f}x" if py else "")
            for s in sorted({k[0] for k in results})))


def bench_photo(args, py, anchors_dir, workdir: Path):
    """ebsr-upscale of a 1080p photo at x2 against ESPCN doing the same steps."""
    import cv2

    src = workdir / "photo1080.png"
    cv2.imwrite(str(src), np.rint(photo(1080, 1920)[:, :, ::-1] * 255).astype(np.uint8))
    ours, espcn = [], []
    for r in range(args.rounds):
        out = workdir / "ours"
        cmd = [sys.executable, "-c", OURS_PHOTO, str(src), "-o", str(out), "--scale", "2",
               "--threads", str(max(int(t) for t in args.threads.split(","))), "-q"]
        if args.photo_model:
            cmd[cmd.index("--scale"):cmd.index("--scale") + 2] = ["--model", str(args.photo_model)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"ebsr-upscale failed:\n{proc.stderr[-2000:]}")
        rss = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("peak_rss_kb")]
        ours.append((wall, float(rss[-1]) / 1024))
        if py:
            proc = subprocess.run([py, "-c", ANCHOR_PHOTO, str(anchors_dir), "2", str(src),
                                   str(workdir / "espcn.png"), str(max(int(t) for t in args.threads.split(",")))],
                                  capture_output=True, text=True)
            wall, rss = proc.stdout.split()
            espcn.append((float(wall), float(rss) / 1024))
    t = median([w for w, _ in ours])
    print(f"\n1920x1080 photo at x2, whole command, median of {args.rounds}:")
    print(f"  ebsr-upscale: {t:.2f} s, peak RSS {max(r for _, r in ours):.0f} MB")
    if espcn:
        te = median([w for w, _ in espcn])
        print(f"  ESPCN (read, upscale, write): {te:.2f} s, peak RSS {max(r for _, r in espcn):.0f} MB")
        print(f"  ratio ours / ESPCN: **{t / te:.2f}x**")


def bench_video(engines, args, py, anchors_dir, image_path):
    from ebsr_basicsr import kernels

    threads = max(int(t) for t in args.threads.split(","))
    kernels.set_num_threads(threads)
    rows = []
    for h, w in ((360, 640), (720, 1280)):
        frame = photo(h, w)
        for engine in engines:
            engine.run(frame)
            ours = median([best_time(lambda: engine.run(frame), args.repeats) for _ in range(args.rounds)])
            espcn = float("nan")
            if py:
                espcn = median([time_anchors(py, anchors_dir, engine.scale, h, w, threads, args.repeats, ["ESPCN"],
                                             image_path)["ESPCN"] for _ in range(args.rounds)])
            rows.append((f"{w}x{h}", engine.scale, 1 / ours, 1 / espcn))
    print(f"\nframes per second of the model, {threads} threads (median of {args.rounds} rounds)\n")
    print("| frame | scale | ours fps | ESPCN fps | ours / ESPCN time |\n|---|---|---|---|---|")
    for frame, s, f_ours, f_espcn in rows:
        print(f"| {frame} | x{s} | {f_ours:.1f} | {f_espcn:.1f} | {f_espcn / f_ours:.2f}x |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", type=Path, help="model file(s) (default: the embedded x2 and x4)")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels (default 256)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--anchors", type=Path, default=ROOT.parent / "shared" / "anchors")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--photo", action="store_true", help="also time ebsr-upscale on a 1080p photo at x2")
    ap.add_argument("--photo-model", type=Path, help="x2 model for --photo (default: the embedded one)")
    ap.add_argument("--video", action="store_true", help="also give frames/s at 640x360 and 1280x720")
    ap.add_argument("--skip-models", action="store_true", help="only --photo/--video")
    args = ap.parse_args(argv)

    from ebsr_basicsr.runtime import Engine
    from ebsr_basicsr.weights import default_model_path

    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs")
    engines = [Engine.load(p) for p in (args.model or [default_model_path(2), default_model_path(4)])]
    for e in engines:
        print(f"ours x{e.scale}: {e.arch} {e.header['network_g']}")
    py = anchors_python(args.anchors)
    print(f"anchors: {args.anchors}" if py else "anchors: not found (use --anchors DIR): ESPCN/FSRCNN skipped")
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "frame.png"
        import cv2

        cv2.imwrite(str(image_path), np.rint(photo(512)[:, :, ::-1] * 255).astype(np.uint8))
        if not args.skip_models:
            bench_models(engines, args, py, args.anchors, image_path)
        if args.video:
            bench_video(engines, args, py, args.anchors, image_path)
        if args.photo:
            bench_photo(args, py, args.anchors, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
