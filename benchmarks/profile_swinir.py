"""Where a SwinIR model's runtime goes: the engine's work timed by kind on one input.

    python benchmarks/profile_swinir.py MODEL.ebsr [--size 256] [--repeats 3] [--threads 1]

The model (a ``SCALESSwinIR`` export; any model file runs, but only a Swin model has the
transformer rows) runs on a real photo crop of ``--size``² while the engine's ops and the
parts of its Swin blocks are timed: each timed region counts its *exclusive* time (nested
regions are subtracted), so the rows add up to the whole run. Rows:

- binary linear layers (qkv, proj, fc1, fc2), split into packing the signs to bits, the
  XNOR/popcount product (``binary_conv2d``), the input-dependent re-scalings (token-wise
  ``mean_c|x|`` and the feature-wise gate) and the rest of the unit (epilogue, shortcut);
- attention: what is left of a Swin block once its binary layers, layer norms, GELU and
  window partitioning are taken out (Q·Kᵀ, relative bias and shift mask, softmax, A·V,
  the cyclic shifts and the residual adds);
- window partition/reverse, layer norms, GELU;
- the engine's other ops by kind (the FP 3x3 convs, the fused upsampler, padding...).

The attention row is then split by source line of the engine's Swin block (a line tracer on
that one function; each line's time less the timed parts it calls), so Q·Kᵀ, the softmax
and A·V get their own shares without the block being re-implemented here.

The best of ``--repeats`` runs (by total time) is reported, after one warm-up run that
compiles the kernels, with the CPU model and each row's share of the total.
"""
from __future__ import annotations

import argparse
import linecache
import sys
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import numpy as np

from common import cpu_model, photo

#: Swin block parts patched in ``ebsr_basicsr.runtime.engine`` (module-level functions)
ENGINE_FUNCTIONS = {"layer_norm": "layer norm", "gelu": "GELU", "window_partition": "window partition/reverse",
                    "window_reverse": "window partition/reverse"}
#: kernels called by the binary units, patched on ``ebsr_basicsr.kernels``
KERNEL_FUNCTIONS = {"pack_signs": "binary linear: pack signs", "binary_conv2d": "binary linear: XNOR/popcount"}
UNIT_NAMES = ("qkv", "proj", "fc1", "fc2")


class Profiler:
    """Exclusive wall time per label: a region's time minus that of the regions it calls."""

    def __init__(self):
        self.exclusive = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack: list = []  # [label, time spent in nested regions]

    def wrap(self, fn, label: str):
        def timed(*args, **kwargs):
            self._stack.append([label, 0.0])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, nested = self._stack.pop()
                self.exclusive[label] += elapsed - nested
                self.calls[label] += 1
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed

    def nested(self) -> float:
        """Time spent so far in regions nested in the innermost open region."""
        return self._stack[-1][1] if self._stack else 0.0

    def reset(self):
        self.exclusive.clear()
        self.calls.clear()


class LineTimer:
    """Exclusive time per source line of one function (``sys.settrace`` on its frames only):
    from a line's start to the next line's, less the profiler's regions timed meanwhile."""

    def __init__(self, function, profiler: Profiler):
        self.code, self.profiler = function.__code__, profiler
        self.times = defaultdict(float)
        self._last = None

    def reset(self):
        self.times.clear()

    def _global(self, frame, event, arg):
        if frame.f_code is self.code:
            self._last = None
            return self._local
        return None

    def _local(self, frame, event, arg):
        now, nested = time.perf_counter(), self.profiler.nested()
        if self._last is not None:
            line, start, nested_start = self._last
            self.times[line] += (now - start) - (nested - nested_start)
        self._last = (frame.f_lineno, now, nested) if event == "line" else None
        return self._local

    @contextmanager
    def active(self):
        previous = sys.gettrace()
        sys.settrace(self._global)
        try:
            yield
        finally:
            sys.settrace(previous)

    def source(self, line: int) -> str:
        return linecache.getline(self.code.co_filename, line).strip()


class _TimedUnit:
    """A binary unit whose call and re-scaling factors are timed."""

    def __init__(self, unit, profiler: Profiler):
        self._unit = unit
        unit._factors = profiler.wrap(unit._factors, "binary linear: re-scalings")
        self._call = profiler.wrap(unit, "binary linear: rest of the unit")

    def __call__(self, x):
        return self._call(x)


def op_label(op) -> str:
    """The row of a top-level engine op."""
    name = type(op).__name__
    if name == "SwinBlock":
        return "attention (QK^T, bias/mask, softmax, AV, shifts, adds)"
    if name == "BinaryUnit":
        return "binary conv units"
    return f"other: {name}"


