"""Wanda (Sun et al., 2023): score ``|W_ij| · ||X_j||``, drop the lowest per output row.

The input norm is the square root of the per-channel second moment; the constant factor
between ``||X_j||`` and ``sqrt(E[x_j^2])`` does not change a per-row ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.masks import Granularity, prune_mask
from pipeline.pruners.base import WeightPruner
from pipeline.statistics import LayerStatistics, Statistic


def wanda_scores(weight: torch.Tensor, stats: LayerStatistics) -> torch.Tensor:
    """``|W| · sqrt(E[x^2])``: also OWL's outlier score."""
    return weight.abs() * stats.second_moment.sqrt().unsqueeze(0)


@dataclass
class WandaPruner(WeightPruner):
    name = "wanda"
    statistics = frozenset({Statistic.SECOND_MOMENT})

    def prune_weight(self, weight: torch.Tensor, stats: LayerStatistics, sparsity: float) -> torch.Tensor:
        mask = prune_mask(wanda_scores(weight, stats), sparsity, self.pattern, Granularity.ROW)
        return weight.masked_fill(mask, 0.0)
