"""Dropping the read-only mappings of a file: RSS falls, the bytes read back the same, writable
mappings are left alone, and the watcher keeps a mapped file under its budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.residency import POLL_S, bounded_residency, drop_mapped, file_rss_bytes, read_only_mappings

MB = 1 << 20


def _mapped_rss(f: Path) -> int:
    """Resident bytes of this process's mappings of ``f`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(f)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def _weights(tmp_path: Path, name: str) -> tuple[Path, np.ndarray]:
    data = np.arange(4 * MB, dtype=np.float32)  # 16 MB
    f = tmp_path / name
    data.tofile(f)
    return f, data


def test_a_dropped_read_only_mapping_leaves_rss_and_reads_back_the_same(tmp_path):
    f, data = _weights(tmp_path, "w.data")
    mapped = np.memmap(f, dtype=np.float32, mode="r")
    assert float(mapped.sum()) == float(data.sum())  # every page touched
    assert _mapped_rss(f) >= 15 * MB and read_only_mappings([f])
    assert drop_mapped([f]) >= 16 * MB
    assert _mapped_rss(f) < MB
    np.testing.assert_array_equal(mapped, data)  # faulted back from the file

    g, _ = _weights(tmp_path, "rw.data")
    writable = np.memmap(g, dtype=np.float32, mode="r+")
    writable[:] += 1  # a written page must never be dropped
    assert not read_only_mappings([g]) and drop_mapped([g]) == 0
    np.testing.assert_array_equal(writable[:3], [1, 2, 3])


def test_the_watcher_keeps_a_mapped_file_near_its_budget(tmp_path):
    f, data = _weights(tmp_path, "w.data")
    mapped = np.memmap(f, dtype=np.float32, mode="r")
    budget_gb = (file_rss_bytes() + 4 * MB) / 1e9  # the 16 MB file does not fit in it
    with bounded_residency([f], budget_gb=budget_gb):
        assert float(mapped.sum()) == float(data.sum())
        deadline = time.monotonic() + 100 * POLL_S
        while _mapped_rss(f) > 4 * MB and time.monotonic() < deadline:
            time.sleep(POLL_S)
        assert _mapped_rss(f) <= 4 * MB
    assert float(mapped.sum()) == float(data.sum())
