"""The torch modules we export, and the export itself (torch.onnx, dynamo).

Why not optimum's exporter alone: DeepSparse 1.8.0 aborts (``graph.cpp:925``) on optimum's
LLaMA graphs and on plain dynamo exports with a KV cache. We traced it to RoPE computed at
run time from the ``position_ids`` input (a Concat fed by int -> float math on a graph
input). Replacing the rotary module by a lookup into cos/sin tables precomputed with the
model's own rotary module (a ``Gather`` from an initializer, like the embedding) gives a
graph that DeepSparse compiles *and* that optimum's ``ORTModelForCausalLM`` drives, since
it keeps optimum's input/output names. So one decode graph serves both runtimes.

Flavours:

* ``decode``: ``input_ids, attention_mask, position_ids, past_key_values.{i}.{key,value}``
  in, ``logits, present.{i}.{key,value}`` out; sequence and past lengths dynamic, so it
  also runs a prefill with an empty past (how optimum's generate starts).
* ``prefill``: ``input_ids`` in, ``logits`` out, no cache: the whole-sequence graph.
* ``encoder``: vision/text encoders, ``last_hidden_state`` out.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import onnx
import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from pipeline.architectures import head_dim, kv_heads_per_layer, spec_for

log = logging.getLogger(__name__)

OPSET = 18  # DeepSparse 1.8.0 accepts opset 18 ...
IR_VERSION = 8  # ... but not IR 10, which torch.onnx writes


class TableRotary(nn.Module):
    """Drop-in for a RoPE module: cos/sin looked up in tables the original module computed."""

    def __init__(self, rotary: nn.Module, max_positions: int):
        super().__init__()
        positions = torch.arange(max_positions).unsqueeze(0)
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
        self.register_buffer("cos_table", cos[0].contiguous(), persistent=False)
        self.register_buffer("sin_table", sin[0].contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_table[position_ids].to(x.dtype), self.sin_table[position_ids].to(x.dtype)


@contextlib.contextmanager
def table_rotary(model: PreTrainedModel) -> Iterator[int | None]:
    """Swap the model's rotary module for a :class:`TableRotary` while exporting. Yields the
    table length (the longest position the graph supports), or None without RoPE."""
    base = model.base_model
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        yield None
        return
    length = int(model.config.max_position_embeddings)
    base.rotary_emb = TableRotary(rotary, length)
    try:
        yield length
    finally:
        base.rotary_emb = rotary


EXPORT_ATTENTION = "sparse_deploy_export"  # the name our attention is registered under in transformers
CAUSAL_FLAVOURS = ("decode", "prefill")  # the graphs of a causal LM: they export with scaled_query_attention


def scaled_query_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None,
                           dropout: float = 0.0, **_: Any) -> tuple[torch.Tensor, None]:
    """softmax((q · scale) kᵀ + mask) v, for export (eval: no dropout). The same function as
    transformers' sdpa, spelled so that the graph scales the query, not the keys.

    Why: torch.onnx writes ``scaled_dot_product_attention`` as q · √scale times (kᵀ · √scale)
    after a Transpose of the keys, so a decode step multiplies and transposes the whole KV cache
    (32 x 128 x 128 per LLaMA-7B block after 127 tokens) to attend with one query; OpenVINO then
    spent ~0.5 ms per block on that Multiply and Transpose. Scaling the one query row instead
    lets OpenVINO fuse the attention into one subgraph and ONNX Runtime fold the transpose into
    its MatMul: the decode graph's attention overhead fell from ~1.3 to ~0.55 ms per block in
    OpenVINO (a profiled throwaway run on the LLaMA-7B proxy, Zen 5), for every runtime and
    weight format alike."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # GQA: query head h reads KV head h // groups (transformers' repeat_kv)
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(2, 3))
    if attention_mask is not None:  # as long as the keys or longer
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:  # boolean_mask's: True where a token may attend. Where + Add, as torch
            # spells sdpa's own mask: DeepSparse 1.8.0 computed wrong numbers for a masked_fill here (test_export)
            scores = scores + torch.where(mask, 0.0, torch.finfo(scores.dtype).min)
        else:  # additive (OPT builds its own)
            scores = scores + mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def boolean_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """sdpa's boolean mask, always spelled out: scaled_query_attention has no is_causal
    shortcut, and a float mask (eager's) would put a constant tensor into the traced graph
    that is no tensor of the model (which the streamed export refuses)."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False, "allow_torch_fix": False})


AttentionInterface.register(EXPORT_ATTENTION, scaled_query_attention)
AttentionMaskInterface.register(EXPORT_ATTENTION, boolean_mask)


@contextlib.contextmanager
def export_attention(model: PreTrainedModel, flavour: str) -> Iterator[None]:
    """A causal LM's attention as :func:`scaled_query_attention` while exporting ``flavour``
    (encoders keep theirs: ViT's attention takes a head mask where ours takes the mask)."""
    if flavour not in CAUSAL_FLAVOURS:
        yield
        return
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = EXPORT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


@contextlib.contextmanager
def exported_modules(model: PreTrainedModel, flavour: str) -> Iterator[int | None]:
    """The model as its graphs are exported: RoPE from tables (:func:`table_rotary`) and a causal
    LM's attention as :func:`scaled_query_attention`. Yields the RoPE table length or None."""
    with table_rotary(model) as rope_table, export_attention(model, flavour):
        yield rope_table


class CausalLMDecode(nn.Module):
    """One step with a KV cache, in optimum's naming: past tensors in, presents out."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):  # noqa: ANN001
        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


class CausalLMPrefill(nn.Module):
    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids):  # noqa: ANN001
        return self.model(input_ids=input_ids, use_cache=False).logits


class EncoderGraph(nn.Module):
    def __init__(self, model: PreTrainedModel, input_name: str):
        super().__init__()
        self.model, self.input_name = model, input_name

    def forward(self, x):  # noqa: ANN001
        return self.model(**{self.input_name: x}).last_hidden_state


@dataclass(frozen=True)
class KVGeometry:
    """Shape of each layer's cached keys/values: (batch, kv_heads[i], length, head_dim).
    Layers differ when heads were sliced out (OSSCAR records the counts in the config)."""

    layers: int
    kv_heads: tuple[int, ...]
    head_dim: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> "KVGeometry":
        return cls.from_config(model.config)

    @classmethod
    def from_config(cls, c: Any) -> "KVGeometry":
        return cls(c.num_hidden_layers, kv_heads_per_layer(c), head_dim(c))

    def names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]


def decode_inputs(geometry: KVGeometry, seq: int, past: int, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Feeds for the decode graph: ``seq`` new tokens after ``past`` cached ones."""
    gen = torch.Generator().manual_seed(seed)
    feeds = {
        "input_ids": torch.randint(3, 1000, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, past + seq, dtype=torch.long),
        "position_ids": torch.arange(past, past + seq).expand(batch, seq).contiguous(),
    }
    for i, name in enumerate(geometry.names("past_key_values")):
        feeds[name] = torch.randn(batch, geometry.kv_heads[i // 2], past, geometry.head_dim, generator=gen)
    return feeds


def make_deepsparse_compatible(model: onnx.ModelProto) -> None:
    """IR 8 and only the opset domains the graph uses (DeepSparse rejects unknown ones)."""
    used = {node.domain for node in model.graph.node}
    kept = [op for op in model.opset_import if op.domain in used or op.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = IR_VERSION


@dataclass
class GraphSpec:
    """What ``torch.onnx.export`` is given for one flavour: the module, example inputs, names and
    dynamic axes. Built inside :func:`exported_modules` (the module holds the RoPE tables)."""

    module: nn.Module
    feeds: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: tuple

    def export(self, path: Path | None = None, optimize: bool = True) -> Any:
        """``torch.onnx.export`` (dynamo) to ``path`` with external data, or, without a path, the
        ``ONNXProgram`` in memory (how a graph is traced with fake weights)."""
        return torch.onnx.export(self.module, tuple(self.feeds.values()), str(path) if path else None, dynamo=True,
                                 opset_version=OPSET, input_names=list(self.feeds), output_names=self.outputs,
                                 dynamic_shapes=self.dynamic, external_data=True, optimize=optimize, verbose=False)

    def io(self, rope_table: int | None) -> dict[str, Any]:
        return {"inputs": list(self.feeds), "outputs": self.outputs, "rope_table_positions": rope_table}


def graph_spec(model: PreTrainedModel, flavour: str) -> GraphSpec:
    """The export arguments of ``flavour`` for ``model`` (call inside :func:`exported_modules`)."""
    kind = spec_for(model).kind
    if flavour == "decode":
        geometry = KVGeometry.of(model)
        feeds = decode_inputs(geometry, seq=3, past=5, batch=2)  # sizes of 1 would be specialized
        dynamic: tuple = ({0: "batch", 1: "sequence"}, {0: "batch", 1: "total_sequence"}, {0: "batch", 1: "sequence"})
        if geometry.layers:  # forward's *past, as one group
            dynamic += (tuple({0: "batch", 2: "past_sequence"} for _ in range(2 * geometry.layers)),)
        return GraphSpec(CausalLMDecode(model).eval(), feeds, ["logits", *geometry.names("present")], dynamic)
    if flavour in ("prefill", "encoder"):  # one input, the kind's (a causal LM's prefill: token ids)
        graph_input = kind.encoder_input
        feeds = {graph_input.name: torch.from_numpy(graph_input.example(model.config, batch=2, seq_len=8))}
        if flavour == "prefill":
            return GraphSpec(CausalLMPrefill(model).eval(), feeds, ["logits"], (graph_input.dynamic,))
        return GraphSpec(EncoderGraph(model, graph_input.name).eval(), feeds, ["last_hidden_state"],
                         (graph_input.dynamic,))
    raise ValueError(f"unknown flavour {flavour}")


def export_graph(model: PreTrainedModel, flavour: str, path: Path) -> dict:
    """Export one flavour, raw, to ``path`` (external data beside it); the artifact writer
    post-processes it. Returns the graph's I/O description."""
    model = model.eval()
    with exported_modules(model, flavour) as rope_table:
        spec = graph_spec(model, flavour)
        spec.export(path)
    return spec.io(rope_table)
