"""OATS: budgets, N:M, the alternating minimisation, the fold into separate matmuls,
save/reload, export to ONNX Runtime and DeepSparse."""

import json
import math

import numpy as np
import pytest
import torch

from export.artifact import MANIFEST, export_artifact
from export.graphs import KVGeometry, decode_inputs
from export.ort_session import run, session
from pipeline.app.cli import main
from pipeline.errors import SparseDeployError
from pipeline.factorized import SparseLowRankLinear
from pipeline.masks import Granularity, SparsityPattern, prune_mask
from pipeline.models import load_model
from pipeline.pruners import build_pruner
from pipeline.pruners.oats import LowRankSolver, OATSPruner, budget, decompose
from pipeline.pruners.wanda import WandaPruner
from pipeline.sparsity_report import sparsity_report
from runtime import deepsparse_runner
from tests.conftest import outlier_inputs, stats_of

needs_deepsparse = pytest.mark.skipif(not deepsparse_runner.available(), reason="no .venv-deepsparse")
D_OUT, D_IN = 48, 128


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(3)
    # A weight with a decaying spectrum plus a few large entries, like real projections.
    low = torch.randn(D_OUT, 6) @ torch.randn(6, D_IN) / 3
    weight = (low + torch.randn(D_OUT, D_IN) * 0.3) / D_IN**0.5
    return weight, stats_of(outlier_inputs(2048, D_IN), gram=False)


@pytest.mark.parametrize("compression, kappa", [(0.5, 0.25), (0.6, 0.3), (0.3, 0.2)])
def test_rank_and_nonzero_budget_are_exact(layer, compression, kappa):
    weight, stats = layer
    sparse, [(u, v)] = OATSPruner(rank_ratio=kappa, iterations=5).decompose_weight(weight, stats.second_moment,
                                                                                    compression)
    rank = math.floor(kappa * (1 - compression) * D_OUT * D_IN / (D_OUT + D_IN))
    assert u.shape == (D_OUT, rank) and v.shape == (rank, D_IN)
    keep_per_row = D_IN - round((1 - (1 - kappa) * (1 - compression)) * D_IN)
    assert ((sparse != 0).sum(dim=1) == keep_per_row).all()
    stored = keep_per_row * D_OUT + rank * (D_OUT + D_IN)
    assert stored <= (1 - compression) * D_OUT * D_IN + D_OUT  # row rounding only


def test_layer_granularity_counts_over_the_whole_matrix(layer):
    weight, stats = layer
    sparse, _ = OATSPruner(iterations=5, granularity="layer").decompose_weight(weight, stats.second_moment, 0.5)
    assert int((sparse != 0).sum()) == D_OUT * D_IN - round(budget(D_OUT, D_IN, 0.5, 0.25).sparse_sparsity
                                                            * D_OUT * D_IN)
    assert (sparse != 0).sum(dim=1).unique().numel() > 1  # rows differ


@pytest.mark.parametrize("text, kappa", [("2:8", 0.25), ("2:4", 0.3), ("1:4", 0.5)])
def test_nm_sparse_term_is_valid_and_compression_follows(layer, text, kappa):
    weight, stats = layer
    pruner = OATSPruner(rank_ratio=kappa, iterations=5, pattern=text)
    pattern = SparsityPattern.parse(text)
    compression = pruner.implied_sparsity()
    assert compression == pytest.approx(1 - (pattern.n / pattern.m) / (1 - kappa))
    sparse, [(u, _)] = pruner.decompose_weight(weight, stats.second_moment, compression)
    kept = (sparse != 0).reshape(D_OUT, -1, pattern.m).sum(dim=-1)
    assert (kept == pattern.n).all()
    assert u.shape[1] == budget(D_OUT, D_IN, compression, kappa).rank


@pytest.mark.parametrize("solver", list(LowRankSolver))
def test_objective_never_increases(layer, solver):
    weight, stats = layer
    target = weight * stats.second_moment.sqrt()
    b = budget(D_OUT, D_IN, 0.5, 0.25)
    zeros = lambda r: prune_mask(r.abs(), b.sparse_sparsity, SparsityPattern(), Granularity.ROW)  # noqa: E731
    result = decompose(target, b.rank, zeros, 30, solver)
    assert len(result.objective) == 30
    assert all(later <= earlier * (1 + 1e-5) for earlier, later in zip(result.objective, result.objective[1:]))
    assert result.objective[-1] < result.objective[0]
    assert float(torch.linalg.matrix_norm(target - result.sparse - result.u @ result.v)) == pytest.approx(
        result.objective[-1], rel=1e-4)


def test_fast_solver_matches_full_svd(layer):
    weight, stats = layer
    target = weight * stats.second_moment.sqrt()
    b = budget(D_OUT, D_IN, 0.5, 0.25)
    zeros = lambda r: prune_mask(r.abs(), b.sparse_sparsity, SparsityPattern(), Granularity.ROW)  # noqa: E731
    fast = decompose(target, b.rank, zeros, 40, LowRankSolver.SUBSPACE).objective[-1]
    full = decompose(target, b.rank, zeros, 40, LowRankSolver.SVD).objective[-1]
    assert fast <= full * 1.01


