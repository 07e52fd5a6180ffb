"""OSSCAR and structured slicing: the layer solver's exact updates, the local search's
monotonicity, sliced == masked, GQA bookkeeping, reload/export, clear errors."""

import itertools
from dataclasses import dataclass

import pytest
import torch

from export.graphs import KVGeometry
from pipeline.errors import SparseDeployError
from pipeline.group_selection import GroupSelector
from pipeline.models import load_model
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner
from pipeline.pruners.structured import Choice, StructuredPruner
from tests.conftest import outlier_inputs, stats_of

CALIBRATION = CalibrationConfig(samples=4, seq_len=32)


@pytest.fixture(scope="module")
def selector():
    torch.manual_seed(0)
    x = outlier_inputs(3000, 48) * (torch.rand(48) * 3)
    return GroupSelector(torch.randn(16, 48), x.T @ x, group_size=2)


def _support(groups, removed):
    kept = torch.ones(groups, dtype=torch.bool)
    kept[removed] = False
    return kept


def test_removal_costs_and_return_gains_are_exact(selector):
    kept = torch.ones(selector.groups, dtype=torch.bool)
    wt, base = selector.refit(kept)
    costs = selector._removal_costs(wt, selector._inverse_on(kept), kept)
    for g in (0, 7, 23):
        assert float(costs[g]) == pytest.approx(selector.refit(_support(selector.groups, [g]))[1] - base, rel=1e-6)
    partial = _support(selector.groups, [1, 5, 9])
    gains = selector._return_gains(partial)
    _, partial_obj = selector.refit(partial)
    for g in (1, 5, 9):
        back = partial.clone()
        back[g] = True
        assert float(gains[g]) == pytest.approx(partial_obj - selector.refit(back)[1], rel=1e-6)


def test_refit_is_the_least_squares_optimum(selector):
    kept = _support(selector.groups, list(range(0, 24, 3)))
    wt, obj = selector.refit(kept)
    support = wt.abs().sum(dim=1) > 0
    for _ in range(5):
        nudge = torch.randn_like(wt) * 1e-3 * support[:, None]
        assert selector.objective(wt + nudge) > obj


@pytest.mark.parametrize("keep", [6, 12, 18])
def test_local_search_never_increases_the_objective(selector, keep):
    greedy = selector.select(keep, step=2)
    searched = selector.select(keep, step=2, iterations=30, swap=4)
    assert searched.objective <= greedy.objective
    assert all(b < a for a, b in zip(searched.history, searched.history[1:]))
    assert searched.history[0] == pytest.approx(greedy.objective)
    excess = searched.excess()  # reconstruction error above the all-kept floor, greedy start vs final
    assert 0 <= excess["final"] <= excess["greedy"] and excess["swaps"] == len(searched.history) - 1
    assert int(searched.kept.sum()) == keep
    assert (searched.weight[:, ~searched.kept.repeat_interleave(2)] == 0).all()


def test_small_choices_report_the_exact_optimum():
    torch.manual_seed(2)
    x = outlier_inputs(2000, 24, seed=2) * (torch.rand(24) * 3)
    small = GroupSelector(torch.randn(8, 24), x.T @ x, group_size=4)  # 6 groups: C(6, 3) = 20 supports
    found = small.select(3, step=1, iterations=30, swap=2)
    best = min(small.refit(_support(6, list(removed)))[1] for removed in itertools.combinations(range(6), 3))
    assert found.optimum == pytest.approx(best) and found.objective >= best - 1e-9 * abs(best)
    excess = found.excess()
    assert 0 <= excess["optimum"] <= excess["final"] <= excess["greedy"]
    assert small.select(1, step=1).optimum is not None  # keep 1 of 6: 6 supports
    large = GroupSelector(torch.randn(8, 96), torch.eye(96), group_size=1).select(48, 8)  # C(96, 48) supports
    assert large.optimum is None and "optimum" not in large.excess()


