"""The runtime model file: a JSON header and raw arrays, never pickle.

Layout (all integers little-endian)::

    b"EBSRMODL"            8 bytes, magic
    version                uint32
    header length          uint64
    header                 UTF-8 JSON: arch, hyper-parameters, scale, graph, tensor table
    padding to 64 bytes
    tensor data            each tensor C-contiguous at a 64-byte aligned offset
    SHA-256                32 bytes, of everything before it

Loading checks, in this order, each with its own message: the file can be read, the magic,
the version, the header (bounded size and nesting, strict JSON), the tensor table (dtypes
from an allow-list, shapes, aligned offsets, byte sizes), the length (truncated or trailing
bytes), the checksum, and that the tensors lie inside the data without overlapping. What
the header describes (the op graph) is checked by :mod:`.ops_schema` when an engine loads.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from .._files import atomic_write

MAGIC = b"EBSRMODL"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ")
_ALIGN = 64
_DIGEST = 32
_DTYPES = {"float32": np.float32, "uint64": np.uint64, "int64": np.int64}
MAX_HEADER_BYTES = 8 << 20
MAX_HEADER_DEPTH = 32
MAX_TENSORS = 65536
MAX_NDIM = 8
MAX_BYTES = 1 << 40  # any size or offset beyond this cannot describe a real file


class ModelFileError(ValueError):
    """A model file that cannot be used, with a message saying why."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def encode_model(header: dict, tensors: dict[str, np.ndarray]) -> bytes:
    """Serialise ``header`` (JSON-able) and ``tensors`` into the model file's bytes."""
    table, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.name
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {dtype}")
        table[name] = {"dtype": dtype, "shape": list(array.shape), "offset": offset, "nbytes": array.nbytes}
        blobs.append((offset, array.tobytes()))
        offset = _aligned(offset + array.nbytes)
    meta = json.dumps({**header, "tensors": table}, sort_keys=True).encode()
    start = _aligned(_PREAMBLE.size + len(meta))
    data = bytearray(start + offset)
    data[:_PREAMBLE.size] = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(meta))
    data[_PREAMBLE.size:_PREAMBLE.size + len(meta)] = meta
    for off, raw in blobs:
        data[start + off:start + off + len(raw)] = raw
    return bytes(data) + hashlib.sha256(data).digest()


