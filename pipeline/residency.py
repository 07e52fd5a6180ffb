"""Bound how much of a memory-mapped file stays resident in this process.

A runtime that memory-maps a 27 GB artifact's external data (ONNX Runtime does, without
prepacking) touches every page in one forward pass; Linux keeps the touched pages mapped, so the
process's RSS climbs towards the whole file although nothing needs them resident: a machine with
less memory than the file would page them out anyway. :func:`bounded_residency` watches the
process's file-backed RSS and, over a budget, tells the kernel (``madvise(MADV_DONTNEED)``) that
the clean mappings of the named files are not needed now. The pages stay in the page cache and
fault back in when touched, so what the runtime computes is unchanged; the RSS a serving team
would have to provision for a check on a few tokens is then the budget, not the model.

ONNX Runtime 1.32 maps each external tensor private and *writable* (``rw-p``), so the permission
cannot tell a weight from a buffer. What can is ``/proc/self/smaps``: a private mapping is dropped
only while none of its pages was ever written (no ``Anonymous`` copy-on-write pages), since
dropping a written private page would lose the write; inference does not write its weights. A
shared mapping's writes are in the page cache, so it is always safe to drop.
The caller must keep the files mapped while the watcher runs (run it around inference, not around
opening or closing a session), so that an address range it read cannot be handed to another
allocation before it advises it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAPPED_BUDGET_GB = 2.0  # file-backed RSS above which the watched mappings are dropped
POLL_S = 0.05
_MADV_DONTNEED = 4
_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ [-rwxps]{4} [0-9a-f]+ [0-9a-f]+:[0-9a-f]+ \d+")
_COUNTED = {"Rss:": "rss", "Anonymous:": "anonymous"}  # smaps fields read, per mapping


def status_kb(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of ``/proc/PID/status`` (``VmHWM``, ``RssAnon``, ``RssFile``, ...); raises
    ``OSError`` once the process is gone."""
    fields = (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(value.split()[0]) for key, value in fields if value.strip().endswith(" kB")}


def file_rss_bytes() -> int:
    """This process's resident file-backed memory (``RssFile`` of ``/proc/self/status``)."""
    return status_kb().get("RssFile", 0) * 1024


@dataclass
class Mapping:
    """One mapping of a watched file, from ``/proc/self/smaps``."""

    start: int
    end: int
    shared: bool
    rss: int = 0  # bytes resident
    anonymous: int = 0  # bytes of private pages written since mapped (copy-on-write copies)

    @property
    def clean(self) -> bool:
        """Dropping it loses nothing: a shared mapping's writes are in the page cache, and a private
        one holds no copy-on-write page (every resident page is the file's)."""
        return self.shared or self.anonymous == 0


def mappings(files: Iterable[Path]) -> list[Mapping]:
    """This process's mappings of ``files`` (matched by device and inode, so a hard link of a file
    is the same file)."""
    ids = set()
    for f in files:
        st = os.stat(f)
        ids.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    found: list[Mapping] = []
    current: Mapping | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if _HEADER.match(line):
            current = None
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            if (major, minor, int(fields[4])) in ids:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = Mapping(start, end, shared=fields[1][3] == "s")
                found.append(current)
        elif current is not None and fields[0] in _COUNTED:
            field = _COUNTED[fields[0]]
            setattr(current, field, getattr(current, field) + int(fields[1]) * 1024)
    return found


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def drop_mapped(files: Iterable[Path]) -> int:
    """Advise the kernel that the clean mappings of ``files`` are not needed now; returns the bytes
    of address space advised."""
    libc, advised = _libc(), 0
    for m in mappings(files):
        if not m.clean or not m.rss:
            continue
        if libc.madvise(m.start, m.end - m.start, _MADV_DONTNEED) == 0:
            advised += m.end - m.start
        else:
            log.debug("madvise(%#x, %d) failed: %s", m.start, m.end - m.start, os.strerror(ctypes.get_errno()))
    return advised


@contextmanager
def bounded_residency(files: Iterable[Path], budget_gb: float = MAPPED_BUDGET_GB) -> Iterator[None]:
    """While inside, keep this process's file-backed RSS near ``budget_gb`` by dropping the
    read-only mappings of ``files`` whenever it is exceeded (see the module docstring)."""
    files, budget = [Path(f) for f in files], int(budget_gb * 1e9)
    stop, drops = threading.Event(), [0]

    def watch() -> None:
        while not stop.wait(POLL_S):
            if file_rss_bytes() > budget:
                drop_mapped(files)
                drops[0] += 1

    watcher = threading.Thread(target=watch, name="bounded-residency", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        if drops[0]:
            log.info("kept the mapped weights' RSS near %.1f GB (%d drops)", budget_gb, drops[0])
