import json

import pytest
import torch

from pipeline.data import calibration_samples, evaluation_windows, read_text
from pipeline.errors import SparseDeployError
from pipeline.models import load_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny-llama").tokenizer


def test_calibration_windows_are_seeded(tokenizer):
    a = calibration_samples(tokenizer, "c4", 5, 64, seed=0)
    assert a.shape == (5, 64)
    assert torch.equal(a, calibration_samples(tokenizer, "c4", 5, 64, seed=0))
    assert not torch.equal(a, calibration_samples(tokenizer, "c4", 5, 64, seed=1))


def test_evaluation_windows_are_the_consecutive_start_of_the_text(tokenizer):
    windows = evaluation_windows(tokenizer, "wiki", 3, 100)
    ids = tokenizer(read_text("wiki")[:20000], add_special_tokens=False)["input_ids"]
    assert torch.equal(windows.reshape(-1), torch.tensor(ids[:300]))


def test_wiki_doc_tags_are_stripped():
    assert "<doc" not in read_text("wiki")[:100000]


def test_jsonl_and_too_short_text(tmp_path, tokenizer):
    path = tmp_path / "cal.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["hello world", "short text"]))
    assert "hello world" in read_text(str(path))
    with pytest.raises(SparseDeployError, match="too short"):
        calibration_samples(tokenizer, str(path), 2, 64, seed=0)
    with pytest.raises(SparseDeployError, match="fewer than"):
        evaluation_windows(tokenizer, str(path), 2, 64)


def test_missing_source_and_bad_jsonl(tmp_path):
    with pytest.raises(SparseDeployError, match="neither a packaged text"):
        read_text(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(SparseDeployError, match="'text' field"):
        read_text(str(bad))
