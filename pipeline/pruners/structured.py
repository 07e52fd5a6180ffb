"""What every structured method shares: the units (MLP neurons, attention KV groups), how
many to keep, and the slicing once a method has chosen. A subclass only chooses.

Units are found through the architecture's layouts (``pipeline.architectures``): an MLP
neuron is one input column of the consumer (down_proj / fc2) and one output row of each
producer. Attention units come in two kinds (``head_units``), both keeping the model a valid
instance of its architecture:

* ``kv_groups`` (default): a KV head with the query heads sharing it (one head without GQA):
  ``rep · head_dim`` consumer columns, the query rows of those heads, the K and V rows of the
  KV head. Every layer keeps the model's query/KV ratio; the KV cache shrinks too.
* ``query_heads`` (GQA only): single query heads (``head_dim`` consumer columns and query
  rows), every KV group keeping the same number of them, every KV head kept. Finer choices
  (smollm2: 3 of 9 heads out of 27 ways instead of 3), the same KV cache.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from pipeline.architectures import ArchitectureSpec, AttentionLayout, MLPLayout
from pipeline.architectures import head_dim as head_width
from pipeline.errors import SparseDeployError
from pipeline.pruners.base import Pruner
from pipeline.sequential import BlockContext
from pipeline.slicing import (
    head_counts,
    keep_columns,
    keep_rows,
    mark_heads,
    record_sliced,
)
from pipeline.statistics import LayerStatistics, Statistic

STRUCTURES = ("mlp", "heads", "mlp+heads")
HEAD_UNITS = ("kv_groups", "query_heads")


@dataclass(frozen=True)
class Units:
    """How a consumer's input columns form removable units: ``size`` columns each, in
    ``count`` units; consecutive runs of ``bucket`` units each keep ``keep`` of theirs (one
    bucket of all units: an unconstrained choice of ``keep``)."""

    size: int
    count: int
    keep: int
    bucket: int


@dataclass
class Choice:
    """Kept unit indices (sorted), optionally a refitted full-width consumer weight, and what
    the method measured while choosing (reported per block)."""

    kept: torch.Tensor
    consumer_weight: torch.Tensor | None = None
    diagnostics: dict[str, Any] | None = None


@dataclass
class StructuredPruner(Pruner):
    """``structures``: which units to remove (``sparsity`` = the share removed, per block);
    ``head_units``: KV groups or query heads within groups (see the module docstring)."""

    structures: str = "mlp"
    head_units: str = "kv_groups"

    statistics: ClassVar[frozenset[Statistic]] = frozenset({Statistic.GRAM})

    def __post_init__(self) -> None:
        if self.structures not in STRUCTURES:
            raise ValueError(f"structures must be one of {', '.join(STRUCTURES)}, got '{self.structures}'")
        if self.head_units not in HEAD_UNITS:
            raise ValueError(f"head_units must be one of {', '.join(HEAD_UNITS)}, got '{self.head_units}'")

    @abstractmethod
    def choose(self, weight: torch.Tensor, stats: LayerStatistics, units: Units, kind: str) -> Choice:
        """Which ``units`` of the consumer ``weight`` (input columns) to keep; ``kind`` is
        "mlp" or "heads" (methods may use different step sizes)."""

    def config(self) -> dict:
        return {**super().config(), "structures": self.structures, "head_units": self.head_units}

    def finalize(self, model: PreTrainedModel, spec: ArchitectureSpec) -> None:
        record_sliced(model, spec)  # the sliced shapes and head counts, rebuilt before the weights load

    def prune_block(self, ctx: BlockContext, sparsity: float) -> dict[str, Any] | None:
        spec = ctx.architecture
        if spec is None or spec.mlp is None or spec.attention is None:
            raise SparseDeployError(f"{self.name}: no structure layout for this architecture")
        choices = {}
        if "heads" in self.structures:
            choices["heads"] = self._prune_heads(ctx, spec.attention, sparsity)
        if "mlp" in self.structures:
            choices["mlp"] = self._prune_mlp(ctx, spec.mlp, sparsity)
        diagnostics = {kind: c.diagnostics for kind, c in choices.items() if c is not None and c.diagnostics}
        return diagnostics or None

    def _keep_count(self, units: int, sparsity: float, what: str, block: str) -> int:
        if not 0 <= sparsity < 1:
            raise SparseDeployError(f"the share of {what} removed must lie in [0, 1), got {sparsity}")
        keep = units - round(sparsity * units)
        if keep < 1:
            raise SparseDeployError(f"removing {sparsity:.0%} of {units} {what} in {block} would remove them all")
        return keep

    def _head_units(self, ctx: BlockContext, groups: int, rep: int, head_dim: int, sparsity: float) -> Units:
        """The attention units of this block: KV groups, or query heads kept evenly per group."""
        if self.head_units == "kv_groups":
            keep = self._keep_count(groups, sparsity, "KV groups" if rep > 1 else "heads", ctx.name)
            return Units(rep * head_dim, groups, keep, groups)
        if rep == 1:
            raise SparseDeployError("head_units=query_heads needs grouped-query attention (several query heads per "
                                    "KV head); this model has one KV head per query head: use head_units=kv_groups")
        keep = self._keep_count(rep, sparsity, "query heads of each KV group", ctx.name)
        return Units(head_dim, groups * rep, keep, rep)

    def _prune_mlp(self, ctx: BlockContext, layout: MLPLayout, sparsity: float) -> Choice | None:
        consumer = ctx.block.get_submodule(layout.consumer)
        neurons = consumer.in_features
        keep = self._keep_count(neurons, sparsity, "MLP neurons", ctx.name)
        if keep == neurons:
            return None
        units = Units(1, neurons, keep, neurons)
        choice = self.choose(consumer.weight.detach().float(), ctx.stats[layout.consumer], units, "mlp")
        keep_columns(ctx.block, layout.consumer, choice.kept, choice.consumer_weight)
        rows = torch.cat([choice.kept + half * neurons for half in range(layout.halves)])
        for producer in layout.producers:
            keep_rows(ctx.block, producer, rows)
        return choice

    def _prune_heads(self, ctx: BlockContext, layout: AttentionLayout, sparsity: float) -> Choice | None:
        config = ctx.config
        head_dim = head_width(config)
        attention = ctx.block.get_submodule(layout.module)
        heads, groups = head_counts(attention, config)  # this block's, if an earlier step sliced it
        rep = heads // groups
        consumer = ctx.block.get_submodule(layout.consumer)
        units = self._head_units(ctx, groups, rep, head_dim, sparsity)
        if units.keep == units.bucket:
            return None
        choice = self.choose(consumer.weight.detach().float(), ctx.stats[layout.consumer], units, "heads")
        q_rows = _unit_rows(choice.kept, units.size)
        kv_kept = torch.arange(groups) if self.head_units == "query_heads" else choice.kept
        kv_rows = _unit_rows(kv_kept, head_dim)
        keep_columns(ctx.block, layout.consumer, q_rows, choice.consumer_weight)
        if len(layout.qkv) == 1:  # fused: [q (groups·rep·hd); k (groups·hd); v (groups·hd)]
            q_total, kv_total = groups * rep * head_dim, groups * head_dim
            keep_rows(ctx.block, layout.qkv[0], torch.cat([q_rows, q_total + kv_rows, q_total + kv_total + kv_rows]))
        else:
            for name, rows in zip(layout.qkv, (q_rows, kv_rows, kv_rows)):
                keep_rows(ctx.block, name, rows)
        kept_heads = len(choice.kept) * (units.size // head_dim)
        layout.set_heads(attention, kept_heads, len(kv_kept))
        mark_heads(attention, kept_heads, len(kv_kept))
        return choice


def _unit_rows(kept: torch.Tensor, size: int) -> torch.Tensor:
    return (kept[:, None] * size + torch.arange(size)).reshape(-1)
