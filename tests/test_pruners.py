import pytest
import torch

from pipeline.errors import SparseDeployError
from pipeline.masks import SparsityPattern
from pipeline.pruners import build_pruner
from pipeline.pruners.magnitude import MagnitudePruner
from pipeline.pruners.sparsegpt import SparseGPTPruner
from pipeline.pruners.wanda import WandaPruner
from tests.conftest import outlier_inputs, reconstruction_error, stats_of

D_OUT, D_IN = 48, 256


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(1)
    weight = torch.randn(D_OUT, D_IN) / D_IN**0.5
    return weight, stats_of(outlier_inputs(4096, D_IN))


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.33])
def test_unstructured_zero_count_is_exact_per_layer(layer, method, sparsity):
    weight, stats = layer
    pruned = build_pruner(method).prune_weight(weight, stats, sparsity)
    assert int((pruned == 0).sum()) == round(sparsity * weight.numel())


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.33])
def test_wanda_zero_count_is_exact_per_row(layer, sparsity):
    weight, stats = layer
    pruned = WandaPruner().prune_weight(weight, stats, sparsity)
    assert ((pruned == 0).sum(dim=1) == round(sparsity * D_IN)).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("text", ["2:4", "4:8"])
def test_nm_groups_are_valid(layer, method, text):
    weight, stats = layer
    pattern = SparsityPattern.parse(text)
    pruned = build_pruner(method, pattern=text).prune_weight(weight, stats, pattern.sparsity)
    nonzero = (pruned != 0).reshape(D_OUT, -1, pattern.m).sum(-1)
    assert (nonzero == pattern.n).all()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(layer, pattern):
    weight, stats = layer
    errors = {
        m: reconstruction_error(weight, build_pruner(m, pattern=pattern).prune_weight(weight, stats, 0.5), stats)
        for m in ("magnitude", "wanda", "sparsegpt")
    }
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_wanda_with_uniform_inputs_is_rowwise_magnitude(layer):
    weight, _ = layer
    flat = stats_of(torch.ones(10, D_IN), gram=False)
    assert torch.equal(WandaPruner().prune_weight(weight, flat, 0.5),
                       MagnitudePruner(granularity="row").prune_weight(weight, flat, 0.5))


def test_sparsegpt_at_zero_sparsity_keeps_weights(layer):
    weight, stats = layer
    assert torch.equal(SparseGPTPruner().prune_weight(weight, stats, 0.0), weight)


def test_sparsegpt_zeroes_dead_inputs():
    torch.manual_seed(0)
    x = outlier_inputs(512, 64)
    x[:, 5] = 0
    pruned = SparseGPTPruner().prune_weight(torch.randn(8, 64), stats_of(x), 0.25)
    assert (pruned[:, 5] == 0).all()


def test_sparsegpt_block_size_adapts_to_nm():
    assert SparseGPTPruner(pattern="2:6", block_size=128).block_size % 6 == 0


def test_unknown_method_and_bad_parameters_are_clear_errors():
    with pytest.raises(SparseDeployError, match="unknown method"):
        build_pruner("nope")
    with pytest.raises(SparseDeployError, match="dampening"):
        build_pruner("sparsegpt", dampening=2.0)
    with pytest.raises(SparseDeployError, match="(?i)granularity"):
        build_pruner("magnitude", granularity="column")
