"""Write a directory all at once or not at all.

Work goes into a hidden sibling temp directory that is renamed onto the destination only
when the ``with`` block finishes without error. An interrupted or failed run leaves the
destination as it was (absent, or the old complete version), never half-written. A run
killed outright (SIGKILL, power loss) cannot clean up after itself: its temp directory names
its process and host, and the next write to the same destination removes it once that
process is gone.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import SparseDeployError

log = logging.getLogger(__name__)

_KINDS = ("partial", "old")  # work in progress, and a replaced version on its way out


def check_directory_path(out: Path) -> None:
    """Fail early, before any compute, when ``out`` exists and is not a directory."""
    if out.exists() and not out.is_dir():
        raise SparseDeployError(f"output path '{out}' exists and is not a directory")


def check_destination(out: Path, overwrite: bool) -> None:
    """Fail early, before any compute, when ``out`` exists with content and no overwrite."""
    check_directory_path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SparseDeployError(f"output directory '{out}' is not empty (pass --overwrite to replace it)")


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-{os.getpid()}-{_host_tag()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError would mean alive, another user's: not caught as "gone"
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temp directories that killed runs left beside ``out`` (this host's, whose
    process is gone); a run still writing keeps its own."""
    removed = []
    for kind in _KINDS:
        prefix = f".{out.name}.{kind}-"
        for path in out.parent.glob(f"{glob.escape(prefix)}*"):
            pid, _, rest = path.name[len(prefix):].partition("-")
            host, _, _ = rest.partition("-")
            if pid.isdigit() and host == _host_tag() and not _process_alive(int(pid)) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                log.info("removed %s, left by an interrupted run", path)
    return removed


def _usual_modes(root: Path) -> None:
    """``mkdtemp`` creates mode 0700: give the tree the modes the umask gives any new file, so
    that a hand-off directory is readable by whom the user's other files are."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_directory(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` on success."""
    out = Path(out)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out, "partial"), dir=out.parent))
    try:
        yield tmp
        _usual_modes(tmp)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=_temp_prefix(out, "old"), dir=out.parent))
            out.rename(trash / out.name)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
