"""Artifacts: metadata true to the weights, parity, atomicity, and real clients (optimum, DeepSparse)."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.artifact import MANIFEST, export_artifact, sha256
from export.graphs import KVGeometry, decode_inputs
from export.metadata import read_metadata
from export.ort_session import run, session
from export.parity import Tolerance
from pipeline.app.cli import main
from pipeline.errors import SparseDeployError
from pipeline.models import load_model
from runtime import deepsparse_runner

needs_deepsparse = pytest.mark.skipif(not deepsparse_runner.available(), reason="no .venv-deepsparse")


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "tiny"
    assert main(["prune", "--model", "tiny-llama", "--method", "sparsegpt", "--pattern", "2:4", "--out", str(out),
                 "--calib-samples", "4", "--calib-seq-len", "32"]) == 0
    return out


@pytest.fixture(scope="module")
def artifact(pruned_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    export_artifact(str(pruned_dir), out, parity_windows=2, parity_seq_len=64)
    return out


def test_metadata_lists_every_weight_with_its_true_sparsity(artifact, pruned_dir):
    manifest = json.loads((artifact / MANIFEST).read_text())
    proto = onnx.load(str(artifact / "model.onnx"))
    assert read_metadata(proto)["weights"] == manifest["weights"]  # plain onnx reads it back
    params = dict(load_model(str(pruned_dir)).model.named_parameters())
    linear = [n for n, p in params.items() if p.dim() == 2 and "layers." in n]
    assert {f"{n.removeprefix('model.')}.T" for n in linear} <= manifest["weights"].keys()
    arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, info in manifest["weights"].items():
        array = arrays[name]
        torch_weight = params["model." + name.removesuffix(".T")] if "model." + name.removesuffix(".T") in params \
            else params[name.removesuffix(".T")]
        expected = torch_weight.detach().numpy().T if name.endswith(".T") else torch_weight.detach().numpy()
        np.testing.assert_array_equal(array, expected)
        assert info["nonzeros"] == int(np.count_nonzero(array)) == int(torch.count_nonzero(torch_weight))
        assert info["shape"] == list(array.shape)
        if "layers." in name:
            assert info["pattern"] == "2:4" and info["sparsity"] == pytest.approx(0.5)


LAYOUT_OPS = {"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Identity"}  # move data, compute none


def first_compute_ops(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """The ops that first compute on ``tensor``'s values, past layout-only ops (Shape reads none)."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    found, frontier = set(), [tensor]
    while frontier:
        for node, i in consumers.get(frontier.pop(), []):
            if node.op_type in LAYOUT_OPS and i == 0:
                frontier.extend(node.output)
            elif node.op_type != "Shape":
                found.add(node.op_type)
    return found


def test_decode_attends_without_rescaling_the_kv_cache(artifact):
    """The cached keys go straight to the score MatMul: the query is scaled, not the whole cache
    (export.graphs.scaled_query_attention; torch's own sdpa export multiplies every cached key)."""
    graph = onnx.load(str(artifact / "model.onnx"), load_external_data=False).graph
    keys = [o.name for o in graph.output if o.name.startswith("present.") and o.name.endswith(".key")]
    assert keys
    for key in keys:
        assert first_compute_ops(graph, key) == {"MatMul"}, key


def test_metadata_survives_a_load_save_round_trip(artifact, tmp_path):
    proto = onnx.load(str(artifact / "model.onnx"))
    onnx.save(proto, str(tmp_path / "copy.onnx"))
    assert read_metadata(onnx.load(str(tmp_path / "copy.onnx"))) == read_metadata(proto)


def test_manifest_records_parity_hashes_and_recipe(artifact):
    manifest = json.loads((artifact / MANIFEST).read_text())
    assert manifest["recipe"]["method"] == "sparsegpt" and manifest["recipe"]["pattern"] == "2:4"
    assert all(v["passed"] for k, v in manifest["parity"].items() if k != "tolerance")
    assert manifest["parity"]["decode"]["max_abs_error"] < 1e-4
    assert set(manifest["flavours"]) == {"decode", "prefill"}
    for rel, digest in manifest["files"].items():
        assert sha256(artifact / rel) == digest
    assert {"model.onnx", "prefill/model.onnx", "config.json", "tokenizer.json"} <= manifest["files"].keys()


