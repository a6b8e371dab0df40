"""Side-by-side timings of the bitwise-runtime kernels against PyTorch float32 on the CPU.

Every implementation of a case is timed in turn inside each repeat (interleaved), and the
table reports medians and ratios, because the machines this runs on are shared and noisy.
With one thread the table also gives the median CPU time of the process, which is less
disturbed by other processes on the machine than the wall time.

Cases:
  * binary 3x3 conv C->C on an SxS map, pad +1, mul/bias folded (ours; ours with the fused
    repack for the next layer; ours with fresh output allocation) vs torch conv2d float32
    channels_last and NCHW; pack_signs of the input map, relative to one conv;
  * FP conv2d (im2col/kn2row + BLAS, PixelShuffle fused) 64->256 3x3 at 256x256 with x2
    shuffle, and 64->3 3x3 at 1024x1024, vs torch conv2d (+ pixel_shuffle).

Example:  python benchmarks/bench_kernels.py --threads 1,2 --repeats 9
          python benchmarks/bench_kernels.py --threads 1 --burst 3 --warm-call   # steady state
"""
import argparse
import platform
import re
import statistics
import time

import numpy as np


BURST = 1
WARM_CALL = False


def _median_times(fns, repeats, warmup=2):
    """Interleaved timing: in each of ``repeats`` rounds every implementation runs ``BURST``
    times in a row (each call timed), after one untimed call if ``WARM_CALL``.
    Returns {name: (median wall s, median process-CPU s)}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if WARM_CALL:
                fn()
            for _ in range(BURST):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def _print_table(title, times, reference_names, threads):
    print("\n%s" % title)
    head = "  %-34s %10s" % ("implementation", "wall ms")
    if threads == 1:
        head += " %10s" % "cpu ms"
    for ref in reference_names:
        head += " %14s" % ("x vs " + ref)
    print(head)
    for name, (w, c) in times.items():
        line = "  %-34s %10.3f" % (name, w * 1e3)
        if threads == 1:
            line += " %10.3f" % (c * 1e3)
        for ref in reference_names:
            line += " %14s" % ("%.2f" % (times[ref][0] / w))
        print(line)


def _asm_report():
    """Count 512-bit popcounts in a freshly compiled copy of the 3x3 tile (the cached
    kernels cannot be inspected)."""
    import numba
    from ebsr_basicsr.kernels import bconv

    tile = bconv._tile3

    @numba.njit(cache=False)
    def probe(xp, w, dots):
        tile(xp, w, dots, 0, 0, 0, 1, 0, 576)

    xp = np.zeros((3, 10, 1), np.uint64)
    w = np.zeros((3, 3, 1, 8), np.uint64)
    dots = np.zeros((8, 8), np.float32)
    probe(xp, w, dots)
    asm = probe.inspect_asm(probe.signatures[0])
    zmm = len(re.findall(r"vpopcntq\s+[^\n]*%zmm", asm))
    total = len(re.findall(r"vpopcntq|popcnt", asm))
    return zmm, total


def bench_binary(K, torch, size, channels, repeats, threads):
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    H = W = size
    C = O = channels
    x = rng.standard_normal((H, W, C)).astype(np.float32)
    w = rng.standard_normal((O, C, 3, 3)).astype(np.float32)
    x_bits = K.pack_signs(x)
    w_bits = K.pack_weights(w)
    mul = rng.uniform(0.5, 1.5, O).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    shift = np.zeros(O, np.float32)
    out = K.empty_aligned((H, W, O), np.float32)  # 64-byte aligned: streaming stores
    bits_out = np.empty((H, W, (O + 63) // 64), np.uint64)

    xt = torch.from_numpy(np.sign(x) + (x == 0)).permute(2, 0, 1)[None]  # NHWC memory: channels_last
    wt_cl = torch.from_numpy(np.sign(w)).contiguous(memory_format=torch.channels_last)
    xt_nchw, wt = xt.contiguous(), torch.from_numpy(np.sign(w))
    bt = torch.from_numpy(bias)

    def torch_cl():
        with torch.no_grad():
            return F.conv2d(xt, wt_cl, bt, padding=1)

    def torch_nchw():
        with torch.no_grad():
            return F.conv2d(xt_nchw, wt, bt, padding=1)

    fns = {
        "ours binary conv (out= reused)": lambda: K.binary_conv2d(x_bits, w_bits, C, 3, 1, 1, mul, bias, out=out),
        "ours + fused repack": lambda: K.binary_conv2d(x_bits, w_bits, C, 3, 1, 1, mul, bias, next_shift=shift,
                                                       out=out, bits_out=bits_out),
        "ours, fresh output": lambda: K.binary_conv2d(x_bits, w_bits, C, 3, 1, 1, mul, bias),
        "pack_signs of the input": lambda: K.pack_signs(x),
        "torch conv2d channels_last": torch_cl,
        "torch conv2d NCHW": torch_nchw,
    }
    times = _median_times(fns, repeats)
    _print_table("binary 3x3 conv %d->%d on %dx%d, pad +1, %d thread(s)  (%.2f G binary MACs)"
                 % (C, O, H, W, threads, H * W * C * O * 9 / 1e9),
                 times, ["torch conv2d channels_last", "torch conv2d NCHW"], threads)
    conv = times["ours binary conv (out= reused)"][0]
    print("  pack_signs costs %.0f%% of one conv; the fused repack adds %.0f%%"
          % (100 * times["pack_signs of the input"][0] / conv,
             100 * (times["ours + fused repack"][0] / conv - 1)))
    return times


def bench_fp(K, torch, repeats, threads, hr):
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    results = {}
    for H, C, O, s in [(256, 64, 256, 2), (hr, 64, 3, 1)]:
        x = rng.standard_normal((H, H, C)).astype(np.float32)
        w = (rng.standard_normal((O, C, 3, 3)) * 0.05).astype(np.float32)
        b = rng.standard_normal(O).astype(np.float32)
        out = K.empty_aligned((H * s, H * s, O // (s * s)), np.float32)
        wm = K.conv_weight_matrix(w)
        xt = torch.from_numpy(x).permute(2, 0, 1)[None]
        wt_cl = torch.from_numpy(w).contiguous(memory_format=torch.channels_last)
        xt_nchw, wt, bt = xt.contiguous(), torch.from_numpy(w), torch.from_numpy(b)

        def torch_run(a, ww):
            with torch.no_grad():
                y = F.conv2d(a, ww, bt, padding=1)
                return F.pixel_shuffle(y, s) if s > 1 else y

        fns = {
            "ours conv2d (out= reused)": lambda: K.conv2d(x, w, b, out_shuffle=s, w_matrix=wm, out=out),
            "torch channels_last": lambda: torch_run(xt, wt_cl),
            "torch NCHW": lambda: torch_run(xt_nchw, wt),
        }
        times = _median_times(fns, repeats, warmup=1)
        shuffle = " + PixelShuffle x%d" % s if s > 1 else ""
        _print_table("FP conv2d %d->%d 3x3 at %dx%d%s, %d thread(s)" % (C, O, H, H, shuffle, threads),
                     times, ["torch channels_last", "torch NCHW"], threads)
        results[(H, C, O)] = times
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts [1,2]")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per implementation [7]")
    ap.add_argument("--size", type=int, default=256, help="map size of the binary conv [256]")
    ap.add_argument("--channels", type=int, default=64, help="channels of the binary conv [64]")
    ap.add_argument("--hr", type=int, default=1024, help="map size of the 64->3 FP conv [1024]")
    ap.add_argument("--skip-fp", action="store_true", help="only the binary conv")
    ap.add_argument("--asm", action="store_true", help="count 512-bit popcounts in the compiled tile")
    ap.add_argument("--burst", type=int, default=1,
                    help="consecutive timed calls per implementation and round [1: strict alternation]; "
                         "on a busy machine a kernel that just ran runs faster, as layers do in a network")
    ap.add_argument("--warm-call", action="store_true",
                    help="one untimed call of each implementation before its timed calls in every round")
    args = ap.parse_args()
    global BURST, WARM_CALL
    BURST, WARM_CALL = max(1, args.burst), args.warm_call

    import numba
    import torch
    import llvmlite.binding as llvm
    import ebsr_basicsr.kernels as K

    feats = llvm.get_host_cpu_features()
    print("CPU %s (LLVM: %s), avx512vpopcntdq=%s; numpy %s, numba %s, torch %s, python %s"
          % (platform.processor() or platform.machine(), llvm.get_host_cpu_name(),
             feats.get("avx512vpopcntdq", False), np.__version__, numba.__version__, torch.__version__,
             platform.python_version()))
    print("repeats %d, burst %d, warm call %s; medians of every timed call" % (args.repeats, BURST, WARM_CALL))
    if args.asm:
        zmm, total = _asm_report()
        print("3x3 tile (8 pixels x 8 channels x 9 taps): %d vpopcntq on zmm of %d popcounts" % (zmm, total))

    for n in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(n)
        K.set_num_threads(n)
        bench_binary(K, torch, args.size, args.channels, args.repeats, n)
        if not args.skip_fp:
            bench_fp(K, torch, max(3, args.repeats // 2), n, args.hr)
    print("\nnumba threading layer: %s" % numba.threading_layer())


if __name__ == "__main__":
    main()
