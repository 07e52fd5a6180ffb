"""Calibration shared by 2 gloo ranks on loopback gives the weights of one process, streamed too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.models import load_model, load_streamed
from pipeline.owl import OWLConfig
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner
from tests.test_sequential import lm_batches_for

CASES = {"owl-wanda": ("wanda", OWLConfig(m=5.0, lam=0.05)), "sparsegpt": ("sparsegpt", None)}


def _prune(case: str) -> tuple[dict[str, torch.Tensor], list[float]]:
    method, owl = CASES[case]
    loaded = load_model("tiny-llama")
    batches = lm_batches_for(loaded, samples=8, seq_len=32, batch_size=2)  # 4 batches: 2 per rank
    result = prune_model(loaded, build_pruner(method), 0.5, CalibrationConfig(), owl=owl, batches=batches)
    return loaded.model.state_dict(), result.block_sparsity


def _prune_streamed(out: str) -> bool:
    """OWL+Wanda on the streamed path; rank 0 saves. Whether this rank spooled blocks."""
    loaded = load_streamed("tiny-llama")
    batches = lm_batches_for(loaded, samples=8, seq_len=32, batch_size=2)
    result = prune_model(loaded, build_pruner("wanda"), 0.5, CalibrationConfig(), owl=CASES["owl-wanda"][1],
                         batches=batches)
    spooled = loaded.streamed.spool is not None
    if dist.get_rank() == 0:
        save_pruned(loaded, build_record(loaded, result), Path(out))
    return spooled


def _rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.save({**{case: _prune(case) for case in CASES}, "spooled": _prune_streamed(f"{out}-streamed")},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_prune_as_one_process(tmp_path):
    """OWL+Wanda (an observing pass, then pruning) and SparseGPT (Gram matrices). Tolerance: the
    ranks' partial sums are added in another order than one process adds its batches, so the
    statistics differ by float rounding; masks must agree on all but 1e-3 of the weights and
    the kept weights to 1e-4, OWL's block sparsities to 1e-6; both ranks end with the same bytes."""
    out = str(tmp_path / "pruned")
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for case in CASES:
        alone, sparsities = _prune(case)
        (shared, shared_sparsities), (other, _) = ranks[0][case], ranks[1][case]
        assert all(torch.equal(shared[k], other[k]) for k in alone), case
        assert shared_sparsities == pytest.approx(sparsities, abs=1e-6), case
        for name, weight in alone.items():
            disagree = (weight == 0) != (shared[name] == 0)
            assert float(disagree.float().mean()) <= 1e-3, (case, name)
            both = (weight != 0) & (shared[name] != 0)
            assert torch.allclose(weight[both], shared[name][both], atol=1e-4, rtol=0), (case, name)
    # Streamed, only rank 0 spools and writes; the weights are the in-memory ranks' own.
    assert [r["spooled"] for r in ranks] == [True, False]
    streamed = load_model(f"{out}-streamed").model.state_dict()
    assert all(torch.equal(streamed[k], ranks[0]["owl-wanda"][0][k]) for k in streamed)
