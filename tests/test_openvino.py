"""OpenVINO with the sparse MatMul extension on real artifacts: the same logits as ONNX Runtime
(tolerance 1e-4 absolute on logits of order 1-10: float32 sums in another order), the same
greedy tokens, every ISA path, the sparse-op counts, and the model card's load snippet.

Tiny models pruned by magnitude to 70% (so that every Linear goes on the sparse op); their
layers are narrow, so this checks correctness, not speed (benchmarks/ measure speed).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from export.artifact import export_artifact
from export.ort_session import run as ort_run
from export.ort_session import session
from pipeline.app.cli import main
from runtime import openvino_runner

ATOL = 1e-4
PATHS = [isa for isa in openvino_runner.ISAS if openvino_runner.isa_supported(isa)]


def _pruned_artifact(factory, name: str, flavours: bool = True):
    pruned = factory.mktemp("pruned") / name
    assert main(["prune", "--model", name, "--method", "magnitude", "--sparsity", "0.7", "--out", str(pruned),
                 "--calib-samples", "2", "--calib-seq-len", "32"]) == 0
    art = factory.mktemp("art") / name
    export_artifact(str(pruned), art, parity_windows=1, parity_seq_len=32)
    return art


@pytest.fixture(scope="module")
def llama_artifact(tmp_path_factory):
    return _pruned_artifact(tmp_path_factory, "tiny-llama")


def _ids(length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 200, (1, length), dtype=np.int64)


def _ov_logits(graph, feeds, isa=None):
    compiled, ops = openvino_runner.compile_model(graph, sparse=True, threads=2, isa=isa)
    return openvino_runner.run(compiled, feeds)[0], ops


def test_prefill_logits_match_onnxruntime_on_every_path(llama_artifact):
    graph = llama_artifact / "prefill" / "model.onnx"
    feeds = {"input_ids": _ids(24)}
    expected = ort_run(session(graph), feeds)[0]
    for isa in PATHS:
        logits, ops = _ov_logits(graph, feeds, isa)
        assert np.abs(logits - expected).max() < ATOL, isa
        assert ops.sparse >= 7 * 2 and ops.isa == {isa: ops.sparse}  # every block Linear of 2 blocks


def test_decode_graph_with_cache_matches_onnxruntime(llama_artifact):
    from export.graphs import KVGeometry, decode_inputs
    from transformers import AutoConfig

    geometry = KVGeometry.from_config(AutoConfig.from_pretrained(llama_artifact))
    feeds = {k: v.numpy() for k, v in decode_inputs(geometry, seq=1, past=7, batch=1).items()}
    graph = llama_artifact / "model.onnx"
    expected = ort_run(session(graph), feeds)
    compiled, ops = openvino_runner.compile_model(graph, sparse=True, threads=2)
    got = openvino_runner.run(compiled, feeds)
    assert ops.sparse > 0
    assert len(got) == len(expected)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, expected)) < ATOL


def test_greedy_tokens_are_the_same(llama_artifact):
    graph = llama_artifact / "prefill" / "model.onnx"
    ort_session = session(graph)
    compiled, _ = openvino_runner.compile_model(graph, sparse=True, threads=2)
    ours, theirs = _ids(6, seed=1), _ids(6, seed=1)
    for _ in range(10):
        ours = np.concatenate([ours, [[int(openvino_runner.run(compiled, {"input_ids": ours})[0][0, -1].argmax())]]], 1)
        theirs = np.concatenate([theirs, [[int(ort_run(ort_session, {"input_ids": theirs})[0][0, -1].argmax())]]], 1)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("name", ["tiny-phi3", "tiny-opt"])
def test_other_architectures_match_onnxruntime(tmp_path_factory, name):
    """Phi-3's fused qkv / gate_up and OPT's biased Linears (MatMul + Add) on the sparse op."""
    graph = _pruned_artifact(tmp_path_factory, name) / "prefill" / "model.onnx"
    feeds = {"input_ids": _ids(16)}
    logits, ops = _ov_logits(graph, feeds)
    assert ops.sparse > 0
    assert np.abs(logits - ort_run(session(graph), feeds)[0]).max() < ATOL


def test_dense_weights_stay_on_openvinos_matmul(llama_artifact):
    """Above the threshold nothing goes sparse: a weight too dense to gain runs as a plain MatMul."""
    _, _, ops = openvino_runner.read_model(llama_artifact / "prefill" / "model.onnx", sparse=True, min_sparsity=0.99)
    assert ops.sparse == 0 and ops.dense >= 14


def test_the_model_cards_openvino_snippet_runs(llama_artifact):
    from pipeline.app.report import openvino_snippet

    code = openvino_snippet("prefill/model.onnx", "{'input_ids': np.zeros((1, 16), np.int64)}")
    code = code.replace("ARTIFACT_DIR", str(llama_artifact)).replace("SPARSE_DEPLOY_DIR", str(openvino_runner.KERNELS.parents[1]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sparse MatMuls:" in result.stdout and "(1, 16," in result.stdout


def test_openvino_reads_nothing_from_the_network(llama_artifact, tmp_path):
    """Like DeepSparse's analytics: running an artifact in OpenVINO must not need the network."""
    unshare = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if unshare.returncode != 0:
        pytest.skip("unshare -n not permitted here")
    code = (f"from runtime import openvino_runner as o; import numpy as np; c, ops = o.compile_model("
            f"'{llama_artifact / 'prefill' / 'model.onnx'}', sparse=True); print(ops.sparse, o.run(c, "
            "{'input_ids': np.zeros((1, 8), np.int64)})[0].shape)")
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=openvino_runner.KERNELS.parents[1])
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_cpu_without_avx2_is_warned_about_the_scalar_path(llama_artifact, monkeypatch, caplog):
    """The scalar path's correctness is covered above (every path); here: the user is told."""
    monkeypatch.setattr(openvino_runner, "best_isa", lambda: "scalar")
    with caplog.at_level("WARNING"):
        openvino_runner.read_model(llama_artifact / "prefill" / "model.onnx", sparse=True)
    assert any("no AVX2" in r.getMessage() for r in caplog.records)