def test_optimum_generates_the_same_greedy_text_as_torch(artifact, pruned_dir):
    from optimum.onnxruntime import ORTModelForCausalLM

    loaded = load_model(str(pruned_dir))
    ort_model = ORTModelForCausalLM.from_pretrained(artifact)
    loaded.tokenizer.pad_token, loaded.tokenizer.padding_side = loaded.tokenizer.eos_token, "left"
    inputs = loaded.tokenizer(["The history of Rome", "In 1907 the river"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=loaded.tokenizer.eos_token_id)
    assert torch.equal(ort_model.generate(**inputs, **kwargs), loaded.model.generate(**inputs, **kwargs))


def test_failed_parity_writes_nothing(pruned_dir, tmp_path):
    out = tmp_path / "art"
    with pytest.raises(SparseDeployError, match="parity failed"):
        export_artifact(str(pruned_dir), out, tolerance=Tolerance(atol=-1.0), parity_windows=1, parity_seq_len=16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, flavours", [("tiny-phi3", {"decode", "prefill"}), ("tiny-opt", {"decode", "prefill"}),
                                            ("tiny-vit", {"encoder"}), ("minilm-l6", {"encoder"})])
def test_other_architectures_export_with_parity(tmp_path, name, flavours):
    manifest = export_artifact(name, tmp_path / name, parity_windows=1, parity_seq_len=32)
    assert set(manifest["flavours"]) == flavours
    assert all(v["passed"] for k, v in manifest["parity"].items() if k != "tolerance")
    if flavours == {"encoder"}:  # encoders take their kind's input in bench and verify (a text encoder: token ids)
        assert main(["bench", str(tmp_path / name), "--runtime", "onnxruntime", "--repetitions", "1", "--warmup", "0",
                     "--rounds", "1", "--seq-len", "16", "--out", str(tmp_path / "bench")]) == 0
        report = json.loads((tmp_path / "bench" / "latency.json").read_text())
        assert [r["error"] for r in report["rows"]] == [None]
        assert main(["verify", str(tmp_path / name)]) == 0


@pytest.mark.parametrize("name, feed", [("minilm-l6", "np.zeros((1, 128), np.int64)"),
                                        ("tiny-vit", "np.zeros((1, 3, 32, 32), np.float32)"),
                                        ("tiny-llama", "np.zeros((1, 128), np.int64)")])
def test_the_model_card_feeds_each_kind_its_own_input(name, feed):
    from pipeline.app.report import _graph_feed

    loaded = load_model(name)
    assert _graph_feed(loaded.spec.kind, loaded.model.config)[2] == feed


@needs_deepsparse
def test_deepsparse_runs_both_flavours_natively_with_ort_outputs(artifact, pruned_dir):
    geometry = KVGeometry.of(load_model(str(pruned_dir)).model)
    cases = {
        "model.onnx": {k: v.numpy() for k, v in decode_inputs(geometry, seq=1, past=12).items()},
        "prefill/model.onnx": {"input_ids": np.arange(3, 35, dtype=np.int64).reshape(1, 32)},
    }
    for rel, feeds in cases.items():
        before = sha256(artifact / rel)
        result = deepsparse_runner.run_deepsparse(artifact / rel, feeds, want_outputs=True, repetitions=2)
        assert sha256(artifact / rel) == before  # DeepSparse rewrites the file it compiles: it gets a copy
        expected = run(session(artifact / rel), feeds)
        for got, want in zip(result.outputs, expected):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
        assert result.fraction_of_supported_ops > 0.85, result.fraction_of_supported_ops
        assert len(result.times_s) == 2


