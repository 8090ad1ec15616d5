"""Graceful stop: the first SIGTERM lets the batch or page in flight finish and be recorded,
then the run stops at the next safe point; a second SIGTERM, or a batch still in flight after
`GRACE_SECONDS`, stops it at once (also safe: the crash protocol settles that batch on the
next run)."""

from __future__ import annotations

import threading

from migrate.errors import Interrupted

GRACE_SECONDS = 3.0
_requested = threading.Event()
_reason: list[tuple[str, int]] = []


def request(signal_name: str, signum: int) -> None:
    _reason[:] = [(signal_name, signum)]
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Call at safe points (between pages, between batches): raises when a stop was requested."""
    if _requested.is_set():
        raise Interrupted(*_reason[0])


def wait(seconds: float) -> None:
    """Sleep, but wake up and stop as soon as a stop is requested."""
    _requested.wait(seconds)
    check()


def reset() -> None:
    _requested.clear()
    _reason.clear()
