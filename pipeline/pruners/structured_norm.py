"""Structured baseline: keep the units whose consumer columns carry the most signal.

A unit's score is ``||W[:, unit]||_F · sqrt(E[||x_unit||²])``: the weight norm of its consumer
columns times the typical size of its inputs (Wanda's idea, per structure; ``activations=False``
gives the plain magnitude score). No refit: the kept columns stay as they were. This is the
baseline OSSCAR's search and refit must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.pruners.structured import Choice, StructuredPruner, Units
from pipeline.statistics import LayerStatistics


@dataclass
class StructuredNormPruner(StructuredPruner):
    activations: bool = True

    name = "structured-norm"

    def choose(self, weight: torch.Tensor, stats: LayerStatistics, units: Units, kind: str) -> Choice:
        score = weight.pow(2).sum(dim=0)
        if self.activations:
            score = score * stats.second_moment
        per_bucket = score.reshape(-1, units.bucket, units.size).sum(dim=2)  # buckets x units per bucket
        best = torch.topk(per_bucket, units.keep, dim=1).indices
        kept = best + units.bucket * torch.arange(per_bucket.shape[0])[:, None]
        return Choice(kept.reshape(-1).sort().values)

    def config(self) -> dict:
        return {**super().config(), "activations": self.activations}
