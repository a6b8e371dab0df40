"""What a batch tells its user: file names made safe to print, and progress lines for logs.

:func:`printable` escapes the characters of a file name that would break a one-line message
or play tricks on a terminal. :class:`ProgressLog` writes a progress line (done/total, rate,
time left) every few seconds, for runs whose stderr is a log file or a pipe rather than a
terminal, where no progress bar is drawn.
"""
from __future__ import annotations

import time
import unicodedata
from typing import Callable, Optional

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


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLog:
    """Calls ``emit(line)`` with ``progress: 120/795 frames (15%), 2.1 frames/s, about 5 min 20 s
    left`` at most every ``interval`` seconds as :meth:`update` reports work done (not once
    all is done: the caller's summary says that)."""

    def __init__(self, total: int, unit: str, interval: float, emit: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.unit, self.interval, self.emit, self.clock = total, unit, interval, emit, clock
        self.done = 0
        self.start = clock()
        self.last = self.start
        self.current: Optional[str] = None

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.interval > 0 and now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self.emit(self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        elapsed = max((self.clock() if now is None else now) - self.start, 1e-9)
        rate = self.done / elapsed
        total = max(self.total, self.done)
        text = f"progress: {self.done}/{total} {self.unit}"
        if total:
            text += f" ({100 * self.done // total}%)"
        text += f", {rate:.2f} {self.unit}/s" if rate < 10 else f", {rate:.0f} {self.unit}/s"
        if rate > 0 and total > self.done:
            text += f", about {format_duration((total - self.done) / rate)} left"
        if self.current:
            text += f" ({printable(self.current)})"
        return text
