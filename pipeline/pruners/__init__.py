"""Pruning methods, by name. Each method is one module holding its math and nothing else."""

from __future__ import annotations

import json
from typing import Any

from pipeline.errors import SparseDeployError
from pipeline.pruners.base import Pruner, WeightPruner
from pipeline.sequential import BlockContext
from pipeline.pruners.magnitude import MagnitudePruner
from pipeline.pruners.oats import OATSPruner
from pipeline.pruners.osscar import OSSCARPruner
from pipeline.pruners.sparsegpt import SparseGPTPruner
from pipeline.pruners.structured_norm import StructuredNormPruner
from pipeline.pruners.wanda import WandaPruner

PRUNERS: dict[str, type[Pruner]] = {cls.name: cls for cls in (MagnitudePruner, WandaPruner, SparseGPTPruner, OATSPruner,
                                                                  OSSCARPruner, StructuredNormPruner)}


def parse_params(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> parameters; values parsed as JSON when they parse (numbers,
    booleans), else kept as strings (``structures=mlp+heads``)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SparseDeployError(f"method parameters are KEY=VALUE, got '{item}'")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def build_pruner(method: str, **params: Any) -> Pruner:
    """A configured pruner from its name and parameters, with one-line errors."""
    try:
        cls = PRUNERS[method]
    except KeyError:
        raise SparseDeployError(f"unknown method '{method}'; available: {', '.join(sorted(PRUNERS))}") from None
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise SparseDeployError(f"bad parameters for '{method}': {exc}") from None


__all__ = ["PRUNERS", "BlockContext", "Pruner", "WeightPruner", "build_pruner", "parse_params"]
