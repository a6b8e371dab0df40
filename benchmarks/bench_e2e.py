"""End-to-end speed: the bitwise runtime against PyTorch float32 eval of the same checkpoint.

    python benchmarks/bench_e2e.py                        # EBSRNet 16x64 x4, 256x256, fp/light/binary
    python benchmarks/bench_e2e.py --arch SCALESNet --size 128 --repeats 3

For each upsampler, one network is built (weights moved off their init by a few seconds of
random perturbation, so BN/thresholds/re-scalings are not trivial), exported, and run on a
real photo crop by: the runtime, torch float32 (default NCHW) and torch float32
channels_last, on 1 and on 2 threads. Runs are interleaved and the median of ``--repeats``
is reported, with the ratios measured in the same run (the machine is shared and noisy).
It also reports the agreement of the outputs (PSNR of the uint8 images, and the mean
difference of each to torch in float64: a deep untrained binary net flips signs on float32
rounding, so torch float32 itself drifts from the exact result), the peak memory of
a runtime-only process and the JIT start-up time of a cold and a second (warm) process.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import PEAK_RSS_SOURCE, cpu_model, photo


def make_model(arch: str, upsampler: str, scale: int, out: Path):
    import torch

    from ebsr_basicsr.archs import build_arch
    from ebsr_basicsr.training.export import export_network
    from ebsr_basicsr.runtime.format import save_model

    torch.manual_seed(0)
    opt = {"type": arch, "upscale": scale, "upsampler": upsampler}
    net = build_arch(opt)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 1 and "bias" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    net.train()
    net(torch.rand(1, 3, 32, 32))  # initialise data-dependent scales, move BN statistics
    net.eval()
    header, tensors = export_network(net, opt)
    save_model(out, header, tensors)
    return net


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR between two float images after rounding both to uint8."""
    a, b = (np.clip(np.rint(v * 255), 0, 255) for v in (a, b))
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


PROBE = PEAK_RSS_SOURCE + r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from ebsr_basicsr.runtime import Engine
e = Engine.load(sys.argv[1])
x = np.random.rand(int(sys.argv[2]), int(sys.argv[2]), 3).astype(np.float32)
t1 = time.perf_counter()
e.run(x)
t2 = time.perf_counter()
e.run(x)
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "first_run_s": t2 - t1, "second_run_s": t3 - t2,
                  "peak_rss_mb": peak_rss_kb() / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def probe(model: Path, size: int, env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(model), str(size)], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="EBSRNet")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="LR input is size x size")
    ap.add_argument("--upsamplers", default="fp,light,binary")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import os

    import torch

    from ebsr_basicsr import kernels
    from ebsr_basicsr.runtime import Engine

    print(f"CPU: {cpu_model()}")
    x = photo(args.size)
    xt = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for up in args.upsamplers.split(","):
            path = Path(tmp) / f"{up}.ebsr"
            net = make_model(args.arch, up, args.scale, path)
            net_cl = make_model(args.arch, up, args.scale, Path(tmp) / "unused.ebsr")
            net_cl = net_cl.to(memory_format=torch.channels_last)
            engine = Engine.load(path)
            engine.run(x[:32, :32])  # compile
            with torch.no_grad():
                ref = net(xt)[0].permute(1, 2, 0).numpy()
                ref64 = copy.deepcopy(net).double()(xt.double())[0].permute(1, 2, 0).numpy()
            ours = engine.run(x)
            agreement = psnr_uint8(ours, ref)
            print(f"{args.arch} x{args.scale} {up}: "
                  f"mean |runtime - torch float64| = {np.abs(ours - ref64).mean():.1e}, "
                  f"|torch float32 - torch float64| = {np.abs(ref - ref64).mean():.1e}", flush=True)
            xt_cl = xt.contiguous(memory_format=torch.channels_last)
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                kernels.set_num_threads(threads)
                t_rt, t_nchw, t_cl = [], [], []
                with torch.no_grad():
                    net(xt), net_cl(xt_cl), engine.run(x)  # warm-up at this thread count
                    for _ in range(args.repeats):  # interleaved
                        t_rt.append(timed(lambda: engine.run(x), 1))
                        t_nchw.append(timed(lambda: net(xt), 1))
                        t_cl.append(timed(lambda: net_cl(xt_cl), 1))
                rt, nchw, cl = (statistics.median(t) * 1000 for t in (t_rt, t_nchw, t_cl))
                rows.append((up, threads, rt, nchw, cl, agreement))
                print(f"{args.arch} x{args.scale} {up:6s} {threads} thr: runtime {rt:8.1f} ms | torch NCHW "
                      f"{nchw:8.1f} ms ({nchw / rt:5.2f}x) | torch channels_last {cl:8.1f} ms ({cl / rt:5.2f}x) | "
                      f"outputs agree to {agreement:.1f} dB", flush=True)
        env = dict(os.environ)
        cold = probe(Path(tmp) / f"{args.upsamplers.split(',')[0]}.ebsr", args.size, env)
        warm = probe(Path(tmp) / f"{args.upsamplers.split(',')[0]}.ebsr", args.size, env)

    print()
    print("| upsampler | threads | runtime ms | torch NCHW ms | speed-up | torch channels_last ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for up, threads, rt, nchw, cl, _ in rows:
        print(f"| {up} | {threads} | {rt:.1f} | {nchw:.1f} | {nchw / rt:.2f}x | {cl:.1f} | {cl / rt:.2f}x |")
    print()
    print(f"separate process ({args.upsamplers.split(',')[0]} model, {args.size}x{args.size}): "
          f"first call incl. JIT load {warm['first_run_s']:.2f} s in a warm-cache process "
          f"(the process before it: {cold['first_run_s']:.2f} s), steady {warm['second_run_s'] * 1000:.0f} ms, "
          f"peak RSS {warm['peak_rss_mb']:.0f} MB, torch imported: {warm['torch_imported']}")


if __name__ == "__main__":
    main()
