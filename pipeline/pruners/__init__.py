"""Pruning methods, by name. Each method is one module holding its math and nothing else."""

from __future__ import annotations

import dataclasses
import json
import typing
from enum import Enum
from typing import Any

from pipeline.errors import SparseDeployError
from pipeline.masks import SparsityPattern
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


def _typed_param(method: str, key: str, value: Any, kind: Any) -> Any:
    """``value`` as the declared type of the pruner's field ``key``, or a one-line error naming
    both: a recipe's ``iterations: 2.5`` or ``--param iterations=true`` must not prune and be
    recorded as given."""
    def bad(expected: str) -> SparseDeployError:
        return SparseDeployError(f"parameter '{key}' of '{method}' expects {expected}, got {value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(kind, type) and issubclass(kind, Enum):
        allowed = [m.value for m in kind]
        if value not in allowed:
            raise bad(f"one of {', '.join(map(str, allowed))}")
        return kind(value)
    elif kind is SparsityPattern and not isinstance(value, (str, SparsityPattern)):
        raise bad("'unstructured' or N:M such as 2:4")
    return value


def method_parameters(cls: type[Pruner]) -> dict[str, Any]:
    """A pruner's parameters and their declared types (its dataclass fields): the method's own
    first, then those its base classes share (a pattern, the structures), so that a message
    listing them starts with what is particular to the method."""
    hints = typing.get_type_hints(cls)
    declared_at: dict[str, int] = {}
    for level, klass in enumerate(cls.__mro__):
        for name in vars(klass).get("__annotations__", {}):
            declared_at.setdefault(name, level)
    fields = sorted((f for f in dataclasses.fields(cls) if f.init), key=lambda f: declared_at.get(f.name, 0))
    return {f.name: hints[f.name] for f in fields}


def build_pruner(method: str, **params: Any) -> Pruner:
    """A configured pruner from its name and parameters, each checked against its declared
    type, with one-line errors that name the key and what is allowed."""
    try:
        cls = PRUNERS[method]
    except KeyError:
        raise SparseDeployError(f"unknown method '{method}'; available: {', '.join(sorted(PRUNERS))}") from None
    declared = method_parameters(cls)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise SparseDeployError(f"'{method}' has no parameter '{unknown[0]}'; its parameters: "
                                f"{', '.join(declared) or 'none'}")
    typed = {key: _typed_param(method, key, value, declared[key]) for key, value in params.items()}
    try:
        return cls(**typed)
    except (TypeError, ValueError) as exc:
        raise SparseDeployError(f"bad parameters for '{method}': {exc}") from None


__all__ = ["PRUNERS", "BlockContext", "Pruner", "WeightPruner", "build_pruner", "method_parameters", "parse_params"]
