"""File helpers shared by the image writer and the model-file writer (standard library only)."""
from __future__ import annotations

import os

_UMASK = None


def file_mode() -> int:
    """Permissions for a new file under the current umask (temporary files are 0600)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (``\\n``, ``\\x1b``,
    ``\\udcff`` for an undecodable byte of a file name), so that a file name in a message
    stays on one line and cannot drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