def test_rank_ratio_zero_is_wanda(layer):
    weight, stats = layer
    sparse, [(u, _)] = OATSPruner(rank_ratio=0.0, iterations=3).decompose_weight(weight, stats.second_moment, 0.6)
    assert u.shape[1] == 0
    torch.testing.assert_close(sparse, WandaPruner().prune_weight(weight, stats, 0.6))


def test_fold_equals_dense_sum(layer):
    weight, stats = layer
    sparse, [(u, v)] = OATSPruner(iterations=10).decompose_weight(weight, stats.second_moment, 0.5)
    bias = torch.randn(D_OUT)
    module = SparseLowRankLinear.from_factors(sparse, [(u, v)], bias)
    x = torch.randn(7, D_IN)
    torch.testing.assert_close(module(x), x @ (sparse + u @ v).T + bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.dense_weight(), sparse + u @ v)
    assert module.stored_nonzeros() == int((sparse != 0).sum()) + u.numel() + v.numel()


def test_dead_inputs_get_zero_weights(layer):
    weight, stats = layer
    second = stats.second_moment.clone()
    second[:5] = 0
    sparse, [(u, v)] = OATSPruner(iterations=5).decompose_weight(weight, second, 0.5)
    assert torch.isfinite(sparse).all() and torch.isfinite(v).all()
    assert (sparse[:, :5] == 0).all() and (v[:, :5] == 0).all()


def test_fused_projections_get_one_budget_and_factor_pair_each(layer):
    weight, stats = layer
    rows = [8, 16, 24]  # ranks 1, 2, 3 at 30% compression (at 50% the first would round to 0)
    sparse, factors = OATSPruner(iterations=5).decompose_weight(weight, stats.second_moment, 0.3, rows)
    ranks = [budget(r, D_IN, 0.3, 0.25).rank for r in rows]
    assert min(ranks) > 0
    assert [(u.shape, v.shape) for u, v in factors] == [((r, k), (k, D_IN)) for r, k in zip(rows, ranks)]
    module = SparseLowRankLinear.from_factors(sparse, factors, None)
    x = torch.randn(5, D_IN)
    dense = sparse + torch.cat([u @ v for u, v in factors])  # = S + block-diagonal U times stacked V
    torch.testing.assert_close(module(x), x @ dense.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.dense_weight(), dense)
    # no block-diagonal zeros stored: exactly S's non-zeros and r_i·(rows_i + d_in) per projection
    assert module.stored_nonzeros() == int((sparse != 0).sum()) + sum(k * (r + D_IN) for r, k in zip(rows, ranks))
    assert sum(p.numel() for p in module.parameters()) == sparse.numel() + sum(k * (r + D_IN)
                                                                               for r, k in zip(rows, ranks))


def test_a_rank_zero_projection_stores_no_empty_factor():
    """A fused layer where one projection's budget rounds to rank 0 (Phi-3 with GQA, high
    compression): its rows join a neighbour's U as zeros; no zero-size weight is built."""
    torch.manual_seed(5)
    rows, ranks = [4, 6, 8, 2], [0, 2, 0, 1]
    factors = [(torch.randn(r, k), torch.randn(k, D_IN)) for r, k in zip(rows, ranks)]
    sparse = torch.randn(sum(rows), D_IN)
    module = SparseLowRankLinear.from_factors(sparse, factors, None)
    assert module.parts == ((18, 2), (2, 1)) and all(p.numel() > 0 for p in module.parameters())
    dense = sparse + torch.cat([u @ v for u, v in factors])
    torch.testing.assert_close(module.dense_weight(), dense)
    x = torch.randn(3, D_IN)
    torch.testing.assert_close(module(x), x @ dense.T, rtol=1e-5, atol=1e-5)


def test_bad_settings_are_clear_errors():
    with pytest.raises(SparseDeployError, match="rank_ratio"):
        build_pruner("oats", rank_ratio=1.0)
    with pytest.raises(SparseDeployError, match="nothing is left"):
        build_pruner("oats", pattern="7:8", rank_ratio=0.25)
    with pytest.raises(SparseDeployError, match="no_such"):
        build_pruner("oats", no_such=1)


@pytest.fixture(scope="module")
def oats_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("oats") / "tiny"
    assert main(["prune", "--model", "tiny-llama", "--method", "oats", "--sparsity", "0.5", "--param", "iterations=8",
                 "--out", str(out), "--calib-samples", "4", "--calib-seq-len", "32"]) == 0
    return out


def test_oats_model_saves_reloads_and_reports_honest_compression(oats_dir):
    record = json.loads((oats_dir / "prune_record.json").read_text())
    assert record["recipe"]["method"] == "oats" and record["recipe"]["granularity"] == "row"
    loaded = load_model(str(oats_dir))
    factorized = [m for m in loaded.model.modules() if isinstance(m, SparseLowRankLinear)]
    assert len(factorized) == 3 * 7
    report = sparsity_report(loaded.model)
    stored = sum(m.stored_nonzeros() for m in factorized)
    dense = sum(m.in_features * m.out_features for m in factorized)
    assert report["blocks_linear"]["sparsity"] == pytest.approx(1 - stored / dense)
    assert 0.5 <= report["blocks_linear"]["sparsity"] < 0.53
    assert report == record["achieved"]  # the reloaded model is the one that was saved


