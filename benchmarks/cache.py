"""The benchmarks' work cache under ``$SPARSE_DEPLOY_CACHE``: pruned models and exported
artifacts that take minutes to make and gigabytes to keep.

Entries are keyed on the code that fills them, so a changed pruner or exporter is never
answered from what its old version wrote, and each new entry deletes its stale namesakes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.environment import source_digest

log = logging.getLogger(__name__)


def code_keyed(path: Path) -> Path:
    """``path`` as ``NAME@DIGEST``, the digest of the code in pipeline/ and export/."""
    return path.with_name(f"{path.name}@{source_digest('pipeline', 'export')}")


def drop_stale(current: Path) -> None:
    """Delete the entries of the same name filled by other code versions (a 7B-geometry proxy
    artifact weighs ~5 GB)."""
    name = current.name.partition("@")[0]
    for stale in current.parent.glob(f"{name}@*"):
        if stale != current and stale.is_dir():
            log.info("removing %s (filled by another code version)", stale)
            shutil.rmtree(stale)


def tree_gb(root: Path) -> float:
    """Disk taken by everything under ``root``, in GB (logged so that a growing cache is seen).

    A file hard-linked twice (the prefill flavour links the decode flavour's external data) is counted
    once: it is on disk once."""
    seen: dict[tuple[int, int], int] = {}
    for f in root.rglob("*"):
        if f.is_file():
            st = f.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values()) / 1e9
