"""Streamed export (export/streamed.py) against the in-memory export, on a tiny sharded LLaMA
pruned by the streamed path: the same graphs, weights and logits, one data file for both
flavours; and a disk that fills up mid-export leaves nothing behind."""

from __future__ import annotations

import errno
import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

from export.artifact import MANIFEST, export_artifact
from export.parity import Reference
from export.ort_session import run, session
from export.streamed import ExternalData, check_room
from export.verify import verify_artifact
from pipeline.data import token_batches
from pipeline.errors import SparseDeployError
from pipeline.models import load_streamed
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner
from runtime import deepsparse_runner
from tests.test_shards import write_sharded
from tests.test_streaming import CONFIG as STREAMING_CONFIG

CONFIG = STREAMING_CONFIG.__class__(**{**STREAMING_CONFIG.to_dict(), "vocab_size": 1024})  # parity feeds ids < 1000


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Wanda 60%, pruned streamed: a sharded directory, as a 7B model's would be."""
    root = tmp_path_factory.mktemp("streamed-export")
    write_sharded(root / "source", CONFIG)
    loaded = load_streamed(str(root / "source"))
    batches = token_batches(torch.randint(0, CONFIG.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0)),
                            2, causal_lm=True)
    result = prune_model(loaded, build_pruner("wanda"), 0.6, CalibrationConfig(), batches=batches)
    save_pruned(loaded, build_record(loaded, result), root / "pruned")
    return root / "pruned"


def test_streamed_export_writes_the_in_memory_artifact(pruned, tmp_path):
    """Same weight report (names, non-zeros, patterns), same torch reference, and each streamed
    graph computes the in-memory graph's outputs on its parity inputs (to 1e-5: the same graph
    structure over the same float32 weights; measured ~1e-7)."""
    memory = export_artifact(str(pruned), tmp_path / "memory")
    streamed = export_artifact(str(pruned), tmp_path / "streamed", stream=True)

    assert streamed["weights"] == memory["weights"]
    assert streamed["export"]["streamed"] and not memory["export"]["streamed"]
    for flavour, entry in memory["flavours"].items():
        assert streamed["flavours"][flavour]["inputs"] == entry["inputs"]
        assert streamed["flavours"][flavour]["outputs"] == entry["outputs"]
        assert streamed["parity"][flavour]["passed"]
        reference = Reference.load(tmp_path / "memory" / "parity" / f"{flavour}.npz")
        streamed_reference = Reference.load(tmp_path / "streamed" / "parity" / f"{flavour}.npz")
        for name, want in reference.outputs.items():
            np.testing.assert_allclose(streamed_reference.outputs[name], want, atol=1e-6, rtol=0)
        got = run(session(tmp_path / "streamed" / entry["file"]), reference.inputs)
        for name, value in zip(entry["outputs"], got):
            np.testing.assert_allclose(value, reference.outputs[name], atol=1e-5, rtol=0)

    data = tmp_path / "streamed" / "model.onnx.data"
    assert data.stat().st_ino == (tmp_path / "streamed" / "prefill" / "model.onnx.data").stat().st_ino
    manifest = json.loads((tmp_path / "streamed" / MANIFEST).read_text())
    assert manifest["files"]["model.onnx.data"] == manifest["files"]["prefill/model.onnx.data"]
    assert verify_artifact(tmp_path / "streamed").ok
    if deepsparse_runner.available():  # it compiles a copy of the graph over the artifact's own data file
        graph = tmp_path / "streamed" / "model.onnx"
        feeds = Reference.load(tmp_path / "streamed" / "parity" / "decode.npz").inputs
        result = deepsparse_runner.run_deepsparse(graph, feeds, want_outputs=True, repetitions=1)
        np.testing.assert_allclose(result.outputs[0], run(session(graph), feeds)[0], atol=1e-4, rtol=1e-3)
        assert result.timed_major_faults >= 0
        assert verify_artifact(tmp_path / "streamed").ok  # neither the graph nor its data file changed


def test_a_disk_that_fills_during_a_streamed_export_leaves_nothing(pruned, tmp_path, monkeypatch):
    writes = []

    def fill_up(self, offset, data):
        writes.append(offset)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ExternalData, "_write", fill_up)
    out = tmp_path / "art"
    with pytest.raises(SparseDeployError, match="No space left on device.*nothing was written"):
        export_artifact(str(pruned), out, stream=True)
    assert len(writes) == 3
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_export_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    graph = ir.Graph([], [], nodes=[], name="g")
    never = ir.LazyTensor(lambda: pytest.fail("read"), dtype=ir.DataType.FLOAT, shape=ir.Shape((100_000, 100_000)))
    graph.register_initializer(ir.Value(name="w", const_value=never))
    store = ExternalData(tmp_path / "model.onnx.data")
    monkeypatch.setattr("export.streamed.shutil.disk_usage", lambda _path: type("U", (), {"free": 10**9})())
    with pytest.raises(SparseDeployError, match=r"needs 40.0 GB on .* and 1.0 GB are free"):
        check_room(ir.Model(graph, ir_version=8), store)
    assert not store.path.exists()