@pytest.fixture(scope="module")
def phi3_oats(tmp_path_factory):
    """A tiny Phi-3 pruned by OATS and its exported artifact (export_artifact refuses to
    write an artifact whose parity with torch fails)."""
    root = tmp_path_factory.mktemp("phi3_oats")
    out = root / "phi3-oats"
    assert main(["prune", "--model", "tiny-phi3", "--method", "oats", "--sparsity", "0.5", "--param", "iterations=4",
                 "--out", str(out), "--calib-samples", "2", "--calib-seq-len", "32"]) == 0
    return out, root / "art", export_artifact(str(out), root / "art", parity_windows=1, parity_seq_len=32)


def test_phi3_fused_layers_keep_one_factor_pair_per_projection_through_save_and_export(phi3_oats):
    """Fused qkv / gate_up: per-projection factors survive save, reload and ONNX export."""
    out, _, manifest = phi3_oats
    model = load_model(str(out)).model
    config = model.config
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    q_rows = config.num_attention_heads * config.hidden_size // config.num_attention_heads
    kv_rows = config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    assert [rows for rows, _ in attention.qkv_proj.parts] == [q_rows, kv_rows, kv_rows]
    assert [rank for _, rank in attention.qkv_proj.parts] == [budget(r, config.hidden_size, 0.5, 0.25).rank
                                                              for r in (q_rows, kv_rows, kv_rows)]
    assert [rows for rows, _ in mlp.gate_up_proj.parts] == [config.intermediate_size] * 2
    factors = {k: v for k, v in manifest["weights"].items() if k.startswith("layers.0.self_attn.qkv_proj.up.")}
    assert len(factors) == 3 and all(v["pattern"] == "low-rank" and v["projection"] in (0, 1, 2)
                                     for v in factors.values())


def test_stacked_factors_are_the_same_decomposition_in_one_pair(tiny):
    from pipeline.prune import CalibrationConfig, prune_model

    layers = {}
    for split in (True, False):
        loaded = tiny("tiny-phi3")
        prune_model(loaded, OATSPruner(iterations=3, per_projection_factors=split), 0.5,
                    CalibrationConfig(samples=2, seq_len=32))
        layers[split] = loaded.model.model.layers[0].self_attn.qkv_proj
    per_projection, stacked = layers[True], layers[False]
    assert len(per_projection.parts) == 3 and len(stacked.parts) == 1 and stacked.rank == per_projection.rank
    torch.testing.assert_close(stacked.dense_weight(), per_projection.dense_weight())
    assert stacked.up.weight.numel() > sum(up.weight.numel() for up in per_projection.up)  # the block-diagonal zeros


@pytest.fixture(scope="module")
def oats_artifact(oats_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("oats_art") / "tiny"
    export_artifact(str(oats_dir), out, parity_windows=1, parity_seq_len=32)
    return out


def test_export_keeps_separate_matmuls_and_marks_factors(oats_artifact, oats_dir):
    manifest = json.loads((oats_artifact / MANIFEST).read_text())
    weights = manifest["weights"]
    q = "layers.0.self_attn.q_proj"
    rank = load_model(str(oats_dir)).model.model.layers[0].self_attn.q_proj.rank
    assert weights[f"{q}.sparse.weight.T"]["role"] == "sparse term"
    assert weights[f"{q}.sparse.weight.T"]["sparsity"] == pytest.approx(0.625, abs=0.01)
    for factor in ("down", "up"):
        assert weights[f"{q}.{factor}.weight.T"]["pattern"] == "low-rank"
        assert weights[f"{q}.{factor}.weight.T"]["rank"] == rank
    assert all(v["passed"] for k, v in manifest["parity"].items() if k != "tolerance")


def _deepsparse_matches_onnxruntime(model_dir, artifact) -> float:
    """Run the decode graph in both runtimes on the same feeds; DeepSparse's share of native ops."""
    geometry = KVGeometry.of(load_model(str(model_dir)).model)
    feeds = {k: v.numpy() for k, v in decode_inputs(geometry, seq=1, past=12).items()}
    result = deepsparse_runner.run_deepsparse(artifact / "model.onnx", feeds, want_outputs=True, repetitions=1)
    for got, want in zip(result.outputs, run(session(artifact / "model.onnx"), feeds)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    return result.fraction_of_supported_ops


@needs_deepsparse
def test_folded_model_runs_in_deepsparse_like_onnxruntime(oats_artifact, oats_dir):
    native = _deepsparse_matches_onnxruntime(oats_dir, oats_artifact)
    assert native > 0.85, native


@needs_deepsparse
def test_per_projection_factors_run_in_deepsparse_like_onnxruntime(phi3_oats):
    out, artifact, _ = phi3_oats
    native = _deepsparse_matches_onnxruntime(out, artifact)
    assert native > 0.6, native  # Phi-3 graphs: ~67-71% native, dense or pruned (latency_oats_phi3_proxy)