@needs_deepsparse
def test_a_deepsparse_compiler_abort_is_a_clear_error(tmp_path):
    """optimum's own LLaMA export makes DeepSparse 1.8.0 abort (graph.cpp:925)."""
    from optimum.exporters.onnx import main_export

    from pipeline.models import resolve_model_dir

    main_export(resolve_model_dir("tiny-llama"), output=tmp_path, task="text-generation-with-past",
                do_validation=False)
    geometry = KVGeometry.of(load_model("tiny-llama").model)
    feeds = {k: v.numpy() for k, v in decode_inputs(geometry, seq=1, past=8).items()}
    with pytest.raises(SparseDeployError, match="DeepSparse failed .*graph.cpp"):
        deepsparse_runner.run_deepsparse(tmp_path / "model.onnx", feeds)


@pytest.fixture
def fresh_templates(tmp_path, monkeypatch):
    """An empty template cache, and a count of the traces."""
    import export.artifact as artifact_module
    from export import templates

    monkeypatch.setattr(templates, "template_dir", lambda: tmp_path / "graphs")
    traces = []
    real = artifact_module.export_graph
    monkeypatch.setattr(artifact_module, "export_graph", lambda *a: traces.append(a[1]) or real(*a))
    return traces


def _outputs(artifact, flavour, feeds):
    graph = artifact / json.loads((artifact / MANIFEST).read_text())["flavours"][flavour]["file"]
    return run(session(graph), feeds)


def test_a_pruned_model_reuses_the_dense_models_traced_graph(pruned_dir, tmp_path, fresh_templates):
    dense = export_artifact("tiny-llama", tmp_path / "dense", parity_windows=1, parity_seq_len=32)
    assert fresh_templates == ["decode", "prefill"] and all(f["traced"] for f in dense["flavours"].values())
    pruned = export_artifact(str(pruned_dir), tmp_path / "pruned", parity_windows=1, parity_seq_len=32)
    assert fresh_templates == ["decode", "prefill"], "the pruned model was traced again"
    assert not any(f["traced"] for f in pruned["flavours"].values())
    assert all(v["passed"] for k, v in pruned["parity"].items() if k != "tolerance")
    assert 0.49 < pruned["weights"]["layers.0.mlp.up_proj.weight.T"]["sparsity"] < 0.51
    import export.artifact as artifact_module  # the same graph as a trace of the pruned model, bit for bit

    loaded = load_model(str(pruned_dir))
    feeds = {k: v.numpy() for k, v in decode_inputs(KVGeometry.of(loaded.model), 2, 5).items()}
    artifact_module._write_graph(loaded, "decode", tmp_path / "forced" / "model.onnx", {}, reuse=False)
    want = run(session(tmp_path / "forced" / "model.onnx"), feeds)
    for got, ref in zip(_outputs(tmp_path / "pruned", "decode", feeds), want):
        np.testing.assert_array_equal(got, ref)


def test_a_sliced_model_is_traced_and_a_bad_template_is_traced_again(tmp_path, fresh_templates, monkeypatch):
    from export import templates

    assert main(["prune", "--model", "tiny-llama", "--method", "osscar", "--sparsity", "0.25", "--out",
                 str(tmp_path / "sliced"), "--calib-samples", "2", "--calib-seq-len", "32"]) == 0
    export_artifact("tiny-llama", tmp_path / "dense", parity_windows=1, parity_seq_len=32)
    export_artifact(str(tmp_path / "sliced"), tmp_path / "sliced-art", parity_windows=1, parity_seq_len=32)
    assert fresh_templates == ["decode", "prefill"] * 2  # another structure: its own trace
    real_fill = templates._fill
    monkeypatch.setattr(templates, "_fill", lambda proto, weights, model: real_fill(proto, weights, model)
                        and _scramble(proto, weights))
    manifest = export_artifact("tiny-llama", tmp_path / "again", parity_windows=1, parity_seq_len=32)
    assert fresh_templates[4:] == ["decode", "prefill"]  # both templates missed parity and were traced again
    assert all(f["traced"] for f in manifest["flavours"].values())


def _scramble(proto, weights) -> bool:
    for init in proto.graph.initializer:
        if init.name in weights:
            init.raw_data = bytes(len(init.raw_data))  # zeros: a template that writes the wrong values
    return True
