import pytest
import torch

from pipeline.errors import SparseDeployError
from pipeline.masks import Granularity, SparsityPattern, nm_mask, prune_mask, split_count


def test_row_granularity_prunes_exact_count_in_every_row_even_with_ties():
    scores = torch.randint(0, 3, (17, 40)).float()  # many ties
    mask = prune_mask(scores, 0.55, SparsityPattern(), Granularity.ROW)
    assert (mask.sum(dim=1) == round(0.55 * 40)).all()


def test_layer_granularity_prunes_exact_count_and_lowest_scores():
    scores = torch.randn(13, 29)
    mask = prune_mask(scores, 0.7, SparsityPattern(), Granularity.LAYER)
    assert int(mask.sum()) == round(0.7 * scores.numel())
    assert scores[mask].max() <= scores[~mask].min()


@pytest.mark.parametrize("text", ["2:4", "1:4", "2:8", "3:5"])
def test_nm_mask_keeps_exactly_n_of_every_m(text):
    pattern = SparsityPattern.parse(text)
    scores = torch.randn(9, pattern.m * 6)
    mask = nm_mask(scores, pattern)
    kept = (~mask).reshape(9, -1, pattern.m).sum(dim=-1)
    assert (kept == pattern.n).all()
    # the kept ones are the largest of their group
    groups, gmask = scores.reshape(9, -1, pattern.m), mask.reshape(9, -1, pattern.m)
    assert (groups.masked_fill(gmask, float("inf")).amin(-1) >= groups.masked_fill(~gmask, -float("inf")).amax(-1)).all()


@pytest.mark.parametrize("bad", ["4:2", "0:4", "2-4", "abc", "2:2"])
def test_bad_patterns_are_clear_errors(bad):
    with pytest.raises(SparseDeployError):
        SparsityPattern.parse(bad)


def test_pattern_width_check_names_the_layer():
    with pytest.raises(SparseDeployError, match="q_proj"):
        SparsityPattern.parse("2:4").check_width(70, "q_proj")


def test_split_count_is_exact_and_proportional():
    counts = split_count(1000, [128, 128, 128, 64])
    assert sum(counts) == 1000
    assert counts[3] == pytest.approx(1000 * 64 / 448, abs=1)
