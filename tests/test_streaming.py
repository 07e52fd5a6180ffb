"""Streamed pruning (one block resident at a time) against the in-memory path, on a tiny
sharded LLaMA: the same pruned weights, the same record, and no block left in memory."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig

from pipeline.data import token_batches
from pipeline.models import load_model, load_streamed
from pipeline.owl import OWLConfig
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner
from pipeline.shards import INDEX
from tests.test_shards import write_sharded

CONFIG = LlamaConfig(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=512, num_hidden_layers=3, tie_word_embeddings=False)


def _pruned(loaded, method, params, owl, tmp_path, name):
    batches = token_batches(torch.randint(0, CONFIG.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0)),
                            2, causal_lm=True)
    result = prune_model(loaded, build_pruner(method, **params), 0.6 if method != "osscar" else 0.5, CalibrationConfig(),
                         owl=owl, batches=batches)
    record = build_record(loaded, result)
    save_pruned(loaded, record, tmp_path / name)
    return record, load_model(str(tmp_path / name)).model.state_dict()


@pytest.mark.parametrize("method, params, owl", [
    ("wanda", {}, OWLConfig(m=5.0, lam=0.05)), ("sparsegpt", {}, None),
    ("oats", {"iterations": 3}, None),  # blocks leave factorized
    ("osscar", {"iterations": 2}, None),  # blocks leave sliced
], ids=["owl-wanda", "sparsegpt", "oats", "osscar"])
def test_streamed_pruning_writes_the_in_memory_pruned_weights(tmp_path, method, params, owl):
    """Every method, OWL's observing pass too. Tolerance: 1e-6 on the weights (the same float ops
    on the same values in the same order), masks exactly; the restructured blocks of OATS and
    OSSCAR reload from the streamed shards with the shapes the config records."""
    source = tmp_path / "source"
    write_sharded(source, CONFIG)
    memory_record, memory = _pruned(load_model(str(source)), method, params, owl, tmp_path, "memory")
    streamed_loaded = load_streamed(str(source))
    streamed_record, streamed = _pruned(streamed_loaded, method, params, owl, tmp_path, "streamed")

    assert set(memory) == set(streamed)
    for name, weight in memory.items():
        assert torch.equal(weight == 0, streamed[name] == 0), name
        assert torch.allclose(weight, streamed[name], atol=1e-6, rtol=0), name
    assert streamed_record["achieved"] == memory_record["achieved"]
    assert streamed_record["recipe"]["block_sparsity"] == memory_record["recipe"]["block_sparsity"]
    assert all(p.is_meta for n, p in streamed_loaded.model.named_parameters() if ".layers." in n)
    assert (tmp_path / "streamed" / INDEX).is_file()
    assert sorted(p.name for p in (tmp_path / "streamed").glob("*.json") if p.name != INDEX) == \
        sorted(p.name for p in (tmp_path / "memory").glob("*.json") if p.name != INDEX)
    assert json.loads((tmp_path / "streamed" / "config.json").read_text())["num_hidden_layers"] == 3


def test_a_failing_streamed_pass_leaves_no_spool(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_sharded(source, CONFIG)
    loaded = load_streamed(str(source))
    pruner = build_pruner("wanda")
    calls = []

    def fail_on_the_second_block(ctx, sparsity):
        calls.append(ctx.index)
        if ctx.index == 1:
            raise RuntimeError("boom")

    monkeypatch.setattr(pruner, "prune_block", fail_on_the_second_block)
    batches = token_batches(torch.randint(0, CONFIG.vocab_size, (2, 16)), 2, causal_lm=True)
    with pytest.raises(RuntimeError, match="boom"):
        prune_model(loaded, pruner, 0.5, CalibrationConfig(), batches=batches)
    assert calls == [0, 1] and loaded.streamed.spool is not None and not loaded.streamed.spool.exists()


def test_prune_stream_on_the_command_line_writes_what_the_in_memory_prune_writes(tmp_path):
    from pipeline.app.cli import main

    args = ["prune", "--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "8",
            "--calib-seq-len", "32"]
    assert main([*args, "--out", str(tmp_path / "memory")]) == 0
    assert main([*args, "--stream", "--out", str(tmp_path / "streamed")]) == 0
    memory, streamed = (load_model(str(tmp_path / name)).model.state_dict() for name in ("memory", "streamed"))
    assert (tmp_path / "streamed" / INDEX).is_file() and all(torch.equal(memory[k], streamed[k]) for k in memory)


def test_a_streamed_model_runs_a_whole_forward_one_block_at_a_time(tmp_path):
    """``forward_ready``: what a perplexity or an export's reference needs (logits to 1e-6: the
    same ops on the same weights); the blocks are on the meta device again afterwards."""
    source = tmp_path / "source"
    write_sharded(source, CONFIG)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = load_model(str(source)).model(input_ids=ids).logits
        streamed = load_streamed(str(source))
        with streamed.forward_ready():
            got = streamed.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert all(p.is_meta for n, p in streamed.model.named_parameters() if ".layers." in n)