def save_model(path, header: dict, tensors: dict[str, np.ndarray]) -> int:
    """Write a model file atomically (the package's one convention, :func:`atomic_write`:
    temporary file, fsync, rename); returns its size."""
    return atomic_write(path, encode_model(header, tensors))


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def _unique_keys(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return out


def _nesting_depth(value) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (no recursion)."""
    deepest, stack = 0, [(value, 1)] if type(value) in (dict, list) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if type(node) is dict else node
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return deepest


def _parse_header(text: bytes, source: str) -> dict:
    """The header as a dict: strict UTF-8 JSON, no NaN or infinity, no repeated keys,
    nesting bounded (the parser itself stops at Python's recursion limit)."""
    try:
        header = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float,
                            object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ModelFileError(f"{source}: damaged header (nested more than {MAX_HEADER_DEPTH} levels deep)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(f"{source}: damaged header ({e})") from None
    if type(header) is not dict:
        raise ModelFileError(f"{source}: damaged header (not a JSON object)")
    if _nesting_depth(header) > MAX_HEADER_DEPTH:
        raise ModelFileError(f"{source}: damaged header (nested more than {MAX_HEADER_DEPTH} levels deep)")
    return header


def _table_entry(name: str, t, source: str) -> tuple[np.dtype, tuple, int, int]:
    """``(dtype, shape, offset, nbytes)`` of one entry of the tensor table, each checked
    alone (the offsets are checked against the data once its length is known)."""
    def bad(reason):
        return ModelFileError(f"{source}: damaged tensor table: tensor {name!r:.60} {reason}")

    if type(t) is not dict or set(t) != {"dtype", "shape", "offset", "nbytes"}:
        raise bad("needs exactly dtype, shape, offset and nbytes")
    if type(t["dtype"]) is not str or t["dtype"] not in _DTYPES:
        raise bad(f"has dtype {t['dtype']!r:.40}, not one of {', '.join(_DTYPES)}")
    shape = t["shape"]
    if (type(shape) is not list or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d <= MAX_BYTES for d in shape)):
        raise bad(f"has shape {shape!r:.60}, not a list of at most {MAX_NDIM} sizes in 0..{MAX_BYTES}")
    offset, nbytes = t["offset"], t["nbytes"]
    for key, v in (("offset", offset), ("nbytes", nbytes)):
        if type(v) is not int or not 0 <= v <= MAX_BYTES:
            raise bad(f"has {key} {v!r:.40}, not an integer in 0..{MAX_BYTES}")
    if offset % _ALIGN:
        raise bad(f"has offset {offset}, not a multiple of {_ALIGN}")
    dtype = np.dtype(_DTYPES[t["dtype"]])
    if math.prod(shape) * dtype.itemsize != nbytes:
        raise bad(f"has {nbytes} bytes, but {dtype.name} {tuple(shape)} needs {math.prod(shape) * dtype.itemsize}")
    return dtype, tuple(shape), offset, nbytes


def decode_model(raw: bytes, source: str = "model file") -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and validate model-file bytes; raises :class:`ModelFileError`.

    Everything is checked before any array is made: the preamble, the header (size,
    nesting, strict JSON), every entry of the tensor table (dtype from an allow-list, a
    shape of non-negative sizes, an aligned offset, its byte size), the file length, the
    checksum, and that the tensors lie inside the data section without overlapping."""
    if len(raw) < _PREAMBLE.size:
        if raw and MAGIC.startswith(raw[:len(MAGIC)]):
            raise ModelFileError(f"{source}: truncated (only {len(raw)} bytes)")
        raise ModelFileError(f"{source}: not an ebsr-basicsr model (only {len(raw)} bytes)")
    magic, version, header_len = _PREAMBLE.unpack_from(raw)
    if magic != MAGIC:
        raise ModelFileError(f"{source}: not an ebsr-basicsr model file (bad magic bytes); "
                             "convert a training checkpoint with `ebsr-export` first")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{source}: model format version {version} is not supported by this runtime "
                             f"(it reads version {FORMAT_VERSION}); re-export the checkpoint with this version")
    if header_len > MAX_HEADER_BYTES:
        raise ModelFileError(f"{source}: damaged header (it claims {header_len} bytes, "
                             f"more than the {MAX_HEADER_BYTES} allowed)")
    header_end = _PREAMBLE.size + header_len
    if header_end > len(raw):
        raise ModelFileError(f"{source}: truncated (the header alone needs {header_end} bytes, "
                             f"the file has {len(raw)})")
    header = _parse_header(raw[_PREAMBLE.size:header_end], source)
    table = header.pop("tensors", None)
    if type(table) is not dict:
        raise ModelFileError(f"{source}: damaged tensor table (not a JSON object)")
    if len(table) > MAX_TENSORS:
        raise ModelFileError(f"{source}: damaged tensor table (more than {MAX_TENSORS} tensors)")
    entries = {name: _table_entry(name, t, source) for name, t in table.items()}
    start = _aligned(header_end)
    data_len = max((_aligned(offset + nbytes) for _, _, offset, nbytes in entries.values()), default=0)
    expected = start + data_len + _DIGEST
    if len(raw) < expected:
        raise ModelFileError(f"{source}: truncated ({len(raw)} bytes, expected {expected})")
    if len(raw) > expected:
        raise ModelFileError(f"{source}: {len(raw) - expected} unexpected trailing bytes")
    if hashlib.sha256(memoryview(raw)[:-_DIGEST]).digest() != raw[-_DIGEST:]:
        raise ModelFileError(f"{source}: checksum mismatch, the file is damaged")
    end, previous = 0, None
    for name, (_, _, offset, nbytes) in sorted(entries.items(), key=lambda item: item[1][2]):
        if nbytes and offset < end:
            raise ModelFileError(f"{source}: damaged tensor table: tensors {previous!r:.60} and {name!r:.60} overlap")
        if nbytes:
            end, previous = offset + nbytes, name
    tensors = {name: np.frombuffer(raw, dtype, math.prod(shape), start + offset).reshape(shape).copy()
               for name, (dtype, shape, offset, _) in entries.items()}
    return header, tensors


def load_model(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate a model file; raises :class:`ModelFileError` with the reason."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory, not a model file") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_model(raw, str(path))
