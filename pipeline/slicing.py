"""Physical removal of structure: Linear layers cut to the kept rows/columns, and the record
that rebuilds those shapes on reload.

Zeroing a neuron's column in the down projection saves nothing at run time; slicing the
producing rows (up/gate, fc1, q/k/v of a removed head) and the consuming columns makes every
matmul smaller, in every runtime. transformers builds layers from a config with one width
for all blocks, so the sliced shapes (and each attention module's head counts) are recorded
in the config (``config.sparse_deploy_sliced``) and restored before the weights are loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from pipeline.architectures import SLICED_RECORD, ArchitectureSpec, transformer_blocks
from pipeline.architectures import kv_heads as configured_kv_heads
from pipeline.factorized import SparseLowRankLinear, replace_module

CONFIG_KEY = SLICED_RECORD
_HEADS_ATTRIBUTE = "sparse_deploy_heads"  # (heads, kv_heads) set on a sliced attention module


def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def keep_rows(root: nn.Module, name: str, rows: torch.Tensor) -> None:
    """Cut the Linear at ``name`` to the output ``rows`` (with their bias entries)."""
    layer = root.get_submodule(name)
    bias = None if layer.bias is None else layer.bias.detach()[rows]
    replace_module(root, name, _new_linear(layer.weight.detach()[rows], bias))


def keep_columns(root: nn.Module, name: str, columns: torch.Tensor, weight: torch.Tensor | None = None) -> None:
    """Cut the Linear at ``name`` to the input ``columns``; ``weight`` (full width) replaces
    the old values first (a refit)."""
    layer = root.get_submodule(name)
    full = layer.weight.detach() if weight is None else weight.to(layer.weight.dtype)
    bias = None if layer.bias is None else layer.bias.detach()
    replace_module(root, name, _new_linear(full[:, columns], bias))


def mark_heads(attention: nn.Module, heads: int, kv_heads: int) -> None:
    setattr(attention, _HEADS_ATTRIBUTE, (heads, kv_heads))


def head_counts(attention: nn.Module, config: Any) -> tuple[int, int]:
    """(query heads, KV heads) of one attention module: its sliced counts, else the config's."""
    default = (config.num_attention_heads, configured_kv_heads(config))
    return tuple(getattr(attention, _HEADS_ATTRIBUTE, default))


def record_sliced(model: PreTrainedModel, spec: ArchitectureSpec) -> None:
    """Record every block's Linear shapes and sliced head counts in the config (only when
    something was sliced: a plain model keeps a plain config)."""
    shapes: dict[str, list[int]] = {}
    heads: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, SparseLowRankLinear)):  # a factorized layer keeps its sliced shape
            shapes[name] = [module.out_features, module.in_features]
        counts = getattr(module, _HEADS_ATTRIBUTE, None)
        if counts is not None:
            heads[name] = list(counts)
    defaults = _default_shapes(model)
    changed = {n: s for n, s in shapes.items() if n in defaults and defaults[n] != s}
    if not changed and not heads:
        return
    record: dict[str, Any] = {"linear_shapes": changed, "heads": heads}
    kv = _kv_heads_per_layer(model, spec, heads)
    if kv is not None:
        record["kv_heads_per_layer"] = kv
    setattr(model.config, CONFIG_KEY, record)


def _default_shapes(model: PreTrainedModel) -> dict[str, list[int]]:
    """Linear shapes of a fresh model of this config (built on the meta device: no memory)."""
    config = model.config
    with torch.device("meta"):
        fresh = type(model)(config)
    return {n: [m.out_features, m.in_features] for n, m in fresh.named_modules() if isinstance(m, nn.Linear)}


def _kv_heads_per_layer(model: PreTrainedModel, spec: ArchitectureSpec, heads: dict[str, list[int]]) -> list[int] | None:
    """KV heads of each block (for the KV-cache geometry of exported decode graphs)."""
    if spec.attention is None or not heads:
        return None
    default = configured_kv_heads(model.config)
    names = {module: name for name, module in model.named_modules()}
    out = []
    for block in transformer_blocks(model):
        counts = heads.get(names[block.get_submodule(spec.attention.module)])
        out.append(counts[1] if counts else default)
    return out


def restore_sliced(model: PreTrainedModel, spec: ArchitectureSpec, record: dict[str, Any]) -> None:
    """Rebuild recorded shapes (empty Linear layers: the weights are loaded afterwards) and
    head counts."""
    for name, (out_features, in_features) in record.get("linear_shapes", {}).items():
        old = model.get_submodule(name)
        replace_module(model, name, nn.Linear(in_features, out_features, bias=old.bias is not None))
    for name, (heads, kv_heads) in record.get("heads", {}).items():
        attention = model.get_submodule(name)
        spec.attention.set_heads(attention, heads, kv_heads)
        mark_heads(attention, heads, kv_heads)
