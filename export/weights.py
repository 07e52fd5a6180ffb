"""Weight initializers of an exported graph: their torch names and their sparsity.

torch.onnx constant-folds ``W.T`` of every Linear into an anonymous initializer
(``val_89``) that feeds a MatMul directly, which is what DeepSparse's sparse kernels want.
We give each one back its parameter name by content, and count sparsity from the
initializer's own values, so the metadata describes the file, not what was intended.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

TRANSPOSED_SUFFIX = ".T"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()


def rename_weight_initializers(graph: onnx.GraphProto, model: nn.Module, prefix: str = "model.") -> dict[str, str]:
    """Rename 2-D initializers equal to a parameter (or its transpose) to the parameter's
    name (``+ ".T"`` when transposed). Returns, for the initializers that hold parameters
    (the model's weights, as opposed to constants such as RoPE tables), initializer name ->
    the parameter's full name in ``model``."""
    by_digest: dict[str, tuple[str, str]] = {}  # digest -> (initializer name, parameter name)
    for name, param in model.named_parameters():
        if param.dim() == 2:
            array = param.detach().float().numpy()
            by_digest.setdefault(_digest(array), (name, name))
            by_digest.setdefault(_digest(array.T), (name + TRANSPOSED_SUFFIX, name))
    renames: dict[str, str] = {}
    weights: dict[str, str] = {}
    taken = {init.name for init in graph.initializer}
    for init in graph.initializer:
        found = by_digest.get(_digest(numpy_helper.to_array(init))) if len(init.dims) == 2 else None
        if found is None:
            continue
        new = found[0].removeprefix(prefix)
        if new != init.name and new not in taken:  # a name already taken: tied copy, keep its own
            renames[init.name] = new
            taken.add(new)
        weights[renames.get(init.name, init.name)] = found[1]
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    return weights


def detect_pattern(array: np.ndarray, input_axis: int) -> str:
    """``dense``, ``N:M`` (every group of M consecutive inputs keeps <= N, for the largest
    such N:M among 1:2 .. 4:8), or ``unstructured``."""
    nonzero = array != 0
    if nonzero.all():
        return "dense"
    rows = np.moveaxis(nonzero, input_axis, -1)
    for n, m in ((1, 2), (2, 4), (1, 4), (4, 8), (2, 8)):
        if rows.shape[-1] % m == 0 and (rows.reshape(*rows.shape[:-1], -1, m).sum(-1) <= n).all():
            if abs(nonzero.mean() - n / m) < 0.01:
                return f"{n}:{m}"
    return "unstructured"


def weight_entry(name: str, array: np.ndarray, role: dict[str, Any] | None = None) -> dict[str, Any]:
    """One weight initializer's report entry (shape, non-zeros, sparsity, pattern), read from its
    values. A MatMul weight stored as W.T (``name`` ends in ``.T``) is [in, out]: inputs along axis 0."""
    role = role or {}
    nonzeros = int(np.count_nonzero(array))
    input_axis = 0 if name.endswith(TRANSPOSED_SUFFIX) else array.ndim - 1
    pattern = "low-rank" if role.get("role", "").startswith("low-rank") else detect_pattern(array, input_axis)
    return {"shape": list(array.shape), "nonzeros": nonzeros, "sparsity": 1 - nonzeros / array.size,
            "pattern": pattern, **role}


def weight_report(graph: onnx.GraphProto, weights: dict[str, str],
                  roles: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Per weight initializer: :func:`weight_entry`. ``weights`` maps initializer -> parameter
    name; ``roles`` (by parameter name) marks the parts of factorized layers: a low-rank
    factor's pattern is ``low-rank`` with its rank. The graph must be loaded with its external data."""
    roles = roles or {}
    return {init.name: weight_entry(init.name, numpy_helper.to_array(init), roles.get(weights[init.name]))
            for init in graph.initializer if init.name in weights}
