"""The kernel benchmark's graphs: OATS-shaped and unstructured layers store the same count at
equal compression, and both compute what their weights say (checked in ONNX Runtime)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from benchmarks import deepsparse_kernels as kernels


@pytest.fixture
def small_widths(monkeypatch):
    monkeypatch.setattr(kernels, "HIDDEN", 64)
    monkeypatch.setattr(kernels, "INTERMEDIATE", 160)


def _stored(model: onnx.ModelProto) -> tuple[int, int]:
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer]
    return sum(int(np.count_nonzero(w)) for w in weights), len(weights)


@pytest.mark.parametrize("compression", [0.5, 0.8])
def test_oats_shaped_chain_stores_what_unstructured_stores(small_widths, tmp_path, compression):
    form = kernels.COMPRESSION_FORM
    dense = 2 * 2 * 64 * 160
    counts = {}
    for rank_ratio in (0.0, kernels.RANK_RATIO):
        path = tmp_path / f"g{rank_ratio}.onnx"
        shape = kernels.build_graph(path, form, 3, compression, rank_ratio)
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        counts[rank_ratio] = _stored(model)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        assert y.shape == tuple(shape)
    (unstructured, n_plain), (oats, n_oats) = counts[0.0], counts[kernels.RANK_RATIO]
    assert (n_plain, n_oats) == (4, 12)  # one weight per layer vs S, V, U per layer
    # random masks: both near (1 - compression) of the dense count, the rank's floor costs OATS a little
    assert unstructured == pytest.approx((1 - compression) * dense, rel=0.05)
    assert oats == pytest.approx((1 - compression) * dense, rel=0.05)


def test_oats_shaped_layer_computes_sparse_plus_low_rank(small_widths, tmp_path):
    path = tmp_path / "g.onnx"
    shape = kernels.build_graph(path, kernels.COMPRESSION_FORM, 2, 0.6, kernels.RANK_RATIO)
    model = onnx.load(str(path))
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = x
    for i in range(4):
        expected = expected @ w[f"l{i}.s"] + (expected @ w[f"l{i}.v"]) @ w[f"l{i}.u"]
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_oats_shaped_layers_refuse_gemm_or_bias(small_widths, tmp_path):
    with pytest.raises(ValueError, match="plain MatMuls"):
        kernels.build_graph(tmp_path / "g.onnx", kernels.BREAK_EVEN, 1, 0.5, kernels.RANK_RATIO)


def test_compression_group_is_timed_in_interleaved_rounds(small_widths, tmp_path, monkeypatch):
    """The machine gets 1 ms faster at every call: every cell of the group runs once per round,
    in reversed order every other round, and the graphs (0.7 GB each at full width) are deleted."""
    from runtime.deepsparse_runner import DeepSparseResult

    calls = []

    def fake_run(path, feeds, warmup, repetitions):
        assert path.is_file() and feeds["x"].shape == (1, 2, 64)
        calls.append(path.name)
        return DeepSparseResult(0.0, [(100 - len(calls)) / 1000], 1.0, 2, {"deepsparse": "test"})

    monkeypatch.setattr(kernels, "run_deepsparse", fake_run)
    monkeypatch.setattr(kernels, "ROUNDS", 2)
    cells = kernels.sweep_compression(2, tmp_path)
    n = 1 + 2 * len(kernels.COMPRESSIONS)
    order = [f"graph{i}.onnx" for i in range(n)]
    assert calls == order + order[::-1]
    assert not list(tmp_path.iterdir())
    dense, unstructured, oats = cells[:3]
    assert dense["round_medians_ms"] == pytest.approx([99, 100 - 2 * n])
    assert oats["vs_unstructured_rounds"] == pytest.approx([98 / 97, (100 - 2 * n + 1) / (100 - 2 * n + 2)])
    # pooled over the rounds, the drift cancels: every cell's two runs average to the same time
    assert all(c["mean_ms"] == pytest.approx((99 + 100 - 2 * n) / 2) for c in cells)
    assert "rounds" in kernels._cell(oats) and "rounds" not in kernels._cell(dense)
