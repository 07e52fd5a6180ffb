"""Achieved sparsity, counted from the weights themselves (never from what was asked)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from pipeline.architectures import blocks_prefix, linear_layers, transformer_blocks


def _counts(tensors: list[torch.Tensor]) -> dict[str, Any]:
    params = sum(t.numel() for t in tensors)
    nonzeros = sum(int(torch.count_nonzero(t)) for t in tensors)
    return {"params": params, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / params if params else 0.0}


def sparsity_report(model: PreTrainedModel) -> dict[str, Any]:
    """Per Linear layer of every block, per block, and overall (blocks' Linear weights, and
    the whole model with embeddings and head; tied weights counted once)."""
    prefix = blocks_prefix(model)
    layers: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    block_weights: list[torch.Tensor] = []
    for index, block in enumerate(transformer_blocks(model)):
        weights = []
        for name, layer in linear_layers(block).items():
            w = layer.weight.detach()
            layers[f"{prefix}.{index}.{name}"] = {"shape": list(w.shape), **_counts([w])}
            weights.append(w)
        blocks.append(_counts(weights))
        block_weights += weights
    return {
        "layers": layers,
        "blocks": blocks,
        "blocks_linear": _counts(block_weights),
        "model": _counts(list(model.parameters())),
    }
