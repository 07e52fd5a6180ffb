import pytest
import torch

from pipeline.errors import SparseDeployError
from pipeline.owl import OWLConfig, measure_outlier_ratios, outlier_ratio, owl_sparsities
from pipeline.pruners.wanda import wanda_scores
from tests.test_sequential import full_forward_stats, lm_batches_for

LOD = [0.004, 0.012, 0.007, 0.02, 0.009, 0.011]


@pytest.mark.parametrize("target", [0.5, 0.7])
@pytest.mark.parametrize("lam", [0.08, 0.02])
def test_mean_is_the_target_and_spread_is_two_lambda(target, lam):
    s = torch.tensor(owl_sparsities(LOD, target, lam), dtype=torch.float64)
    assert float(s.mean()) == pytest.approx(target, abs=1e-12)
    assert float(s.max() - s.min()) == pytest.approx(2 * lam, abs=1e-12)


def test_more_outliers_get_lower_sparsity():
    s = owl_sparsities(LOD, 0.7, 0.08)
    order_lod = sorted(range(len(LOD)), key=LOD.__getitem__)
    order_sparsity = sorted(range(len(LOD)), key=lambda i: -s[i])
    assert order_lod == order_sparsity


def test_equal_outlier_ratios_give_uniform_sparsity():
    assert owl_sparsities([0.01] * 4, 0.6, 0.08) == pytest.approx([0.6] * 4)


def test_sparsities_outside_unit_interval_are_refused():
    with pytest.raises(SparseDeployError, match="smaller lambda"):
        owl_sparsities([0.0, 1.0], 0.05, 0.08)


def test_outlier_ratio_counts_pooled_entries_above_m_times_mean():
    scores = [torch.ones(99), torch.tensor([1000.0])]  # pooled mean 10.99
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.01)
    assert outlier_ratio(scores, 100.0) == 0.0


def test_bad_config_is_a_clear_error():
    with pytest.raises(SparseDeployError):
        OWLConfig(m=0)
    with pytest.raises(SparseDeployError):
        OWLConfig(lam=0.7)


def test_measured_ratios_match_a_full_forward_on_the_dense_model(tiny):
    loaded = tiny("tiny-llama")
    batches = lm_batches_for(loaded, samples=4, seq_len=32)
    ratios = measure_outlier_ratios(loaded.model, batches, m=3.0)
    reference = full_forward_stats(loaded.model, batches)
    for i, block in enumerate(loaded.model.model.layers):
        scores = [wanda_scores(layer.weight.detach(), reference[f"model.layers.{i}.{name}"])
                  for name, layer in block.named_modules() if isinstance(layer, torch.nn.Linear)]
        assert ratios[i] == pytest.approx(outlier_ratio(scores, 3.0))