def test_osscar_beats_the_norm_baseline_on_its_objective():
    torch.manual_seed(1)
    x = outlier_inputs(3000, 48, seed=1) * (torch.rand(48) * 3)
    weight = torch.randn(16, 48)
    selector = GroupSelector(weight, x.T @ x, group_size=2)
    norm = build_pruner("structured-norm").choose(weight, stats_of(x, gram=False), 2, 12, "mlp")
    masked = weight.T.double().clone()
    masked[~torch.isin(torch.arange(48) // 2, norm.kept)] = 0
    assert norm.consumer_weight is None  # the baseline does not refit
    assert selector.select(12, 2, 30, 4).objective < selector.objective(masked)


@dataclass
class KeepEvenUnits(StructuredPruner):
    """A fixed choice (even units), so the masked twin can be built independently."""

    name = "keep-even"

    def choose(self, weight, stats, unit_size, keep, kind):
        return Choice(torch.arange(0, 2 * keep, 2))


def _mask_like_keep_even(model, spec, structures):
    """Zero, in the unsliced model, what KeepEvenUnits slices out (odd units)."""
    from pipeline.architectures import transformer_blocks

    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    rep = config.num_attention_heads // (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    with torch.no_grad():
        for block in transformer_blocks(model):
            if "mlp" in structures:
                consumer = block.get_submodule(spec.mlp.consumer)
                odd = torch.arange(1, consumer.in_features, 2)
                consumer.weight[:, odd] = 0
            if "heads" in structures:
                consumer = block.get_submodule(spec.attention.consumer)
                unit = rep * head_dim
                odd_units = torch.arange(1, consumer.in_features // unit, 2)
                cols = (odd_units[:, None] * unit + torch.arange(unit)).reshape(-1)
                consumer.weight[:, cols] = 0


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-phi3", "tiny-vit", "tiny-dinov2"])
@pytest.mark.parametrize("structures", ["mlp", "heads", "mlp+heads"])
def test_sliced_model_equals_the_masked_model(name, structures):
    sliced, masked = load_model(name), load_model(name)
    vision = sliced.spec.kind.value == "vision"
    batches = [{"pixel_values": torch.randn(2, 3, 32, 32)}] if vision else None
    prune_model(sliced, KeepEvenUnits(structures=structures), 0.5, CALIBRATION, batches=batches)
    _mask_like_keep_even(masked.model, masked.spec, structures)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)} if vision else {"input_ids": torch.randint(3, 1000, (2, 12))}
    with torch.no_grad():
        a, b = sliced.model(**inputs), masked.model(**inputs)
    out = "last_hidden_state" if vision else "logits"
    torch.testing.assert_close(a[out], b[out], rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in sliced.model.parameters()) < sum(p.numel() for p in masked.model.parameters())


def test_gqa_removes_whole_kv_groups_and_records_the_geometry(tmp_path):
    loaded = load_model("tiny-llama")  # 4 query heads over 2 KV heads, head_dim 16
    result = prune_model(loaded, build_pruner("osscar", structures="heads"), 0.5, CALIBRATION)
    attention = loaded.model.model.layers[0].self_attn
    assert attention.q_proj.out_features == 32 and attention.k_proj.out_features == 16
    assert attention.v_proj.out_features == 16 and attention.o_proj.in_features == 32
    record = build_record(loaded, result)
    assert [d["block"] for d in record["diagnostics"]] == [0, 1, 2]  # the solver's objectives, per block
    assert all(0 <= d["heads"]["final"] <= d["heads"]["greedy"] for d in record["diagnostics"])
    save_pruned(loaded, record, tmp_path / "m")
    reloaded = load_model(str(tmp_path / "m"))
    assert KVGeometry.of(reloaded.model).kv_heads == (1, 1, 1)
    ids = torch.randint(3, 1000, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, loaded.model(ids).logits)
        out = reloaded.model.generate(ids, max_new_tokens=3, do_sample=False)  # KV cache with sliced heads
    assert out.shape == (1, 13)


def test_osscar_then_oats_saves_and_reloads(tmp_path):
    loaded = load_model("tiny-llama")
    prune_model(loaded, build_pruner("osscar", structures="mlp"), 0.5, CALIBRATION)
    result = prune_model(loaded, build_pruner("oats", iterations=3), 0.5, CALIBRATION)
    save_pruned(loaded, build_record(loaded, result), tmp_path / "m")
    reloaded = load_model(str(tmp_path / "m"))
    down = reloaded.model.model.layers[0].mlp.down_proj
    assert (down.in_features, down.out_features) == (64, 64) and down.rank > 0
    ids = torch.randint(3, 1000, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, loaded.model(ids).logits)


def test_bad_settings_are_clear_errors():
    loaded = load_model("tiny-llama")  # 2 KV groups
    with pytest.raises(SparseDeployError, match="remove them all"):
        prune_model(loaded, build_pruner("osscar", structures="heads"), 0.8, CALIBRATION)
    with pytest.raises(SparseDeployError, match="structures"):
        build_pruner("osscar", structures="layers")
    with pytest.raises(SparseDeployError, match=r"\[0, 1\)"):
        prune_model(loaded, build_pruner("osscar"), 1.0, CALIBRATION)
    with pytest.raises(SparseDeployError, match="iterations"):
        build_pruner("osscar", iterations=-1)
