"""Achieved sparsity, counted from the weights themselves (never from what was asked)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from pipeline.architectures import blocks_prefix, linear_layers, transformer_blocks
from pipeline.factorized import factorized_layers


def _counts(params: int, nonzeros: int) -> dict[str, Any]:
    return {"params": params, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / params if params else 0.0}


def _tensor_counts(tensors: list[torch.Tensor]) -> dict[str, Any]:
    return _counts(sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors))


def _sum(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return _counts(sum(e["params"] for e in entries), sum(e["nonzeros"] for e in entries))


def _layer_entries(block: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """A plain layer counts its weight's zeros. A sparse + low-rank layer counts against the
    dense weight it replaces: stored non-zeros (S's plus both factors') over ``d_out·d_in``,
    so its "sparsity" is the honest compression rate."""
    entries = {}
    for name, layer in linear_layers(block).items():
        w = layer.weight.detach()
        entries[name] = {"shape": list(w.shape), **_counts(w.numel(), int(torch.count_nonzero(w)))}
    for name, layer in factorized_layers(block).items():
        entries[name] = {
            "shape": [layer.out_features, layer.in_features],
            **_counts(layer.out_features * layer.in_features, layer.stored_nonzeros()),
            "rank": layer.rank,
            "sparse_term_sparsity": 1 - int(torch.count_nonzero(layer.sparse.weight)) / layer.sparse.weight.numel(),
        }
    return entries


def block_counts(block: torch.nn.Module) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One block's layer entries and the counts of all its stored parameters (norms included)."""
    return _layer_entries(block), _tensor_counts(list(block.parameters()))


def sparsity_report(model: PreTrainedModel, counted: dict[int, Any] | None = None) -> dict[str, Any]:
    """Per prunable layer of every block, per block, and overall (blocks' layers, and the
    whole model's stored parameters with embeddings and head; tied weights counted once).
    ``counted``: :func:`block_counts` per block index, taken while each block was resident, for
    a streamed model whose blocks are no longer in memory."""
    prefix = blocks_prefix(model)
    layers: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    for index, block in enumerate(transformer_blocks(model)):
        entries, total = counted[index] if counted is not None else block_counts(block)
        layers.update({f"{prefix}.{index}.{name}": entry for name, entry in entries.items()})
        blocks.append(_sum(list(entries.values())))
        totals.append(total)
    totals.append(_tensor_counts([t for name, t in model.named_parameters() if not name.startswith(f"{prefix}.")]))
    return {
        "layers": layers,
        "blocks": blocks,
        "blocks_linear": _sum(blocks),
        "model": _sum(totals),
    }
