"""Signs of life off a terminal (pytest's captured stderr is not one): INFO lines instead of
bars, and no foreign bar's carriage returns in a log."""

from __future__ import annotations

import io
import logging

from tqdm.auto import tqdm

from pipeline.progress import heartbeat, progress, quiet_foreign_bars


def test_progress_logs_done_and_left_off_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    assert list(progress(range(4), "blocks", "block", interval_s=0.0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[-1].startswith("blocks: 4/4 block done")
    assert "s left" in lines[0]


def test_progress_without_a_length_still_says_how_many(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    assert sum(progress(iter(range(3)), "batches", "batch", interval_s=1e9)) == 3
    assert caplog.records[-1].getMessage().startswith("batches: 3 batch done")


def test_heartbeat_beats_while_the_block_runs(caplog):
    import time

    caplog.set_level(logging.INFO, logger="pipeline.progress")
    with heartbeat("tracing", interval_s=0.02):
        time.sleep(0.15)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "tracing" and lines[-1].startswith("tracing: done in")
    assert any("still running" in line for line in lines[1:-1])


def _drawn(**kwargs) -> str:
    out = io.StringIO()
    for _ in tqdm(range(3), file=out, mininterval=0, **kwargs):
        pass
    return out.getvalue()


def test_quiet_foreign_bars_mutes_bars_inside_and_restores_them():
    assert "3/3" in _drawn()  # a library's bar, drawn whatever the file (transformers' GGUF one)
    with quiet_foreign_bars():
        assert _drawn() == ""
        assert _drawn(disable=False) == ""  # even one that insists
    assert "3/3" in _drawn()
