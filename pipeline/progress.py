"""Signs of life on long work, in a terminal and in logs alike.

A progress bar is for a person at a terminal; CI logs, ``docker run`` without ``-t`` and
``nohup`` get no bar at all (tqdm switches itself off when stderr is not a TTY), which made a
20-minute prune look dead. So: a bar on a TTY, else an INFO line at least every
``INTERVAL_S`` seconds with what is done and what remains. ``heartbeat`` covers one long call
that cannot report progress itself (tracing a graph for export); ``quiet_foreign_bars`` mutes
the bars that libraries draw whatever the terminal (transformers' GGUF dequantization), which in
a log are one endless line of carriage returns.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import std as tqdm_std
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INTERVAL_S = 15.0
T = TypeVar("T")


def _terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, unit: str, total: int | None = None,
             interval_s: float = INTERVAL_S) -> Iterator[T]:
    """``items``, with a bar on a terminal or INFO lines in a log (the last one always)."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    if _terminal():
        yield from tqdm(items, desc=desc, unit=unit, total=total)
        return
    start = last = time.monotonic()
    done = 0
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= interval_s or done == total:
            left = f", ~{(now - start) / done * (total - done):.0f} s left" if total else ""
            log.info("%s: %d/%s %s done in %.0f s%s", desc, done, total or "?", unit, now - start, left)
            last = now
    if total is None or done != total:
        log.info("%s: %d %s done in %.0f s", desc, done, unit, time.monotonic() - start)


@contextmanager
def heartbeat(desc: str, interval_s: float = INTERVAL_S) -> Iterator[None]:
    """While the block runs, log ``desc: still running (N s)`` every ``interval_s`` seconds when
    stderr is not a terminal (a terminal shows the start line, and a person sees it is busy)."""
    start = time.monotonic()
    log.info("%s", desc)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            log.info("%s: still running (%.0f s)", desc, time.monotonic() - start)

    thread = None if _terminal() else threading.Thread(target=beat, name="heartbeat", daemon=True)
    if thread:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread:
            thread.join()
        log.info("%s: done in %.0f s", desc, time.monotonic() - start)


@contextmanager
def quiet_foreign_bars() -> Iterator[None]:
    """Off a terminal, every tqdm bar drawn inside the block is disabled (a terminal keeps them).
    For library calls that draw one unconditionally; pair it with ``heartbeat``, which says in
    the log that the call is alive. Patches the base class, which every tqdm variant calls."""
    if _terminal():
        yield
        return
    original = tqdm_std.tqdm.__init__

    def disabled(self: tqdm_std.tqdm, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm_std.tqdm.__init__ = disabled  # type: ignore[method-assign]
    try:
        yield
    finally:
        tqdm_std.tqdm.__init__ = original  # type: ignore[method-assign]
