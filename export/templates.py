"""Trace a graph structure once: traced graphs reused across models that differ only in weights.

Tracing (``torch.onnx`` dynamo) is most of an export's time, minutes per graph for a 135M model
on 2 cores, yet a dense model and its unstructured-pruned versions have the same graph: only
the values of the Linear weights differ. So a traced graph is kept as a template, keyed on what
shapes it (the configuration without its names, which includes any slicing or factorization
record, the flavour, the torch / transformers / onnx versions and the code of ``export/`` and
``pipeline/``), with the map of which initializer holds which 2-D parameter and a digest of all
other parameters. A model with the same key and the same other parameters gets the template
with its own weights written into those initializers. Parity is still checked per artifact
against the model's own torch outputs; the artifact writer drops a template whose result misses
parity and traces again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import transformers
from torch import nn

from export.weights import TRANSPOSED_SUFFIX
from pipeline.atomic import atomic_directory
from pipeline.environment import source_digest
from pipeline.models import cache_dir

log = logging.getLogger(__name__)

GRAPH_FILE = "graph.onnx"
INDEX_FILE = "template.json"
_NAMES = ("_name_or_path", "transformers_version", "_commit_hash")  # config entries that do not shape a graph


def template_dir() -> Path:
    return cache_dir() / "graphs"


def template_key(model: nn.Module, flavour: str) -> str:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NAMES}
    parts = [flavour, config, torch.__version__, transformers.__version__, onnx.__version__,
             source_digest("export", "pipeline")]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def other_parameters_digest(model: nn.Module) -> str:
    """Digest of every parameter that is not 2-D (norms, biases): a template is only reused for
    a model whose other parameters equal the traced model's (pruning changes only weights)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.dim() != 2:
            digest.update(name.encode() + param.detach().float().numpy().tobytes())
    return digest.hexdigest()


def covers(model: nn.Module, weights: dict[str, str]) -> bool:
    """Whether every 2-D parameter sits in a mapped initializer (else its changes would be lost)."""
    mapped = set(weights.values())
    return all(name in mapped for name, param in model.named_parameters() if param.dim() == 2)


def save(key: str, proto: onnx.ModelProto, io: dict[str, Any], weights: dict[str, str], model: nn.Module) -> None:
    kept = onnx.ModelProto()
    kept.CopyFrom(proto)  # saving with external data moves the tensors out of the proto it is given
    with atomic_directory(template_dir() / key, overwrite=True) as tmp:
        onnx.save_model(kept, str(tmp / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=GRAPH_FILE + ".data", size_threshold=1024)
        (tmp / INDEX_FILE).write_text(json.dumps({"io": io, "weights": weights,
                                                  "others": other_parameters_digest(model)}) + "\n")


def load(key: str, model: nn.Module) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, str]] | None:
    """The template for ``key`` filled with ``model``'s weights, or None (no template, other
    parameters differ, or a weight whose shape does not match)."""
    directory = template_dir() / key
    if not (directory / INDEX_FILE).is_file():
        return None
    index = json.loads((directory / INDEX_FILE).read_text())
    if index["others"] != other_parameters_digest(model):
        return None
    proto = onnx.load(str(directory / GRAPH_FILE), load_external_data=True)
    if not _fill(proto, index["weights"], model):
        return None
    return proto, index["io"], index["weights"]


def discard(key: str) -> None:
    index = template_dir() / key / INDEX_FILE
    if index.is_file():
        index.unlink()  # the directory is rewritten by the next save


def _fill(proto: onnx.ModelProto, weights: dict[str, str], model: nn.Module) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    for init in proto.graph.initializer:
        if init.name not in weights:
            continue
        array = params[weights[init.name]].detach().float().numpy()
        if init.name.endswith(TRANSPOSED_SUFFIX):
            array = array.T
        if list(array.shape) != list(init.dims) or init.data_type != onnx.TensorProto.FLOAT:
            return False
        init.raw_data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
    return True
