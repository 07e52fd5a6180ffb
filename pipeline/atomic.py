"""Write a directory all at once or not at all.

Work goes into a hidden sibling temp directory that is renamed onto the destination only
when the ``with`` block finishes without error. An interrupted or failed run leaves the
destination as it was (absent, or the old complete version), never half-written.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import SparseDeployError


def check_destination(out: Path, overwrite: bool) -> None:
    """Fail early, before any compute, when ``out`` exists with content and no overwrite."""
    if out.exists() and not out.is_dir():
        raise SparseDeployError(f"output path '{out}' exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SparseDeployError(f"output directory '{out}' is not empty (pass --overwrite to replace it)")


@contextmanager
def atomic_directory(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` on success."""
    out = Path(out)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(trash / out.name)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
