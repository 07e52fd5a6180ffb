"""The full-depth proxy checkpoint writer, on a tiny LLaMA geometry cut into several shards."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from benchmarks import proxy_checkpoint
from benchmarks.proxy_checkpoint import write_checkpoint
from pipeline import shards
from pipeline.errors import SparseDeployError
from pipeline.shards import INDEX, expected_shapes

CONFIG = LlamaConfig(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=512, num_hidden_layers=3, tie_word_embeddings=False)
SHARD_BYTES = 200_000  # a few tensors per shard


def _tensors(directory):
    out = {}
    for shard in sorted(directory.glob("*.safetensors")):
        out |= load_file(shard)
    return out


def test_a_sharded_checkpoint_loads_and_is_the_same_bytes_for_the_same_seed(tmp_path):
    """Every tensor the model reads is in the index and its shard; from_pretrained loads it with
    nothing missing; the same seed gives the same tensors, another seed others; the weights have
    the configured spread and the norms are ones."""
    first = write_checkpoint(CONFIG, tmp_path / "a", seed=0, shard_bytes=SHARD_BYTES)
    index = json.loads((first / INDEX).read_text())
    shards = sorted(p.name for p in first.glob("*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    shapes = expected_shapes(CONFIG, AutoModelForCausalLM)
    assert set(index["weight_map"]) == set(shapes)
    assert index["metadata"]["total_size"] == sum(4 * torch.Size(s).numel() for s in shapes.values())
    model, info = AutoModelForCausalLM.from_pretrained(first, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    tensors = _tensors(first)
    again = _tensors(write_checkpoint(CONFIG, tmp_path / "b", seed=0, shard_bytes=SHARD_BYTES))
    other = _tensors(write_checkpoint(CONFIG, tmp_path / "c", seed=1, shard_bytes=SHARD_BYTES))
    name = "model.layers.1.mlp.down_proj.weight"
    assert all(torch.equal(tensors[k], again[k]) for k in tensors)
    assert not torch.equal(tensors[name], other[name])
    assert abs(float(tensors[name].std()) - CONFIG.initializer_range) < 0.1 * CONFIG.initializer_range
    assert torch.equal(tensors["model.norm.weight"], torch.ones(CONFIG.hidden_size))
    assert torch.equal(model.state_dict()[name], tensors[name])


def test_a_checkpoint_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(proxy_checkpoint.shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SparseDeployError, match=r"needs [\d.]+ GB of disk, 0.0 GB free"):
        write_checkpoint(CONFIG, tmp_path / "full", shard_bytes=SHARD_BYTES)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_failing_midway_leaves_no_checkpoint(tmp_path, monkeypatch):
    """A full disk in the middle (here: the third shard's write fails) leaves no directory that
    looks complete, and no temporary behind."""
    real, calls = shards.save_file, []

    def failing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(shards, "save_file", failing)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(CONFIG, tmp_path / "ckpt", shard_bytes=SHARD_BYTES)
    assert list(tmp_path.iterdir()) == []
