"""File helpers shared by the image and video writers and the model-file writer (standard library only):
atomic writes, file modes, and :func:`printable` for file names in messages.

Every file this package writes appears complete or not at all: it is written under a
temporary name in the destination's own folder, flushed to disk (``fsync``) and renamed over
the destination (``os.replace``, atomic on POSIX and Windows); on any error, the temporary
file is removed and an existing destination is left as it was.

Temporary names follow one pattern, ``.<name>.<random>.tmp<ext>`` next to ``<name>``
(hidden, and ending with the destination's extension so that writers which pick the format
from the file name, like OpenCV's, still can): :func:`temp_glob` and :func:`remove_temp_files`
find those an interrupted process left behind.
"""
from __future__ import annotations

import glob
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_UMASK = None
_TEMP_TAG = ".tmp"


def file_mode() -> int:
    """Permissions for a new file under the current umask (temporary files are 0600)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


#: bidirectional-text controls, which can make a name read differently from what it is
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not valid UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1), line and paragraph separators, bidi
    controls and undecodable bytes written as Python-style escapes (``\\n``, ``\\x1b``), so
    that a message stays on one line and shows the name as it is. Other text is unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(_escape(ch) if (unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") or ch in _BIDI)
                   else ch for ch in text)


def temp_glob(name: Optional[str] = None) -> str:
    """Glob pattern of the temporary files made for destination ``name`` (any name if None)."""
    head = "*" if name is None else glob.escape(name)
    return f".{head}.*{_TEMP_TAG}*"


def remove_temp_files(folder: PathLike, name: Optional[str] = None) -> int:
    """Remove the temporary files left in ``folder`` for destination ``name`` (any if None);
    returns how many were removed. Errors are ignored (best effort)."""
    removed = 0
    try:
        paths = list(Path(folder).glob(temp_glob(name)))
    except OSError:
        return 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; silently skipped where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A temporary file next to ``dst`` that becomes ``dst`` on :meth:`commit`.

    ``path`` is the temporary file (created empty, private); write it with anything that
    takes a path. :meth:`commit` flushes it to disk, gives it ``mode`` (default: what a new
    file gets under the umask) and renames it to ``dst``; :meth:`discard` removes it. As a
    context manager it commits when the block ends normally and discards on an exception.
    ``suffix`` is the temporary name's extension (default: ``dst``'s). Raises OSError."""

    def __init__(self, dst: PathLike, *, suffix: Optional[str] = None, mode: Optional[int] = None):
        self.dst = Path(dst)
        self.mode = file_mode() if mode is None else mode
        ext = self.dst.suffix if suffix is None else suffix
        fd, tmp = tempfile.mkstemp(prefix=f".{self.dst.name}.", suffix=_TEMP_TAG + ext,
                                   dir=self.dst.parent if str(self.dst.parent) else ".")
        os.close(fd)
        self.path: Optional[Path] = Path(tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        elif self.path is not None:
            self.commit()
        return False

    def commit(self, dst: Optional[PathLike] = None) -> Path:
        """Flush, set the permissions and rename to ``dst`` (default: the one given at
        creation; another name must be in the same folder). Returns the final path."""
        if dst is not None:
            self.dst = Path(dst)
        if self.path is None:
            raise ValueError(f"{self.dst}: the temporary file was already committed or discarded")
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(self.path, self.mode)
            os.replace(self.path, self.dst)
        except BaseException:
            self.discard()
            raise
        self.path = None
        _fsync_folder(self.dst.parent)
        return self.dst

    def discard(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None


def atomic_write(path: PathLike, data: Union[bytes, bytearray, memoryview, Callable[[BinaryIO], object]], *,
                 mode: Optional[int] = None) -> int:
    """Write ``path`` atomically: ``data`` (bytes-like) or what ``data(f)`` writes to the
    binary file ``f``. Returns the size written; raises OSError (nothing changed at ``path``).

    ``mode``: the file's permissions (default: a new file's under the current umask)."""
    with AtomicFile(path, mode=mode) as tmp:
        with open(tmp.path, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            size = f.tell()
    return size
