"""OSSCAR and structured slicing: the layer solver's exact updates, the local search's
monotonicity, sliced == masked, GQA bookkeeping, reload/export, clear errors."""

import copy
import itertools
from dataclasses import dataclass, replace

import pytest
import torch

from export.artifact import export_artifact
from export.graphs import KVGeometry
from pipeline.errors import SparseDeployError
from pipeline.models import load_model
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner
from pipeline.pruners.osscar import GroupSelector
from pipeline.pruners.structured import Choice, StructuredPruner, Units
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


def _objective_up_to_a_constant(x, reference, weight, w, lam):
    """½·mean||x wᵀ - reference Wᵀ||² + ½·lam·||w - W||² (the constant: terms without w)."""
    fit = (x @ w.T - reference @ weight.T).pow(2).sum() / len(x)
    return float(0.5 * fit + 0.5 * lam * (w - weight).pow(2).sum())


@pytest.mark.parametrize("with_reference", [False, True])
def test_the_objective_is_the_reconstruction_of_its_target_with_a_ridge_towards_the_dense_weight(with_reference):
    """Pins the objective's two terms: the ridge is in H *and* in the target term (as the paper and the
    official code write it), so it pulls towards W0, not towards zero; with a reference's inputs the
    target is the reference's output."""
    torch.manual_seed(5)
    x = outlier_inputs(2000, 12, seed=5).double()
    reference = x + 0.3 * torch.randn_like(x) if with_reference else x
    weight = torch.randn(6, 12, dtype=torch.float64)
    gram, cross = x.T @ x / len(x), x.T @ reference / len(x)
    selector = GroupSelector(weight, gram, group_size=3, ridge=0.05, cross=cross if with_reference else None)
    lam = 0.05 * float(torch.diag(gram).mean())
    a, b = torch.randn_like(weight), torch.randn_like(weight)
    assert selector.objective(a.T) - selector.objective(b.T) == pytest.approx(
        _objective_up_to_a_constant(x, reference, weight, a, lam)
        - _objective_up_to_a_constant(x, reference, weight, b, lam), rel=1e-9)
    refit = selector.refit(torch.ones(4, dtype=torch.bool))[0].T
    if not with_reference:  # nothing removed, nothing to correct: the dense weight itself
        torch.testing.assert_close(refit, weight)
    else:  # the unconstrained least-squares fit of the reference's output
        eye = torch.eye(12, dtype=torch.float64)
        torch.testing.assert_close(refit, weight @ (cross + lam * eye).T @ torch.linalg.inv(gram + lam * eye))


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


@pytest.mark.parametrize("group_size, bucket", [(1, None), (2, None), (4, 3)])
def test_swap_deltas_are_the_exact_objective_change_of_every_single_swap(group_size, bucket):
    torch.manual_seed(6)
    x = outlier_inputs(3000, 36, seed=6) * (torch.rand(36) * 3)
    selector = GroupSelector(torch.randn(10, 36), x.T @ x, group_size=group_size, bucket=bucket)
    kept = (torch.arange(selector.groups) % 3 == 0) if bucket else (torch.arange(selector.groups) % 2 == 0)
    deltas, base = selector.swap_deltas(kept), selector.refit(kept)[1]
    for i, j in itertools.product(range(selector.groups), repeat=2):
        if kept[i] and not kept[j] and i // selector.bucket == j // selector.bucket:
            swapped = kept.clone()
            swapped[i], swapped[j] = False, True
            assert float(deltas[i, j]) == pytest.approx(selector.refit(swapped)[1] - base, rel=1e-6, abs=1e-9)
        else:  # not a swap, or across buckets (would leave the buckets unequal)
            assert deltas[i, j] == torch.inf


@pytest.mark.parametrize("keep", [6, 12, 18])
def test_the_exact_search_ends_at_a_single_swap_local_optimum(selector, keep):
    start = torch.arange(selector.groups) < keep  # an arbitrary support: greedy's is already locally optimal here
    kept, history = selector.exact_search(start, iterations=200)
    assert len(history) > 1 and all(b < a for a, b in zip(history, history[1:]))
    assert history[0] == pytest.approx(selector.refit(start)[1]) and int(kept.sum()) == keep
    _, obj = selector.refit(kept)
    for i, j in itertools.product(kept.nonzero().squeeze(1).tolist(), (~kept).nonzero().squeeze(1).tolist()):
        swapped = kept.clone()
        swapped[i], swapped[j] = False, True
        assert selector.refit(swapped)[1] >= obj - 1e-9 * abs(obj)  # brute force: no single swap improves
    greedy = selector.select(keep, step=4)
    selected = selector.select(keep, step=4, iterations=200, search="exact")  # through select: starts from greedy
    assert selected.history[0] == pytest.approx(greedy.objective) and selected.objective <= greedy.objective


