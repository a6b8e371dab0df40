"""Mutation fuzzing of the model-file loader; ``tests/test_model_file.py`` runs it in a subprocess.

    python tests/model_fuzz.py --cases 2500 --seed 0 A.ebsr [B.ebsr ...]

Each case mutates one of the given valid model files: a value of the JSON header (numbers,
strings, lists, objects; in the op graph, the tensor table or the top level), a key removed
or added, list items dropped, repeated or swapped, a tensor's offset, shape or dtype (often
with its byte size kept consistent so that only the op schema can tell), deeply nested JSON,
bytes of the header or the data flipped, the preamble changed, the file cut or extended. The
checksum is recomputed so that the mutation reaches the parser. A case passes when loading
raises ``ModelFileError`` naming the file, or when the model loads and upscales a tiny image
to the right shape; anything else (another exception, a case running past its time limit)
is a failure. The address space is capped at its size after warming up plus
``--memory-mib`` (1 GiB), so that a case allocating more fails with MemoryError even if it
never touches the memory. Prints one JSON line: counts per mutation, failures (the first
20), the slowest case, and the growth of the peak RSS over the run.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import resource
import signal
import struct
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from ebsr_basicsr.runtime import Engine, ModelFileError
from ebsr_basicsr.runtime.format import FORMAT_VERSION, MAGIC, decode_model

PREAMBLE = struct.Struct("<8sIQ")
SOURCE = "fuzzed.ebsr"
CASE_SECONDS = 30
IMAGE = (5, 7)  # not a multiple of a window, so padding and cropping run too


class CaseTimeout(BaseException):
    """A case ran past its time limit (a BaseException: no ``except Exception`` hides it)."""


def _alarm(signum, frame):
    raise CaseTimeout(f"ran longer than {CASE_SECONDS} s")


# ------------------------------------------------------------------------------ file layout
def split(raw: bytes) -> tuple[dict, bytes]:
    header_len = PREAMBLE.unpack_from(raw)[2]
    start = -(-(PREAMBLE.size + header_len) // 64) * 64
    return json.loads(raw[PREAMBLE.size:PREAMBLE.size + header_len]), raw[start:-32]


def signed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def assemble(text: bytes, data: bytes, *, version=FORMAT_VERSION, header_len=None, magic=MAGIC) -> bytes:
    body = PREAMBLE.pack(magic, version, len(text) if header_len is None else header_len) + text
    return signed(body + bytes(-len(body) % 64) + data)


def dump(header) -> bytes:
    return json.dumps(header, sort_keys=True).encode()


# ------------------------------------------------------------------------------ JSON mutations
KEYS = ["bias", "threshold", "spatial", "channel", "skip", "scale", "mean", "weight", "shift", "kernel", "op", "in",
        "out", "tensors", "graph", "output", "in_channels", "shuffle", "mode", "fc1_w", "dtype", "shape", "offset",
        "nbytes", "range", "padding", "stride", "window", "heads", "qkv", "zzz"]
SPECIAL = [None, True, False, 0, 1, -1, 2, 3, 4, 5, 8, 64, 99, 4096, 2 ** 31, 2 ** 63, 2 ** 70, -2 ** 70, 10 ** 400,
           0.5, -0.0, 1e308, 1e-320, float("nan"), float("inf"), "", "input", "x" * 300, "float64", "uint8", "int64",
           "conv", "linear", "affine", "mlp", "absmean", "identity", "nearest", "bilinear", [], [1], [-1], [2 ** 70],
           [0, 0], {}, {"op": "add"}]


def paths(node, prefix=()):
    """The path (a tuple of keys) of every value below ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from paths(child, prefix + (key,))


class Case:
    """A fresh copy of one model's header and its data, with the paths of its values."""
    _paths: dict = {}

    def __init__(self, raw: bytes):
        self.header, self.data = split(raw)
        if raw not in self._paths:  # the same for every copy of one file
            self._paths[raw] = {part: list(paths(self.header[part] if part else self.header, (part,) if part else ()))
                                for part in ("graph", "tensors", "")}
        self.paths = self._paths[raw]

    def pick(self, rng, part=None):
        """``(container, key)`` of a random value: mostly in the graph and the tensor table."""
        part = part if part is not None else rng.choices(["graph", "tensors", ""], [5, 3, 1])[0]
        path = rng.choice(self.paths[part])
        node = self.header
        for key in path[:-1]:
            node = node[key]
        return node, path[-1]

    def values(self, rng, kind, part=None):
        """A random value of type ``kind`` (the header itself if there is none)."""
        found = [v for p, k in (self.pick(rng, part) for _ in range(50)) for v in [p[k]] if isinstance(v, kind)]
        return rng.choice(found) if found else self.header

    def file(self, text=None, data=None, **preamble) -> bytes:
        return assemble(dump(self.header) if text is None else text, self.data if data is None else data, **preamble)