@contextmanager
def instrumented(engine, profiler: Profiler):
    """Time the engine's ops and the parts of its Swin blocks while inside the block."""
    from ebsr_basicsr import kernels
    from ebsr_basicsr.runtime import engine as engine_module

    ops = engine._ops
    with ExitStack() as stack:
        for name, label in ENGINE_FUNCTIONS.items():
            stack.enter_context(mock.patch.object(engine_module, name,
                                                  profiler.wrap(getattr(engine_module, name), label)))
        for name, label in KERNEL_FUNCTIONS.items():
            stack.enter_context(mock.patch.object(kernels, name, profiler.wrap(getattr(kernels, name), label)))
        saved = []
        for op, _, _ in ops:
            if type(op).__name__ == "SwinBlock":
                saved.append((op, {u: getattr(op, u) for u in UNIT_NAMES}))
                for u in UNIT_NAMES:
                    setattr(op, u, _TimedUnit(getattr(op, u), profiler))
        engine._ops = [(profiler.wrap(op, op_label(op)), inputs, out) for op, inputs, out in ops]
        try:
            yield
        finally:
            engine._ops = ops
            for op, units in saved:
                for u, unit in units.items():
                    unit.__dict__.pop("_factors", None)
                    setattr(op, u, unit)


def profile(engine, image: np.ndarray, repeats: int) -> tuple[dict, dict, float, dict, LineTimer]:
    """({label: seconds}, {label: calls}, total seconds, {Swin block line: seconds}, the line
    timer) of the fastest of ``repeats`` runs."""
    from ebsr_basicsr.runtime.engine import SwinBlock

    profiler = Profiler()
    lines = LineTimer(SwinBlock.__call__, profiler)
    best = None
    with instrumented(engine, profiler):
        engine.run(image)  # compiles the kernels, fills the buffer pool
        for _ in range(repeats):
            profiler.reset()
            lines.reset()
            with lines.active():
                start = time.perf_counter()
                engine.run(image)
                total = time.perf_counter() - start
            if best is None or total < best[2]:
                best = (dict(profiler.exclusive), dict(profiler.calls), total, dict(lines.times))
    return (*best, lines)


def format_report(times: dict, calls: dict, total: float) -> str:
    groups = defaultdict(float)
    for label, t in times.items():
        groups[label.split(":")[0] if label.startswith("binary linear") else label] += t
    lines = ["| part | ms | share | calls |", "|---|---|---|---|"]
    for label, t in sorted(times.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {t * 1e3:.1f} | {t / total:.1%} | {calls[label]} |")
    untimed = total - sum(times.values())
    lines.append(f"| engine loop (not in any op) | {untimed * 1e3:.1f} | {untimed / total:.1%} | |")
    lines.append(f"| **total** | **{total * 1e3:.1f}** | 100% | |")
    lines += ["", "| group | share |", "|---|---|"]
    lines += [f"| {g} | {t / total:.1%} |" for g, t in sorted(groups.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def format_lines(line_times: dict, timer: LineTimer, total: float, min_share: float = 0.005) -> str:
    """The Swin block's lines by exclusive time (those over ``min_share`` of the total)."""
    rows = ["| Swin block line (exclusive) | ms | share |", "|---|---|---|"]
    rest = 0.0
    for line, t in sorted(line_times.items(), key=lambda kv: -kv[1]):
        if t / total < min_share:
            rest += t
            continue
        code = timer.source(line).replace("|", "\\|")
        rows.append(f"| {line}: `{code}` | {t * 1e3:.1f} | {t / total:.1%} |")
    rows.append(f"| other lines | {rest * 1e3:.1f} | {rest / total:.1%} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="runtime model file (.ebsr)")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels (default 256)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs, the fastest is reported (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="kernel threads (default 1)")
    args = ap.parse_args(argv)
    if args.size < 1 or args.repeats < 1 or args.threads < 1:
        ap.error("--size, --repeats and --threads must be positive")

    from ebsr_basicsr.kernels import get_num_threads, set_num_threads
    from ebsr_basicsr.runtime import Engine, ModelFileError

    try:
        engine = Engine.load(args.model)
    except ModelFileError as e:
        print(f"profile_swinir: error: {e}", file=sys.stderr)
        return 2
    previous = get_num_threads()
    set_num_threads(args.threads)
    try:
        times, calls, total, line_times, timer = profile(engine, photo(args.size), args.repeats)
    finally:
        set_num_threads(previous)
    print(f"{args.model.name}: {engine.arch} x{engine.scale}, {args.size}x{args.size} input, "
          f"{args.threads} thread(s), best of {args.repeats}; CPU: {cpu_model()}\n")
    print(format_report(times, calls, total))
    if line_times:
        print()
        print(format_lines(line_times, timer, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
