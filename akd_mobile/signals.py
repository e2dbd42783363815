"""SIGTERM and SIGHUP handled like Ctrl-C: what `timeout`, job schedulers and a closed ssh
session send stops long work through the same path that stores its state, and a second
signal while that state is stored is ignored."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The signal the last stop was raised for. An extension that waits in C (Ray's `ray.wait`)
# re-raises what a handler raised as a plain KeyboardInterrupt, which loses its number.
_received: list[int] = []


class SignalStop(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP, raised in the main thread (a KeyboardInterrupt, as Ctrl-C's is)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise `SignalStop` in the main thread, and
    any further one is ignored until the block ends (so the stop's own clean-up finishes).
    Off the main thread nothing changes (Python lets only the main thread set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        _received[:] = [signum]
        raise SignalStop(signum)

    _received.clear()
    saved = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        _received.clear()


def signal_number(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: its own, else the one the stop handler last saw (a
    KeyboardInterrupt re-raised on the way), else SIGINT."""
    return getattr(exc, "signum", None) or (_received[0] if _received else signal.SIGINT)


def signal_name(exc: KeyboardInterrupt) -> str:
    """`SIGINT (Ctrl-C)`, `SIGTERM` or `SIGHUP`."""
    number = signal_number(exc)
    return "SIGINT (Ctrl-C)" if number == signal.SIGINT else signal.Signals(number).name
