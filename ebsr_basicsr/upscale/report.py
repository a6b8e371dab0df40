"""What a batch tells its user: file names made safe to print, and progress lines for logs.

:func:`printable` escapes the characters of a file name that would break a one-line message
or play tricks on a terminal. :class:`ProgressLog` writes a progress line (done/total, rate,
time left) every few seconds, for runs whose stderr is a log file or a pipe rather than a
terminal, where no progress bar is drawn.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from .._files import printable

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