def names(header) -> list:
    return (list(header["tensors"]) + [op["out"] for op in header["graph"]]
            + ["normalize", "denormalize", "add", "conv2d", "binary_unit", "layer_norm", "swin_block", "pad_reflect",
               "crop", "teleport"])


def new_value(rng: random.Random, old, header):
    pool = SPECIAL + names(header)
    if type(old) is int:
        pool += [old + 1, old - 1, 2 * old, -old, old // 2, old + 64, old - 64, old * 3]
    elif type(old) is float:
        pool += [old * 2, -old, old + 1e-3, 0.0, old * 1e30]
    elif type(old) is str:
        pool += [old + "x", old[:-1], old.upper()]
    elif type(old) is list:
        pool += [old[:-1], old + old[:1], old[::-1], old * 2, [x + 1 if type(x) is int else x for x in old]]
    elif type(old) is dict:
        pool += [dict(list(old.items())[:-1]), {**old, rng.choice(KEYS): rng.choice(SPECIAL)}]
    return copy.deepcopy(rng.choice(pool))


def m_value(rng, case):
    parent, key = case.pick(rng)
    parent[key] = new_value(rng, parent[key], case.header)
    return case.file()


def m_remove(rng, case):
    parent, key = case.pick(rng)
    del parent[key]
    return case.file()


def m_add_key(rng, case):
    case.values(rng, dict)[rng.choice(KEYS)] = copy.deepcopy(rng.choice(SPECIAL + names(case.header)))
    return case.file()


def m_list(rng, case):
    header = case.header
    items = case.values(rng, list)
    if not isinstance(items, list) or not items:
        items = header["graph"]
    i, j = rng.randrange(len(items)), rng.randrange(len(items))
    action = rng.choice(["drop", "repeat", "swap", "insert"])
    if action == "drop":
        del items[i]
    elif action == "repeat":
        items.insert(j, copy.deepcopy(items[i]))
    elif action == "swap":
        items[i], items[j] = items[j], items[i]
    else:
        items.insert(j, new_value(rng, items[i], header))
    return case.file()


def m_table(rng, case):
    """A tensor's offset, shape or dtype; often with its byte size made consistent again."""
    table = case.header["tensors"]
    t = table[rng.choice(list(table))]
    other = table[rng.choice(list(table))]
    count = int(np.prod(t["shape"], dtype=object))
    size = {"float32": 4, "uint64": 8, "int64": 8}
    action = rng.choice(["offset", "shape", "flat", "dtype", "nbytes", "steal"])
    if action == "offset":
        t["offset"] = rng.choice([-64, -1, -t["offset"] - 64, t["offset"] + 64, t["offset"] - 64, other["offset"],
                                  2 ** 62, 2 ** 70, t["offset"] + 1])
    elif action == "shape":
        t["shape"] = rng.choice([[-1], [2 ** 70], [0], t["shape"] + [1], t["shape"][1:], [count, 0], [-count],
                                 [2 ** 31, 2 ** 31], [d + 1 for d in t["shape"]]])
        if rng.random() < 0.5:
            t["nbytes"] = int(np.prod(t["shape"], dtype=object)) * size[t["dtype"]]
    elif action == "flat":  # same bytes, another shape: only the op schema can refuse it
        t["shape"] = rng.choice([[count], t["shape"][::-1], [1] + t["shape"], [count, 1]])
    elif action == "dtype":
        new = rng.choice(["float32", "uint64", "int64", "float64", "bool", "object", 7])
        t["dtype"] = new
        if new in size and t["nbytes"] % size[new] == 0:
            t["shape"] = [t["nbytes"] // size[new]]
    elif action == "nbytes":
        t["nbytes"] = rng.choice([0, -1, t["nbytes"] + 64, t["nbytes"] - 4, 2 ** 70])
    else:  # point at another tensor's bytes
        t.update(offset=other["offset"], nbytes=other["nbytes"], shape=other["shape"], dtype=other["dtype"])
    return case.file()


def m_deep(rng, case):
    parent, key = case.pick(rng)
    parent[key] = "@@DEEP@@"
    n = rng.choice([20, 33, 200, 5000, 200000])
    nest = rng.choice([("[" * n + "]" * n), ('{"a":' * n + "0" + "}" * n)])
    return case.file(dump(case.header).replace(b'"@@DEEP@@"', nest.encode()))


def m_header_bytes(rng, case):
    text = bytearray(dump(case.header))
    for _ in range(rng.choice([1, 1, 2, 8])):
        i = rng.randrange(len(text))
        action = rng.choice(["flip", "insert", "delete"])
        if action == "flip":
            text[i] ^= 1 << rng.randrange(8)
        elif action == "insert":
            text.insert(i, rng.randrange(256))
        else:
            del text[i]
    return case.file(bytes(text))


def m_data_bytes(rng, case):
    data = bytearray(case.data)
    for _ in range(rng.choice([1, 1, 3, 16])):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return case.file(data=bytes(data))


def m_preamble(rng, case):
    text = dump(case.header)
    action = rng.choice(["header_len", "version", "magic"])
    if action == "header_len":
        return case.file(text, header_len=rng.choice([0, 1, len(text) - 1, len(text) + 1, len(text) + 64,
                                                      2 ** 63, 2 ** 64 - 1, 2 ** 40]))
    if action == "version":
        return case.file(text, version=rng.choice([0, 2, 2 ** 32 - 1]))
    return case.file(text, magic=b"EBSRMODM")


def m_length(rng, case):
    body = case.file()[:-32]
    if rng.random() < 0.5:
        return signed(body[:rng.randrange(len(body))])
    return signed(body + bytes(rng.randrange(256) for _ in range(rng.choice([1, 63, 64, 1000]))))


MUTATIONS = {f.__name__[2:]: f for f in (m_value, m_remove, m_add_key, m_list, m_table, m_deep, m_header_bytes,
                                         m_data_bytes, m_preamble, m_length)}
WEIGHTS = {"value": 8, "remove": 3, "add_key": 2, "list": 2, "table": 4, "deep": 1, "header_bytes": 2,
           "data_bytes": 3, "preamble": 1, "length": 1}


# ------------------------------------------------------------------------------ one case
def run_case(raw: bytes) -> str:
    """``'refused'`` or ``'ran'``; raises anything else."""
    try:
        engine = Engine(*decode_model(raw, SOURCE), SOURCE)
    except ModelFileError as e:
        if not str(e).startswith(f"{SOURCE}: "):
            raise AssertionError(f"the message does not start with the file's name: {e}") from None
        return "refused"
    h, w = IMAGE
    out = engine.upscale(np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8))
    if (out.shape, out.dtype) != ((h * engine.scale, w * engine.scale, 3), np.uint8):
        raise AssertionError(f"output {out.dtype} {out.shape} for a {IMAGE} image at x{engine.scale}")
    return "ran"


def cap_address_space(extra: int):
    """Limit this process's address space to its present size plus ``extra`` bytes; returns
    the limit (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
    except OSError:
        return None
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def fuzz(models: list[Path], cases: int, seed: int, memory_mib: int = 1024) -> dict:
    originals = [m.read_bytes() for m in models]
    for raw in originals:  # the unmutated files load and run (and the kernels are compiled)
        assert run_case(raw) == "ran"
    rng = random.Random(seed)
    counts = {name: {"refused": 0, "ran": 0, "failed": 0} for name in MUTATIONS}
    failures, slowest = [], (0.0, "")
    signal.signal(signal.SIGALRM, _alarm)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limit = cap_address_space(memory_mib << 20)
    for case in range(cases):
        index = rng.randrange(len(originals))
        kind = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        label = f"case {case}: {kind} of {models[index].name}"
        raw = MUTATIONS[kind](rng, Case(originals[index]))
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            outcome = run_case(raw)
        except (Exception, CaseTimeout) as e:
            outcome = "failed"
            if len(failures) < 20:
                failures.append(f"{label}: {type(e).__name__}: {e}"[:500] + "\n"
                                + "".join(traceback.format_exception(e)[-3:])[-1500:])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - t0
        slowest = max(slowest, (seconds, label))
        counts[kind][outcome] += 1
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    return {"cases": cases, "counts": counts, "failures": failures, "slowest_s": round(slowest[0], 3),
            "slowest": slowest[1], "address_space_cap_mib": limit and limit >> 20, "rss_growth_kib": rss_growth}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--cases", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-mib", type=int, default=1024)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # overflow warnings of odd-but-valid weights are not failures
    print(json.dumps(fuzz(args.models, args.cases, args.seed, args.memory_mib)))


if __name__ == "__main__":
    sys.exit(main())
