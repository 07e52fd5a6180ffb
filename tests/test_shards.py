"""Sharded checkpoints: what ShardWriter writes, load_model reads; a broken one fails in one
line before any weight is read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from pipeline.errors import SparseDeployError
from pipeline.models import load_model
from pipeline.shards import INDEX, Checkpoint, ShardWriter

CONFIG = LlamaConfig(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=512, num_hidden_layers=2, tie_word_embeddings=False)


def write_sharded(out, config=CONFIG, shard_bytes=100_000):
    """A random model of ``config`` as several shards with an index; its state dict."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out.mkdir()
    config.save_pretrained(out)
    writer = ShardWriter(out, shard_bytes=shard_bytes)
    for name, tensor in model.state_dict().items():
        writer.add(name, tensor)
    assert len(writer.close()) > 2
    return model.state_dict()


@pytest.fixture
def sharded(tmp_path):
    return tmp_path / "model", write_sharded(tmp_path / "model")


def test_written_shards_load_as_the_same_model(sharded):
    out, state = sharded
    loaded = load_model(str(out)).model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert Checkpoint(out).sharded and torch.equal(Checkpoint(out).tensor("model.norm.weight"), state["model.norm.weight"])


def test_a_missing_shard_is_named(sharded):
    out, _ = sharded
    (out / "model-00002-of-{:05d}.safetensors".format(len(list(out.glob("*.safetensors"))))).unlink()
    with pytest.raises(SparseDeployError, match=r"1 shard\(s\) listed in model.safetensors.index.json are missing "
                                                r"\(model-00002-of-"):
        load_model(str(out))


def _rewrite_shard(out, name, change):
    """The shard holding ``name``, rewritten with ``change`` applied to its tensors; its file name."""
    shard = out / json.loads((out / INDEX).read_text())["weight_map"][name]
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, str(shard))
    return shard.name


def test_a_tensor_of_the_wrong_shape_is_named_with_its_shard(sharded):
    out, _ = sharded
    name = "model.layers.1.mlp.up_proj.weight"
    shard = _rewrite_shard(out, name, lambda t: t.update({name: t[name][:, :32].contiguous()}))
    with pytest.raises(SparseDeployError, match=rf"{name} is \[160, 32\] in {shard}, the configuration "
                                                r"needs \[160, 64\]"):
        load_model(str(out))


def test_a_tensor_listed_but_not_in_its_shard_is_named(sharded):
    out, _ = sharded
    name = "model.layers.0.self_attn.q_proj.weight"
    shard = _rewrite_shard(out, name, lambda t: t.pop(name))
    with pytest.raises(SparseDeployError, match=rf"{name} is listed in {INDEX} but not in {shard}"):
        load_model(str(out))
