"""runtime/paired.py and benchmarks/headline_paired.py: graphs timed call by call in alternation
(every runtime, DeepSparse through its serving worker), and the headline figures taken from
such a run with the proxy run's kept beside them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import headline as hl
from benchmarks import headline_paired as hp
from pipeline.errors import SparseDeployError
from runtime import deepsparse_runner, openvino_runner
from runtime.bench import BenchSettings, time_cell
from runtime.paired import alternate, call_timer
from tests.test_headline import _report


def _matmul_graph(directory, zeros: float):
    """x[4, 64] @ W[64, 32] with exactly ``zeros`` of W zero, and its feeds."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(64 * 32).astype(np.float32)
    w[rng.permutation(w.size)[:round(zeros * w.size)]] = 0
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                              [numpy_helper.from_array(w.reshape(64, 32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = directory / "model.onnx"
    onnx.save(model, str(path))
    return path, {"x": rng.standard_normal((4, 64)).astype(np.float32)}


@pytest.fixture(scope="module")
def sparse_matmul(tmp_path_factory):
    """80% of W zero: a graph every runtime loads in a second."""
    return _matmul_graph(tmp_path_factory.mktemp("mm"), zeros=0.8)


def test_every_timer_runs_once_per_cycle_in_an_order_reversed_every_other_cycle():
    calls = []
    timers = {k: (lambda k=k: calls.append(k) or 0.001 * len(calls)) for k in "abc"}
    times = alternate(timers, cycles=3, pause_s=0)
    assert calls == list("abccbaabc")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "openvino-sparse", "deepsparse"])
def test_each_runtime_times_one_call_of_a_held_graph(sparse_matmul, runtime):
    path, feeds = sparse_matmul
    with call_timer(runtime, path, feeds, BenchSettings(warmup=1)) as (once, info):
        times = [once() for _ in range(3)]
    assert all(0 < t < 5 for t in times)
    if runtime == "openvino-sparse":
        assert info["sparse_ops"]["sparse_matmuls"] == 1


@pytest.mark.parametrize("flavour, sparse", [("decode", 1), ("prefill", 0), (None, 0)])
def test_the_sparse_threshold_follows_the_graph_flavour(tmp_path, flavour, sparse):
    """45% zeros: between the two thresholds, so on the sparse op in a decode graph (one row per
    call, bound by the bytes streamed) and on OpenVINO's own MatMul in a prefill graph or one
    whose flavour is not known."""
    assert openvino_runner.MIN_SPARSITY_DECODE <= 0.45 < openvino_runner.MIN_SPARSITY
    path, feeds = _matmul_graph(tmp_path, zeros=0.45)
    _, info = time_cell("openvino-sparse", path, feeds, BenchSettings(warmup=0, repetitions=1), flavour)
    assert info["sparse_ops"]["sparse_matmuls"] == sparse
    with call_timer("openvino-sparse", path, feeds, BenchSettings(warmup=0), flavour) as (_, info):
        assert info["sparse_ops"]["sparse_matmuls"] == sparse


def test_a_runtime_that_converts_graphs_first_is_refused(sparse_matmul):
    with pytest.raises(SparseDeployError, match="call by call"):
        with call_timer("onnxruntime-int8", *sparse_matmul, BenchSettings()):
            pass


def test_a_serving_deepsparse_worker_that_dies_is_one_error(tmp_path, sparse_matmul):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(SparseDeployError, match="DeepSparse failed"):
        with deepsparse_runner.served_deepsparse(bad, sparse_matmul[1]):
            pass


def _paired_times(ms: dict[tuple[str, str], float], cycles: int = 10) -> dict[tuple[str, str], list[float]]:
    return {cell: [ms.get(cell, 30.0) / 1000] * cycles for cell in hp.cells()}


def test_figures_are_per_block_against_the_fastest_dense_runtime():
    ms = {(rt, hp.HEAD_ONLY): 10.0 for rt, _ in hp.cells()}
    ms |= {("onnxruntime", "dense"): 40.0, ("openvino", "dense"): 50.0, ("deepsparse", "dense"): 60.0,
           ("openvino-sparse", "owl-wanda-70"): 20.0, ("deepsparse", "owl-wanda-70"): 45.0}
    f = hp.figures(_paired_times(ms), segments=5)
    assert f["baseline_runtime"] == "onnxruntime"  # block (40 - 10) / 2 = 15 ms
    assert f["speedups"]["openvino-sparse"]["speedup"] == pytest.approx(15 / 5)
    assert f["speedups"]["deepsparse"]["speedup"] == pytest.approx(15 / 17.5)
    assert f["speedups"]["openvino-sparse"]["segments"] == pytest.approx([3.0] * 5)


def test_the_headline_takes_the_owl_figures_from_the_paired_run_and_keeps_the_proxy_runs(tmp_path):
    ms = {(rt, hp.HEAD_ONLY): 10.0 for rt, _ in hp.cells()}
    ms |= {("onnxruntime", "dense"): 40.0, ("openvino", "dense"): 50.0, ("deepsparse", "dense"): 50.0,
           ("openvino-sparse", "owl-wanda-70"): 14.0}
    flavour = {"cycles": 10, **hp.figures(_paired_times(ms), segments=2)}
    paired = {"measured": "2026-12-06 23:00", "flavours": {"decode": flavour, "prefill": flavour},
              "environment": {"cpu": "paired cpu", "cores": 2, "isa": "avx2"},
              "settings": {"batch": 1, "seq_len": 128, "past": 127, "warmup": 3, "segments": 2}}
    h = hl.headline(_report(), tmp_path / "latency.json", paired=(paired, tmp_path / "headline_paired.json"))
    assert h["decode_speedup_owl_wanda_70"] == pytest.approx(15 / 2, abs=1e-3)
    assert h["hardware"] == "paired cpu, 2 cores" and h["baseline_runtime"] == "onnxruntime"
    proxy = h["proxy_run"]
    assert proxy["decode_speedup_owl_wanda_70"] == pytest.approx(3.0, abs=1e-3) and proxy["hardware"] == "test cpu, 2 cores"
    assert h["oats_vs_wanda_decode_50"] == pytest.approx(10 / 12, abs=1e-3)  # still the proxy run's
    table = hl.readme_table(h)
    assert "**7.50x**" in table and "| 3.00x (3.00-3.00) |" in table
