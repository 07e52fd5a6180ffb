"""Structured baseline: keep the units whose consumer columns carry the most signal.

A unit's score is ``||W[:, unit]||_F · sqrt(E[||x_unit||²])``: the weight norm of its consumer
columns times the typical size of its inputs (Wanda's idea, per structure; ``activations=False``
gives the plain magnitude score). No refit: the kept columns stay as they were. This is the
baseline OSSCAR's search and refit must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.pruners.structured import Choice, StructuredPruner
from pipeline.statistics import LayerStatistics


@dataclass
class StructuredNormPruner(StructuredPruner):
    activations: bool = True

    name = "structured-norm"

    def choose(self, weight: torch.Tensor, stats: LayerStatistics, unit_size: int, keep: int, kind: str) -> Choice:
        units = weight.shape[1] // unit_size
        score = weight.pow(2).sum(dim=0)
        if self.activations:
            score = score * stats.second_moment
        score = score.reshape(units, unit_size).sum(dim=1)
        return Choice(torch.topk(score, keep).indices.sort().values)

    def config(self) -> dict:
        return {**super().config(), "structures": self.structures, "activations": self.activations}
