"""int8 weights after pruning (pipeline/quantize.py): the grid the kernels recognize, the round
trip's bound, error compensation that keeps the mask and the scale, bad input refused before
any compute, and the recipe step end to end (manifest records it, OpenVINO packs it int8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pipeline.app.recipe import RecipeError, parse_recipe
from pipeline.errors import SparseDeployError
from pipeline.quantize import QuantizeConfig, channel_scales, quantize_gptq, quantize_rtn
from runtime.openvino_runner import on_int8_grid


def _pruned(rows: int = 24, cols: int = 96, sparsity: float = 0.7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    return w


def _hessian(cols: int, seed: int = 1) -> torch.Tensor:
    """Correlated inputs (a random mixing of Gaussians), where compensation has something to do."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, cols, generator=g) @ (torch.eye(cols) + 0.5 * torch.randn(cols, cols, generator=g))
    return x.T @ x / len(x)


def _output_error(before: torch.Tensor, after: torch.Tensor, h: torch.Tensor) -> float:
    d = (after - before).double()
    return float(torch.einsum("ij,jk,ik->", d, h.double(), d))


def _on_grid(w: torch.Tensor) -> bool:
    return on_int8_grid(np.ascontiguousarray(w.numpy().astype(np.float32)))


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantized_weights_keep_the_mask_and_lie_on_the_kernels_grid(method):
    """Zeros stay zero, no new zeros where the mask keeps a weight except rounding to 0, and the
    C library's int8_grid (what the OpenVINO extension checks) recognizes every row."""
    w = _pruned()
    q = quantize_rtn(w) if method == "rtn" else quantize_gptq(w, _hessian(w.shape[1]), block_size=32)
    assert torch.all(q[w == 0] == 0)
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    assert torch.allclose(q.abs().amax(dim=1, keepdim=True), 127 * scale, rtol=1e-6)  # the row kept its scale
    assert _on_grid(q) and not _on_grid(w)


def test_round_to_nearest_moves_each_weight_by_at_most_half_a_step():
    w = _pruned(seed=3)
    q = quantize_rtn(w)
    half_step = w.abs().amax(dim=1, keepdim=True) / 127 / 2
    assert torch.all((q - w).abs() <= half_step * (1 + 1e-5))
    assert torch.equal(quantize_rtn(q), q)  # on the grid already: a fixed point


def test_compensation_lowers_the_output_error_on_the_calibration_inputs():
    """What GPTQ is for: ||ΔW X||² below round-to-nearest's on the inputs it saw (masked and
    pinned as it is, it must still win clearly on correlated inputs)."""
    w = _pruned(rows=32, cols=128, sparsity=0.5, seed=5)
    h = _hessian(128, seed=6)
    rtn, gptq = quantize_rtn(w), quantize_gptq(w, h, block_size=32)
    assert _output_error(w, gptq, h) < 0.9 * _output_error(w, rtn, h)


@pytest.mark.parametrize("settings, message", [
    ({"bits": 4}, "4-bit weights are not supported"),
    ({"granularity": "group"}, "granularity 'group' is not supported"),
    ({"method": "awq"}, "method 'awq' is unknown"),
])
def test_unsupported_settings_are_refused(settings, message):
    with pytest.raises(SparseDeployError, match=message):
        QuantizeConfig(**settings)


def test_weights_without_a_grid_are_refused_by_name():
    with pytest.raises(SparseDeployError, match="layer.x is all zeros"):
        channel_scales(torch.zeros(4, 8), "layer.x")
    w = _pruned()
    w[1, 2] = float("nan")
    with pytest.raises(SparseDeployError, match="layer.y holds inf or nan"):
        channel_scales(w, "layer.y")


RECIPE = {"name": "tiny-q", "model": "tiny-llama", "calibration": {"samples": 2, "seq_len": 32},
          "prune": [{"method": "magnitude", "sparsity": 0.7}], "quantize": {"method": "rtn"},
          "evaluate": False, "export": {"parity_windows": 1, "parity_seq_len": 32}, "benchmark": False}


@pytest.mark.parametrize("section, message", [
    ({"bits": 3}, "'quantize': 3-bit weights are not supported"),
    ({"scale": "row"}, "'quantize.scale': not a known key"),
])
def test_bad_quantize_sections_name_the_key(section, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe({**RECIPE, "quantize": section})


def test_a_quantize_step_among_the_prune_steps_is_refused():
    with pytest.raises(RecipeError, match=r"'prune\[0\].method': quantize is not a pruning method"):
        parse_recipe({**RECIPE, "prune": [{"method": "quantize"}]})


@pytest.mark.parametrize("model, source, message", [
    ("tiny-llama", "c4", "'quantize.head': the LM head shares its weight with the input embeddings"),
    ("tiny-vit", "fashion-mnist", "'quantize.head': head is set but the model has no LM head"),
])
def test_a_head_that_cannot_be_quantized_alone_is_refused_before_any_stage(tmp_path, model, source, message):
    """A tied head (its grid would be the embedding table's) or none at all: one line naming the
    key, and no stages/ directory left behind."""
    from pipeline.app.run import run_recipe

    recipe = tmp_path / "q.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "model": model, "calibration": {**RECIPE["calibration"], "source": source},
                                      "quantize": {"method": "rtn", "head": True}}))
    with pytest.raises(RecipeError, match=message):
        run_recipe(recipe, tmp_path / "out")
    assert not (tmp_path / "out" / "stages").exists()


def test_the_quantize_step_lands_in_the_manifest_and_runs_int8_in_openvino(tmp_path):
    """prune -> quantize (LM head too) -> export on tiny-phi3 (untied head, fused layouts): the
    manifest records bits, granularity and every layer's error, the head's last; the artifact's
    weights lie on their grid, so OpenVINO's extension packs the pruned ones int8 and runs the
    dense head on OpenVINO's own int8 compression (no f32 constant MatMul left)."""
    from pipeline.app.run import run_recipe
    from runtime import openvino_runner

    recipe = tmp_path / "q.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "model": "tiny-phi3", "quantize": {"method": "rtn", "head": True}}))
    report = run_recipe(recipe, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "artifact" / "manifest.json").read_text())
    q = manifest["recipe"]["quantization"]
    assert q["bits"] == 8 and q["granularity"] == "channel" and q["method"] == "rtn" and q["head"]
    blocks = json.loads((tmp_path / "out" / "artifact" / "config.json").read_text())["num_hidden_layers"]
    assert len(q["layers"]) == 4 * blocks + 1 and q["layers"][-1]["layer"] == "lm_head"  # qkv, o, gate_up, down
    assert all(0 < e["weight_error"] < 0.05 for e in q["layers"])
    assert report["quantization"]["worst_layer"]["weight_error"] == max(e["weight_error"] for e in q["layers"])
    assert "and the LM head" in (tmp_path / "out" / "artifact" / "MODEL_CARD.md").read_text()
    _, ops = openvino_runner.compile_model(tmp_path / "out" / "artifact" / "prefill" / "model.onnx", sparse=True)
    assert ops.sparse >= 4 * blocks and ops.values == {"int8": ops.sparse}
    assert ops.dense_int8 == 1 and ops.dense == 0