def _on_int8_grid(graph, out, min_sparsity=openvino_runner.MIN_SPARSITY):
    """The graph with every weight of at least ``min_sparsity`` zeros on its int8 grid (the
    kernel sweep's helper: the pipeline's rounding); how many were moved."""
    from benchmarks.int8_kernels import on_grid

    return on_grid(graph, out, min_sparsity)


def test_weights_on_an_int8_grid_run_int8_values(llama_artifact, tmp_path, monkeypatch):
    """A pruned weight on its per-output-channel int8 grid, stored dequantized as the artifact
    carries it, is packed with int8 values (the op says so, and names its matmul_q8 path). With
    few rows (decode), and with any number on AVX-512 VNNI, x is quantized per row, as ONNX
    Runtime's quantize_dynamic does: the logits move by the activations' rounding (tolerance: 2%
    of the logits' range) and the greedy token stays. With more rows than the q8 limit on AVX2
    (prefill, 16 tokens) x stays f32: ONNX Runtime's logits on the very same f32 graph to ATOL.
    SPARSE_DEPLOY_OV_VALUES=f32 packs f32; a weight off its grid keeps f32 values (never rounded)."""
    graph = tmp_path / "model.onnx"
    quantized = _on_int8_grid(llama_artifact / "prefill" / "model.onnx", graph)
    prefill = {"input_ids": _ids(16)}
    logits, ops = _ov_logits(graph, prefill, "avx2" if "avx2" in PATHS else "scalar")
    assert quantized >= 14 and ops.values == {"int8": ops.sparse} and ops.sparse >= 14
    assert sum(ops.q8.values()) == ops.sparse and set(ops.q8) <= set(openvino_runner.Q8_PATHS)
    assert np.abs(logits - ort_run(session(graph), prefill)[0]).max() < ATOL
    for length in (1, 4, 16):
        feeds = {"input_ids": _ids(length, seed=length)}
        expected = ort_run(session(graph), feeds)[0]
        logits, _ = _ov_logits(graph, feeds)
        assert np.abs(logits - expected).max() < 0.02 * np.ptp(expected), length
        assert np.array_equal(logits[0, -1].argmax(-1), expected[0, -1].argmax(-1)), length
    monkeypatch.setenv("SPARSE_DEPLOY_OV_VALUES", "f32")
    _, forced = _ov_logits(graph, prefill)
    assert forced.values == {"f32": forced.sparse} and forced.q8 == {}
    monkeypatch.delenv("SPARSE_DEPLOY_OV_VALUES")
    _, plain = _ov_logits(llama_artifact / "prefill" / "model.onnx", prefill)
    assert plain.values == {"f32": plain.sparse}  # off the grid: f32 values, never rounded


