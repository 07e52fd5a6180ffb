"""The CLI: one-line errors, non-zero exits, nothing written on failure, a loadable result."""

import json
import math
import re

import pytest
import torch

from pipeline.app.cli import main
from pipeline.models import load_model
from pipeline.prune import RECORD_FILE
from pipeline.sparsity_report import sparsity_report

FAST_CALIB = ["--calib-samples", "4", "--calib-seq-len", "32"]


def _prune(out, *extra, model="tiny-llama", method="wanda", sparsity="0.5"):
    args = ["prune", "--model", model, "--method", method, "--out", str(out), *FAST_CALIB, *extra]
    return main(args + (["--sparsity", sparsity] if sparsity is not None else []))


@pytest.mark.parametrize(
    "kwargs, extra, message",
    [
        ({"model": "no-such-model"}, [], "unknown model 'no-such-model'"),
        ({"sparsity": "1.0"}, [], r"sparsity must lie in \[0, 1\)"),
        ({"sparsity": "-0.1"}, [], r"sparsity must lie in \[0, 1\)"),
        ({"sparsity": None}, ["--pattern", "2:5"], "does not divide the input width 64"),
        ({"sparsity": "0.3"}, ["--pattern", "2:4"], "contradicts the N:M pattern"),
        ({}, ["--owl", "--pattern", "2:4", "--sparsity", "0.5"], "does not combine with N:M"),
        ({}, ["--owl", "--owl-lambda", "0.9"], "lambda"),
        ({}, ["--calib-seq-len", "100000"], "too short"),
    ],
)
def test_bad_input_is_one_line_error_and_nothing_written(tmp_path, capsys, kwargs, extra, message):
    out = tmp_path / "out"
    assert _prune(out, *extra, **kwargs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparse-deploy: error:"), err
    assert re.search(message, err[0]), err[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _prune(out) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _prune(out, "--overwrite") == 0
    assert not (out / "keep.txt").exists()


@pytest.mark.parametrize("method, extra", [("wanda", ["--owl"]), ("sparsegpt", []), ("magnitude", ["--pattern", "2:4"])])
def test_prune_writes_a_loadable_model_and_a_true_record(tmp_path, method, extra):
    out = tmp_path / "pruned"
    sparsity = None if "2:4" in extra else "0.5"
    assert _prune(out, *extra, method=method, sparsity=sparsity) == 0
    record = json.loads((out / RECORD_FILE).read_text())
    reloaded = load_model(str(out))
    assert record["achieved"] == json.loads(json.dumps(sparsity_report(reloaded.model)))
    assert record["achieved"]["blocks_linear"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert record["recipe"]["method"] == method
    assert {"prune_s", "total_s"} <= record["timings_s"].keys()
    assert record["environment"]["packages"]["torch"].startswith("2.13.0")
    ids = torch.arange(10).unsqueeze(0)
    assert torch.isfinite(reloaded.model(input_ids=ids).logits).all()


def test_prune_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert _prune(tmp_path / name, "--owl", method="sparsegpt") == 0
    a, b = load_model(str(tmp_path / "a")).model, load_model(str(tmp_path / "b")).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_eval_prints_perplexity(tmp_path, capsys):
    assert main(["eval", "--model", "tiny-llama", "--eval-windows", "2", "--eval-seq-len", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 2 * 31
    assert result["protocol"] == {"source": "wiki", "windows": 2, "seq_len": 32, "sampling": "consecutive",
                                  "seed": None}
    assert 1 < result["perplexity"] < 1e6
    assert len(result["window_nll"]) == 2  # per window, for paired comparisons; their mean is the mean NLL
    assert sum(result["window_nll"]) / 2 == pytest.approx(result["mean_nll"])
    assert math.exp(result["mean_nll"]) == pytest.approx(result["perplexity"])


def test_models_lists_named_models(capsys):
    assert main(["models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out
