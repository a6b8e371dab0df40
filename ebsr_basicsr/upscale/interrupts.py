"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

Python runs a signal handler between two bytecodes of the main thread, which can be inside
the dispatcher of a Numba kernel: a handler that raises there comes back as ``SystemError:
... returned a result with an exception set``, and one that raises in the middle of a
cleanup leaves temporary files behind. So :func:`handle_signals` installs handlers that only
record the signal; the work calls :func:`check` at safe points (between tiles, frames and
files, before a file is committed), which raises :class:`Interrupted` there. A second signal
while the first is pending raises at once (for a user who does not want to wait for the
current tile); an error that comes out of a kernel while a signal is pending is the
interrupt, not a failure of the file (:func:`pending`).
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Optional, Sequence

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: exit status of an interrupted run (128 + SIGINT, what shells report for Ctrl-C)
EXIT_STATUS = 130

_pending: Optional[int] = None
_count = 0


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop (``signum``: the signal)."""

    def __init__(self, signum: Optional[int] = None):
        super().__init__(signum)
        self.signum = signum


def record(signum, frame=None) -> None:
    """The signal handler: note the signal; raise :class:`Interrupted` if one is already pending."""
    global _pending, _count
    _count += 1
    if _pending is not None:  # asked twice: stop now
        raise Interrupted(signum)
    _pending = signum


def pending() -> Optional[int]:
    """The signal received and not yet acted upon, or None."""
    return _pending


def received() -> int:
    """How many signals arrived since :func:`reset` (a caller waiting on something can
    escalate when a new one comes)."""
    return _count


def check() -> None:
    """Raise :class:`Interrupted` if a signal is pending (a safe point)."""
    if _pending is not None:
        raise Interrupted(_pending)


def reset() -> None:
    global _pending, _count
    _pending, _count = None, 0


@contextlib.contextmanager
def handle_signals(signals: Sequence[int] = SIGNALS) -> Iterator[None]:
    """Record ``signals`` instead of acting on them at once, for the duration of the block.

    A signal that is ignored (``SIG_IGN``, e.g. SIGINT in a job started in the background)
    stays ignored. Only the main thread can install handlers; elsewhere this does nothing."""
    reset()
    saved = {}
    try:
        for sig in signals:
            try:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue
                saved[sig] = signal.signal(sig, record)
            except ValueError:  # not the main thread
                break
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
        reset()


def raise_if_interrupted(exc: BaseException) -> None:
    """Re-raise ``exc`` as :class:`Interrupted` if a signal is pending: whatever failed while
    the run was being stopped (a Numba dispatcher, a subprocess) failed because of it."""
    if isinstance(exc, KeyboardInterrupt):
        raise exc if isinstance(exc, Interrupted) else Interrupted(_pending) from exc
    if _pending is not None:
        raise Interrupted(_pending) from exc
