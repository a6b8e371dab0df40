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
the version, the header, the length (truncated or trailing bytes), the checksum, and that
every tensor lies inside the data.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from .._files import file_mode

MAGIC = b"EBSRMODL"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ")
_ALIGN = 64
_DIGEST = 32
_DTYPES = {"float32": np.float32, "uint64": np.uint64, "int64": np.int64}


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
    """Write a model file atomically (temporary file, then rename); returns its size."""
    path = Path(path)
    raw = encode_model(header, tensors)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, file_mode())  # mkstemp makes it private; a model file is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(raw)


def decode_model(raw: bytes, source: str = "model file") -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and validate model-file bytes; raises :class:`ModelFileError`."""
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
    header_end = _PREAMBLE.size + header_len
    if header_end > len(raw):
        raise ModelFileError(f"{source}: truncated (the header alone needs {header_end} bytes, "
                             f"the file has {len(raw)})")
    try:
        header = json.loads(raw[_PREAMBLE.size:header_end].decode())
        table = header["tensors"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ModelFileError(f"{source}: damaged header") from None
    start = _aligned(header_end)
    try:
        data_len = max((_aligned(t["offset"] + t["nbytes"]) for t in table.values()), default=0)
    except (KeyError, TypeError):
        raise ModelFileError(f"{source}: damaged tensor table") from None
    expected = start + data_len + _DIGEST
    if len(raw) < expected:
        raise ModelFileError(f"{source}: truncated ({len(raw)} bytes, expected {expected})")
    if len(raw) > expected:
        raise ModelFileError(f"{source}: {len(raw) - expected} unexpected trailing bytes")
    if hashlib.sha256(raw[:-_DIGEST]).digest() != raw[-_DIGEST:]:
        raise ModelFileError(f"{source}: checksum mismatch, the file is damaged")
    tensors = {}
    for name, t in table.items():
        try:
            dtype = np.dtype(_DTYPES[t["dtype"]])
            count = int(np.prod(t["shape"], dtype=np.int64))
            if count * dtype.itemsize != t["nbytes"]:
                raise ValueError
            array = np.frombuffer(raw, dtype, count, start + t["offset"]).reshape(t["shape"]).copy()
        except (KeyError, ValueError, TypeError):
            raise ModelFileError(f"{source}: damaged tensor {name!r}") from None
        tensors[name] = array
    del header["tensors"]
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