def test_osscar_beats_the_norm_baseline_on_its_objective():
    torch.manual_seed(1)
    x = outlier_inputs(3000, 48, seed=1) * (torch.rand(48) * 3)
    weight = torch.randn(16, 48)
    selector = GroupSelector(weight, x.T @ x, group_size=2)
    norm = build_pruner("structured-norm").choose(weight, stats_of(x, gram=False), Units(2, 24, 12, 24), "mlp")
    masked = weight.T.double().clone()
    masked[~torch.isin(torch.arange(48) // 2, norm.kept)] = 0
    assert norm.consumer_weight is None  # the baseline does not refit
    assert selector.select(12, 2, 30, 4).objective < selector.objective(masked)


def test_buckets_each_keep_the_same_count_and_the_search_stays_between_greedy_and_optimum():
    """Query heads within KV groups: every bucket keeps ``keep`` units."""
    torch.manual_seed(3)
    x = outlier_inputs(3000, 36, seed=3) * (torch.rand(36) * 3)
    selector = GroupSelector(torch.randn(16, 36), x.T @ x, group_size=4, bucket=3)  # 9 groups, 3 buckets of 3
    greedy = selector.select(1, step=2)
    found = selector.select(1, step=2, iterations=30, swap=3)
    brute = min(selector.refit(torch.nn.functional.one_hot(torch.tensor([0, 3, 6]) + torch.tensor(pick), 9).sum(0)
                               .bool())[1] for pick in itertools.product(range(3), repeat=3))
    for selection in (greedy, found):
        assert selection.kept.reshape(3, 3).sum(dim=1).tolist() == [1, 1, 1]
    assert found.optimum == pytest.approx(brute)
    assert brute - 1e-9 * abs(brute) <= found.objective <= greedy.objective
    assert all(b < a for a, b in zip(found.history, found.history[1:]))
    with pytest.raises(ValueError, match="per bucket"):
        selector.select(2 + 2, step=1)
    with pytest.raises(ValueError, match="does not divide"):
        GroupSelector(torch.randn(4, 36), torch.eye(36), group_size=4, bucket=2)


def test_the_norm_baseline_keeps_the_best_units_of_each_bucket():
    torch.manual_seed(4)
    x = torch.randn(500, 24)
    weight = torch.randn(8, 24)
    stats = stats_of(x, gram=False)
    kept = build_pruner("structured-norm").choose(weight, stats, Units(4, 6, 2, 3), "heads").kept
    score = (weight.pow(2).sum(dim=0) * stats.second_moment).reshape(6, 4).sum(dim=1)
    expected = [b * 3 + i for b in range(2) for i in torch.topk(score[b * 3:(b + 1) * 3], 2).indices.tolist()]
    assert kept.tolist() == sorted(expected)


@dataclass
class KeepEvenUnits(StructuredPruner):
    """A fixed choice (even units), so the masked twin can be built independently."""

    name = "keep-even"

    def choose(self, weight, stats, units, kind):
        return Choice(torch.arange(0, 2 * units.keep * (units.count // units.bucket), 2))


def _mask_like_keep_even(model, spec, structures, query_heads=False):
    """Zero, in the unsliced model, what KeepEvenUnits slices out (odd units)."""
    from pipeline.architectures import transformer_blocks

    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    rep = 1 if query_heads else \
        config.num_attention_heads // (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
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


@pytest.mark.parametrize("head_units, kv_heads", [("kv_groups", 1), ("query_heads", 2)])
def test_gqa_heads_slice_reload_generate_and_export(tmp_path, head_units, kv_heads):
    """tiny-llama: 4 query heads over 2 KV heads, head_dim 16. Removing half the heads takes a
    whole KV group (kv_groups) or one query head of each group, keeping both KV heads (query_heads)."""
    loaded = load_model("tiny-llama")
    result = prune_model(loaded, build_pruner("osscar", structures="heads", head_units=head_units), 0.5, CALIBRATION)
    attention = loaded.model.model.layers[0].self_attn
    assert attention.q_proj.out_features == 32 and attention.o_proj.in_features == 32
    assert attention.k_proj.out_features == attention.v_proj.out_features == 16 * kv_heads
    assert attention.num_key_value_groups == 2 // kv_heads
    record = build_record(loaded, result)
    assert record["recipe"]["head_units"] == head_units
    assert [d["block"] for d in record["diagnostics"]] == [0, 1, 2]  # the solver's objectives, per block
    assert all(0 <= d["heads"]["final"] <= d["heads"]["greedy"] for d in record["diagnostics"])
    save_pruned(loaded, record, tmp_path / "m")
    reloaded = load_model(str(tmp_path / "m"))
    assert KVGeometry.of(reloaded.model).kv_heads == (kv_heads,) * 3
    ids = torch.randint(3, 1000, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, loaded.model(ids).logits)
        out = reloaded.model.generate(ids, max_new_tokens=3, do_sample=False)  # KV cache with sliced heads
    assert out.shape == (1, 13)
    manifest = export_artifact(str(tmp_path / "m"), tmp_path / "art", parity_windows=1, parity_seq_len=32)
    assert all(v["passed"] for k, v in manifest["parity"].items() if k != "tolerance")


def _phi3_with_gqa():
    """tiny-phi3's fused qkv with 4 query heads over 2 KV heads (Phi-3-medium's layout)."""
    from transformers import Phi3ForCausalLM

    base = load_model("tiny-phi3")
    config = copy.deepcopy(base.model.config)
    config.num_key_value_heads = 2
    torch.manual_seed(0)
    return replace(base, model=Phi3ForCausalLM(config).eval())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-phi3-gqa"])
def test_query_heads_within_groups_slice_like_masking(name):
    def load():
        return _phi3_with_gqa() if name == "tiny-phi3-gqa" else load_model(name)

    sliced, masked = load(), load()
    prune_model(sliced, KeepEvenUnits(structures="heads", head_units="query_heads"), 0.5, CALIBRATION)
    _mask_like_keep_even(masked.model, masked.spec, "heads", query_heads=True)
    ids = torch.randint(3, 1000, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(sliced.model(ids).logits, masked.model(ids).logits, rtol=1e-4, atol=1e-4)
    attention = sliced.model.model.layers[0].self_attn
    assert attention.num_key_value_groups == 1  # 2 query heads left, one per KV head


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


def test_a_dense_target_runs_the_reference_stream_and_says_so():
    loaded = load_model("tiny-llama")
    pruner = build_pruner("osscar", structures="mlp+heads", target="dense")
    result = prune_model(loaded, pruner, 0.5, CALIBRATION)
    assert build_record(loaded, result)["recipe"]["target"] == "dense"
    assert loaded.model.model.layers[1].mlp.down_proj.in_features == 64  # of 128 neurons
    assert len(result.diagnostics) == 3
    assert all(0 <= d["mlp"]["final"] <= d["mlp"]["greedy"] for d in result.diagnostics)


def test_the_exact_search_prunes_end_to_end_and_says_so():
    loaded = load_model("tiny-llama")
    result = prune_model(loaded, build_pruner("osscar", structures="mlp+heads", search="exact", iterations=50), 0.5,
                         CALIBRATION)
    assert build_record(loaded, result)["recipe"]["search"] == "exact"
    assert loaded.model.model.layers[0].mlp.down_proj.in_features == 64
    assert all(0 <= d[kind]["final"] <= d[kind]["greedy"] for d in result.diagnostics for kind in ("mlp", "heads"))


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
    with pytest.raises(SparseDeployError, match="head_units"):
        build_pruner("osscar", head_units="layers")
    with pytest.raises(SparseDeployError, match="target must be one of pruned, dense"):
        build_pruner("osscar", target="teacher")
    with pytest.raises(SparseDeployError, match="search must be one of batch, exact"):
        build_pruner("osscar", search="annealing")
    with pytest.raises(SparseDeployError, match="grouped-query attention"):  # OPT: one KV head per query head
        prune_model(load_model("tiny-opt"), build_pruner("osscar", structures="heads", head_units="query_heads"), 0.5,
                    CALIBRATION)
    with pytest.raises(SparseDeployError, match="remove them all"):  # 2 query heads per KV group: 75% leaves none
        prune_model(loaded, build_pruner("osscar", structures="heads", head_units="query_heads"), 0.75, CALIBRATION)
