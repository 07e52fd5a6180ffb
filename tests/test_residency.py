"""Dropping the clean mappings of a file: RSS falls, the bytes read back the same, a private
mapping that was written (copy-on-write) is left alone, a shared one keeps its writes, and the
watcher keeps a mapped file under its budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.residency import POLL_S, bounded_residency, drop_mapped, file_rss_bytes, mappings

MB = 1 << 20


def _mapped_rss(f: Path) -> int:
    return sum(m.rss for m in mappings([f]))


def _weights(tmp_path: Path, name: str) -> tuple[Path, np.ndarray]:
    data = np.arange(4 * MB, dtype=np.float32)  # 16 MB
    f = tmp_path / name
    data.tofile(f)
    return f, data


@pytest.mark.parametrize("mode", ["r", "c"])  # read-only; private writable, as ONNX Runtime maps weights
def test_a_dropped_clean_mapping_leaves_rss_and_reads_back_the_same(tmp_path, mode):
    f, data = _weights(tmp_path, "w.data")
    mapped = np.memmap(f, dtype=np.float32, mode=mode)
    assert float(mapped.sum()) == float(data.sum())  # every page touched
    assert _mapped_rss(f) >= 15 * MB and all(m.clean for m in mappings([f]))
    assert drop_mapped([f]) >= 16 * MB
    assert _mapped_rss(f) < MB
    np.testing.assert_array_equal(mapped, data)  # faulted back from the file


def test_a_written_private_mapping_is_never_dropped_and_a_shared_one_keeps_its_writes(tmp_path):
    g, _ = _weights(tmp_path, "cow.data")
    private = np.memmap(g, dtype=np.float32, mode="c")
    private[:3] += 1  # a copy-on-write page: dropping it would lose the write
    assert not any(m.clean for m in mappings([g])) and drop_mapped([g]) == 0
    np.testing.assert_array_equal(private[:4], [1, 2, 3, 3])

    h, _ = _weights(tmp_path, "shared.data")
    shared = np.memmap(h, dtype=np.float32, mode="r+")
    shared[:3] += 1  # in the page cache: faults back with the write
    assert drop_mapped([h]) > 0
    np.testing.assert_array_equal(shared[:4], [1, 2, 3, 3])


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
