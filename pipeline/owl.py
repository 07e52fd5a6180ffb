"""OWL (Yin et al., 2024): outlier-weighted layerwise sparsity.

Blocks whose Wanda scores ``|W|·||X||`` hold more outliers (values above ``M`` times the
block mean) matter more and are pruned less. The official code (luuyin/OWL) pools the
scores of all Linear layers of a block, measures the outlier share ("LOD") on the *dense*
model, maps the LODs linearly onto a band of width ``2·λ`` and re-centres it so that the
mean density is exactly ``1 - target``. One sparsity per block; any per-layer pruner then
works inside the block at that sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel

from pipeline.errors import SparseDeployError
from pipeline.pruners.wanda import wanda_scores
from pipeline.sequential import BlockContext, calibrate_sequentially
from pipeline.streaming import BlockResidency
from pipeline.statistics import Statistic


@dataclass(frozen=True)
class OWLConfig:
    """``m``: outlier threshold as a multiple of the block's mean score (README setting for
    70%: 5). ``lam``: half-width of the sparsity band around the target (0.08)."""

    m: float = 5.0
    lam: float = 0.08

    def __post_init__(self) -> None:
        if self.m <= 0:
            raise SparseDeployError(f"OWL M must be positive, got {self.m}")
        if not 0 <= self.lam < 0.5:
            raise SparseDeployError(f"OWL lambda must lie in [0, 0.5), got {self.lam}")


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Share of all entries of ``scores`` (pooled) above ``m`` times their pooled mean."""
    total = sum(float(s.sum(dtype=torch.float64)) for s in scores)
    count = sum(s.numel() for s in scores)
    threshold = m * total / count
    return sum(int((s > threshold).sum()) for s in scores) / count


def owl_sparsities(lod: Sequence[float], target: float, lam: float) -> list[float]:
    """Per-block sparsities: LOD mapped onto ``[0, 2λ]``, re-centred on density ``1 - target``.

    Raises when a block would leave ``[0, 1)``: clamping would silently move the mean away
    from the target.
    """
    lod_t = torch.tensor(lod, dtype=torch.float64)
    span = float(lod_t.max() - lod_t.min())
    density = (lod_t - lod_t.min()) * (2 * lam / span) if span > 0 else torch.zeros_like(lod_t)
    density = density - density.mean() + (1 - target)
    sparsities = (1 - density).tolist()
    if min(sparsities) < 0 or max(sparsities) >= 1:
        raise SparseDeployError(
            f"OWL with target {target} and lambda {lam} gives block sparsities outside [0, 1) "
            f"({min(sparsities):.3f} .. {max(sparsities):.3f}); use a smaller lambda"
        )
    return sparsities


def measure_outlier_ratios(model: PreTrainedModel, batches: list[dict[str, Any]], m: float,
                           residency: BlockResidency | None = None) -> list[float]:
    """LOD of every block of the dense model (one sequential pass, weights untouched)."""
    ratios: list[float] = []

    def observe(ctx: BlockContext) -> bool:
        scores = [wanda_scores(layer.weight.detach().float(), ctx.stats[name]) for name, layer in ctx.layers.items()]
        ratios.append(outlier_ratio(scores, m))
        return False

    calibrate_sequentially(model, batches, frozenset({Statistic.SECOND_MOMENT}), observe, description="OWL outliers",
                           residency=residency)
    return ratios