def test_dense_weights_on_an_int8_grid_run_on_openvinos_int8_compression(llama_artifact, tmp_path, monkeypatch):
    """A weight on its int8 grid but too dense for the sparse op (here: every MatMul weight, with
    the sparse op's threshold above 100%) runs as OpenVINO's own int8 weight compression, counted
    apart, not as an f32 MatMul: the logits those of ONNX Runtime on the same f32 graph (2% of
    their range: OpenVINO may round the activations of a compressed MatMul) and the same greedy
    token. SPARSE_DEPLOY_OV_VALUES=f32 keeps them f32."""
    graph = tmp_path / "model.onnx"
    quantized = _on_int8_grid(llama_artifact / "prefill" / "model.onnx", graph, min_sparsity=0.0)
    feeds = {"input_ids": _ids(16)}
    expected = ort_run(session(graph), feeds)[0]
    compiled, ops = openvino_runner.compile_model(graph, sparse=True, threads=2, min_sparsity=1.01)
    assert ops.sparse == 0 and ops.dense == 0 and ops.dense_int8 >= 7 * 3 and quantized >= ops.dense_int8
    logits = openvino_runner.run(compiled, feeds)[0]
    assert np.abs(logits - expected).max() < 0.02 * np.ptp(expected)
    assert np.array_equal(logits[0, -1].argmax(-1), expected[0, -1].argmax(-1))
    monkeypatch.setenv("SPARSE_DEPLOY_OV_VALUES", "f32")
    _, forced = openvino_runner.compile_model(graph, sparse=True, threads=2, min_sparsity=1.01)
    assert forced.dense_int8 == 0 and forced.dense == ops.dense_int8


def test_dense_int8_baselines_compute_the_same_model(llama_artifact, tmp_path):
    """The bench's int8 baselines (what a user would run instead of pruning) are the same model
    with int8 weights: logits within 3% of the f32 logits' range of ONNX Runtime's f32 ones, the
    same greedy token; OpenVINO's holds every MatMul weight as i8."""
    from runtime.onnxruntime_runner import quantize_weights_int8

    graph = llama_artifact / "prefill" / "model.onnx"
    feeds = {"input_ids": _ids(16)}
    expected = ort_run(session(graph), feeds)[0]
    ov_graph = openvino_runner.compress_weights_int8(graph, tmp_path / "ov-int8.xml")
    compiled, _ = openvino_runner.compile_model(ov_graph, sparse=False, threads=2)
    _, model, _ = openvino_runner.read_model(ov_graph, sparse=False)
    constants = [n for n in model.get_ordered_ops() if n.get_type_name() == "Constant"]
    assert sum(n.get_element_type().get_type_name() == "i8" for n in constants) >= 7 * 2
    for logits in (openvino_runner.run(compiled, feeds)[0],
                   ort_run(session(quantize_weights_int8(graph, tmp_path / "ort-int8.onnx")), feeds)[0]):
        assert np.abs(logits - expected).max() < 0.03 * np.ptp(expected)
        assert np.array_equal(logits[0, -1].argmax(-1), expected[0, -1].argmax(-1))
