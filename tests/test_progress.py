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


def _cli(*args: str, cwd) -> str:
    """``sparse-deploy ARGS`` in a child whose stderr is a pipe (not a terminal, as in CI or
    ``docker run`` without ``-t``); its stderr."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pipeline.app.cli", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_prune_and_run_show_progress_lines_off_a_terminal(tmp_path):
    import yaml

    err = _cli("prune", "--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "4",
               "--calib-seq-len", "32", "--out", str(tmp_path / "pruned"), cwd=tmp_path)
    assert "INFO wanda: 3/3 blocks done in" in err and "\r" not in err
    recipe = {"name": "progress", "model": "tiny-llama", "calibration": {"samples": 4, "seq_len": 32},
              "prune": [{"method": "magnitude", "sparsity": 0.5}], "evaluate": {"windows": 1, "seq_len": 32},
              "export": {"parity_windows": 1, "parity_seq_len": 32}, "benchmark": False}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    err = _cli("run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    for line in ("INFO stage prune-0: running", "INFO magnitude: 3/3 blocks done in", "INFO stage evaluate: done in",
                 "INFO perplexity: 1/1 batches done in", "INFO stage export: done in"):
        assert line in err, line
    assert "\r" not in err
