"""OSSCAR (Meng et al., ICML 2024): structured removal by combinatorial local search.

For each block's MLP (neurons) and attention (heads / KV groups), the consumer layer's
reconstruction problem is solved by :class:`pipeline.group_selection.GroupSelector`: greedy
OBS removal ``step`` units at a time, then local search swapping ``swap`` units, then the
exact least-squares refit of the kept columns. The shared structured base slices the chosen
units out of the producers and the consumer. Defaults are the official code's: ridge 1e-2,
10 neurons / 2 heads removed per greedy step, 30 local-search iterations swapping 10 neurons
/ 5 heads. ``search="exact"`` replaces the official batch swaps by single swaps scored exactly
(every pair, best first) until none improves: a true single-swap local optimum, used to
measure how much a local search can still gain over greedy (on smollm2-135m it took less time
than the batch search, and found almost nothing either).

Both consumers are solved with the statistics of one calibration pass through the block (as
SparseGPT treats all of a block's layers): the MLP's inputs are those of the block before
its heads were removed.

``target`` says what a consumer's refit reconstructs: ``"pruned"`` (default, the official
code's default) its own dense weight's output on the inputs it now gets from the already
pruned blocks; ``"dense"`` (the official ``--fullseq``) the output the unpruned model gives
on its own inputs, which the engine then runs side by side (one more block forward per batch).
On smollm2-135m the dense target is clearly worse in every setting measured
(benchmarks/results/quality_osscar_smollm2.md), hence not the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.group_selection import SEARCHES, GroupSelector
from pipeline.pruners.structured import Choice, StructuredPruner, Units
from pipeline.statistics import LayerStatistics, Statistic

TARGETS = ("pruned", "dense")


@dataclass
class OSSCARPruner(StructuredPruner):
    ridge: float = 1e-2
    mlp_step: int = 10
    head_step: int = 2
    iterations: int = 30
    mlp_swap: int = 10
    head_swap: int = 5
    target: str = "pruned"
    search: str = "batch"

    name = "osscar"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got '{self.target}'")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got '{self.search}'")
        if self.ridge < 0 or min(self.mlp_step, self.head_step) < 1:
            raise ValueError("ridge must be >= 0 and the greedy steps >= 1")
        if self.iterations < 0 or min(self.mlp_swap, self.head_swap) < 0:
            raise ValueError("iterations and swap sizes must be >= 0 (0 iterations: greedy only)")

    @property
    def statistics(self) -> frozenset[Statistic]:  # type: ignore[override]
        return frozenset({Statistic.GRAM, Statistic.CROSS} if self.target == "dense" else {Statistic.GRAM})

    def choose(self, weight: torch.Tensor, stats: LayerStatistics, units: Units, kind: str) -> Choice:
        cross = stats.cross if self.target == "dense" else None
        selector = GroupSelector(weight, stats.hessian, units.size, self.ridge, units.bucket, cross)
        step, swap = (self.mlp_step, self.mlp_swap) if kind == "mlp" else (self.head_step, self.head_swap)
        selection = selector.select(units.keep, step, self.iterations, swap, self.search)
        return Choice(selection.kept.nonzero().squeeze(1), selection.weight, selection.excess())

    def config(self) -> dict:
        return {**super().config(), "ridge": self.ridge, "mlp_step": self.mlp_step,
                "head_step": self.head_step, "iterations": self.iterations, "mlp_swap": self.mlp_swap,
                "head_swap": self.head_swap, "target": self.target,
                "search": self.search}
