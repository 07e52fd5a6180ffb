"""Per-architecture knowledge, in one place (as optimum's exporters keep theirs).

Everything else in the pipeline asks this module where a model's repeated blocks are,
which Auto class loads it and what kind of inputs it takes; nothing else branches on
``model_type``. Adding an architecture means adding one :class:`ArchitectureSpec`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import numpy as np
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from pipeline.errors import SparseDeployError


class ModelKind(str, Enum):
    """What the model consumes and how it is evaluated."""

    CAUSAL_LM = "causal-lm"  # token ids in, next-token logits out; perplexity
    TEXT_ENCODER = "text-encoder"  # token ids in, hidden states out
    VISION = "vision"  # pixel values in, hidden states out

    @property
    def auto_class(self) -> type:
        """The transformers Auto class that loads this kind."""
        return AutoModelForCausalLM if self is ModelKind.CAUSAL_LM else AutoModel

    @property
    def encoder_input(self) -> "GraphInput":
        """What an encoder graph of this kind takes (causal LMs: their prefill graph's input)."""
        return PIXEL_INPUT if self is ModelKind.VISION else TOKEN_INPUT


def head_dim(config: Any) -> int:
    """Width of one attention head (configs that state it, like Phi-3's, win over the quotient)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_heads(config: Any) -> int:
    """Key/value heads of every layer as configured (GQA; all query heads without it). A sliced
    model records its per-layer counts beside this (``kv_heads_per_layer``)."""
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


SLICED_RECORD = "sparse_deploy_sliced"  # the config entry of a sliced model (written by pipeline.slicing)


def kv_heads_per_layer(config: Any) -> tuple[int, ...]:
    """Key/value heads of each layer: as recorded when heads were sliced out (layers then
    differ), else the configured count for every layer."""
    sliced = (getattr(config, SLICED_RECORD, None) or {}).get("kv_heads_per_layer")
    return tuple(sliced) if sliced else (kv_heads(config),) * config.num_hidden_layers


@dataclass(frozen=True)
class GraphInput:
    """The one input of an encoder graph: token ids (text) or an image batch (vision)."""

    name: str
    dtype: str  # numpy's name
    dynamic: dict[int, str] = field(default_factory=dict)  # axis -> name, for the exporter

    def shape(self, config: Any, batch: int, seq_len: int) -> tuple[int, ...]:
        if self.name == "pixel_values":
            return batch, config.num_channels, config.image_size, config.image_size
        return batch, seq_len

    def example(self, config: Any, batch: int, seq_len: int, seed: int = 0) -> np.ndarray:
        """Inputs that run the graph (random token ids 3..999, or standard-normal pixels)."""
        rng = np.random.default_rng(seed)
        shape = self.shape(config, batch, seq_len)
        if np.dtype(self.dtype).kind == "f":
            return rng.standard_normal(shape).astype(self.dtype)
        return rng.integers(3, 1000, shape, dtype=self.dtype)


TOKEN_INPUT = GraphInput("input_ids", "int64", {0: "batch", 1: "sequence"})
PIXEL_INPUT = GraphInput("pixel_values", "float32", {0: "batch"})  # the image size is the config's


@dataclass(frozen=True)
class MLPLayout:
    """Where a block's MLP neurons live: output rows of the producers (``halves`` > 1: a fused
    weight stacking that many projections, Phi-3's ``gate_up_proj``), input columns of the
    consumer."""

    producers: tuple[str, ...]
    consumer: str
    halves: int = 1


def _set_llama_heads(attention: nn.Module, heads: int, kv_heads: int) -> None:
    """LLaMA-family attention reshapes with -1 heads; only the query heads per KV head
    (which ``repeat_kv`` uses) change, when query heads go within their groups."""
    attention.num_key_value_groups = heads // kv_heads


def _set_opt_heads(attention: nn.Module, heads: int, kv_heads: int) -> None:
    attention.num_heads = heads


def _set_vit_heads(attention: nn.Module, heads: int, kv_heads: int) -> None:
    attention.num_attention_heads = heads
    attention.all_head_size = heads * attention.attention_head_size


def _set_phi3_heads(attention: nn.Module, heads: int, kv_heads: int) -> None:
    """Phi-3 splits its fused qkv at ``config.num_attention_heads · head_dim``: give the
    module its own config copy with this layer's counts."""
    attention.config = copy.copy(attention.config)
    attention.config.num_attention_heads, attention.config.num_key_value_heads = heads, kv_heads
    attention.num_key_value_heads = kv_heads
    attention.num_key_value_groups = heads // kv_heads


@dataclass(frozen=True)
class AttentionLayout:
    """Where a block's heads live (the units of removal: ``pipeline.pruners.structured``).
    ``qkv`` names either three projections or one fused weight stacking q, k, v rows.
    ``set_heads`` updates the module's own head counts after slicing."""

    module: str
    qkv: tuple[str, ...]
    consumer: str
    set_heads: Callable[[nn.Module, int, int], None] = _set_llama_heads


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where an architecture keeps what the pipeline needs.

    ``blocks`` is the dotted path, relative to ``model.base_model``, of the
    ``nn.ModuleList`` of repeated transformer blocks that the sequential engine walks.
    ``fused`` gives, for layers that hold several projections in one weight (Phi-3's
    ``qkv_proj`` and ``gate_up_proj``), the row count of each projection: methods that
    treat projections separately (OATS's rank budget) split along them.
    """

    model_type: str
    kind: ModelKind
    blocks: str
    fused: Callable[[PretrainedConfig], dict[str, list[int]]] | None = None
    mlp: MLPLayout | None = None
    attention: AttentionLayout | None = None

    def fused_rows(self, config: PretrainedConfig) -> dict[str, list[int]]:
        """Block-relative layer name -> rows per projection (empty without fused layers)."""
        return self.fused(config) if self.fused else {}


def _phi3_fused(config: PretrainedConfig) -> dict[str, list[int]]:
    width = head_dim(config)
    kv = kv_heads(config) * width
    return {
        "self_attn.qkv_proj": [config.num_attention_heads * width, kv, kv],
        "mlp.gate_up_proj": [config.intermediate_size, config.intermediate_size],
    }


_LLAMA_MLP = MLPLayout(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")
_LLAMA_ATTENTION = AttentionLayout("self_attn", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                   "self_attn.o_proj")
_VIT_ATTENTION = AttentionLayout("attention.attention", ("attention.attention.query", "attention.attention.key",
                                                         "attention.attention.value"), "attention.output.dense",
                                 _set_vit_heads)

_SPECS: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("llama", ModelKind.CAUSAL_LM, "layers", mlp=_LLAMA_MLP, attention=_LLAMA_ATTENTION),
        ArchitectureSpec("mistral", ModelKind.CAUSAL_LM, "layers", mlp=_LLAMA_MLP, attention=_LLAMA_ATTENTION),
        ArchitectureSpec("qwen2", ModelKind.CAUSAL_LM, "layers", mlp=_LLAMA_MLP, attention=_LLAMA_ATTENTION),
        ArchitectureSpec("phi3", ModelKind.CAUSAL_LM, "layers", fused=_phi3_fused,
                         mlp=MLPLayout(("mlp.gate_up_proj",), "mlp.down_proj", halves=2),
                         attention=AttentionLayout("self_attn", ("self_attn.qkv_proj",), "self_attn.o_proj",
                                                   _set_phi3_heads)),
        ArchitectureSpec("opt", ModelKind.CAUSAL_LM, "decoder.layers", mlp=MLPLayout(("fc1",), "fc2"),
                         attention=AttentionLayout("self_attn", ("self_attn.q_proj", "self_attn.k_proj",
                                                                 "self_attn.v_proj"), "self_attn.out_proj",
                                                   _set_opt_heads)),
        ArchitectureSpec("bert", ModelKind.TEXT_ENCODER, "encoder.layer",
                         mlp=MLPLayout(("intermediate.dense",), "output.dense"),
                         attention=AttentionLayout("attention.self", ("attention.self.query", "attention.self.key",
                                                                      "attention.self.value"),
                                                   "attention.output.dense", _set_vit_heads)),
        ArchitectureSpec("vit", ModelKind.VISION, "encoder.layer",
                         mlp=MLPLayout(("intermediate.dense",), "output.dense"), attention=_VIT_ATTENTION),
        ArchitectureSpec("dinov2", ModelKind.VISION, "encoder.layer", mlp=MLPLayout(("mlp.fc1",), "mlp.fc2"),
                         attention=_VIT_ATTENTION),
    )
}


def supported_model_types() -> list[str]:
    return sorted(_SPECS)


def spec_for_type(model_type: str) -> ArchitectureSpec:
    try:
        return _SPECS[model_type]
    except KeyError:
        raise SparseDeployError(
            f"unsupported architecture '{model_type}'; supported: {', '.join(supported_model_types())}"
        ) from None


def _block_pattern() -> re.Pattern[str]:
    lists = sorted({spec.blocks.rsplit(".", 1)[-1] for spec in _SPECS.values()})
    return re.compile(rf"(?:^|\.)(?:{'|'.join(lists)})\.(\d+)\.")


_BLOCK_PATTERN = _block_pattern()


def block_index(parameter: str) -> int | None:
    """The block a parameter (or an exported weight named after it) belongs to, else None
    (embeddings, final norm, head): ``model.layers.3.mlp.up_proj.weight`` -> 3."""
    found = _BLOCK_PATTERN.search(parameter)
    return int(found.group(1)) if found else None


def spec_for(model: PreTrainedModel) -> ArchitectureSpec:
    return spec_for_type(model.config.model_type)


def transformer_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The model's repeated blocks, in execution order."""
    module: nn.Module = model.base_model
    for part in spec_for(model).blocks.split("."):
        module = getattr(module, part)
    if not isinstance(module, nn.ModuleList):
        raise SparseDeployError(f"expected a ModuleList of blocks, found {type(module).__name__}")
    return module


def blocks_prefix(model: PreTrainedModel) -> str:
    """Qualified name of the blocks list inside ``model`` (for naming layers in reports)."""
    base = model.base_model_prefix
    inner = spec_for(model).blocks
    return f"{base}.{inner}" if base and hasattr(model, base) else inner


def block_linear_layers(model: PreTrainedModel) -> dict[str, nn.Linear]:
    """Every block's prunable Linear layers, named ``"{block index}.{name in the block}"``."""
    return {f"{i}.{name}": layer for i, block in enumerate(transformer_blocks(model))
            for name, layer in linear_layers(block).items()}


def output_head(model: PreTrainedModel) -> tuple[str, nn.Linear] | None:
    """``(name, layer)`` of the LM head (the Linear from the last hidden state to the vocabulary),
    or None for a model without one (the vision encoders: their output is the hidden states)."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return None
    return next(name for name, module in model.named_modules() if module is head), head


def head_is_tied(model: PreTrainedModel) -> bool:
    """Whether the LM head shares its weight with the input embeddings (tie_word_embeddings)."""
    found, embeddings = output_head(model), model.get_input_embeddings()
    return found is not None and embeddings is not None and found[1].weight is embeddings.weight


def tied_weight_names(model: PreTrainedModel) -> set[str]:
    """State-dict names that are another weight under a second name (a tied LM head): not
    stored in a checkpoint, not loaded from one."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    return set(getattr(model, "_tied_weights_keys", None) or [])


def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable Linear layers of one block, by name relative to the block. A module that
    declares ``decomposes_one_layer`` (OATS's sparse + low-rank layer) holds the parts of one
    layer's decomposition: they are not prunable on their own. A declared attribute, not an
    isinstance check, so that the model facts import no method's modules."""
    parts_of = [name for name, mod in block.named_modules() if getattr(mod, "decomposes_one_layer", False)]
    return {name: mod for name, mod in block.named_modules()
            if isinstance(mod, nn.Linear) and not any(name.startswith(f + ".") for f in parts_of)}
