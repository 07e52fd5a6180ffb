"""Magnitude pruning: drop the smallest |W|. Needs no calibration statistics.

Counted over the whole layer by default, as in the OWL and Wanda papers' baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.masks import Granularity, prune_mask
from pipeline.pruners.base import WeightPruner
from pipeline.statistics import LayerStatistics


@dataclass
class MagnitudePruner(WeightPruner):
    granularity: Granularity = Granularity.LAYER

    name = "magnitude"
    statistics = frozenset()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.granularity = Granularity(self.granularity)

    def prune_weight(self, weight: torch.Tensor, stats: LayerStatistics | None, sparsity: float) -> torch.Tensor:
        return weight.masked_fill(prune_mask(weight.abs(), sparsity, self.pattern, self.granularity), 0.0)

    def config(self) -> dict:
        return {**super().config(), "granularity": self.granularity.value}
