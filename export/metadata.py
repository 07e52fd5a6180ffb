"""Sparsity metadata inside the ONNX file: ``metadata_props`` with namespaced keys and
JSON values, so that plain ``onnx`` (no sparse-deploy) can read it back."""

from __future__ import annotations

import json
from typing import Any

import onnx

NAMESPACE = "sparse_deploy."


def write_metadata(model: onnx.ModelProto, entries: dict[str, Any]) -> None:
    """Set ``sparse_deploy.<key>`` = JSON(value), replacing earlier values of those keys."""
    keys = {NAMESPACE + k for k in entries}
    kept = [p for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = NAMESPACE + key, json.dumps(value, sort_keys=True)


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    return {p.key[len(NAMESPACE):]: json.loads(p.value) for p in model.metadata_props if p.key.startswith(NAMESPACE)}
