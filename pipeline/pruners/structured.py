"""What every structured method shares: the units (MLP neurons, attention KV groups), how
many to keep, and the slicing once a method has chosen. A subclass only chooses.

Units are found through the architecture's layouts (``pipeline.architectures``): an MLP
neuron is one input column of the consumer (down_proj / fc2) and one output row of each
producer; an attention unit is one KV group (a KV head and the query heads sharing it;
one head without GQA): ``rep · head_dim`` consumer columns, the query rows of those heads,
the K and V rows of the KV head. Removing whole KV groups keeps every layer's query/KV
ratio, so the model stays a valid instance of its architecture.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pipeline.architectures import AttentionLayout, MLPLayout
from pipeline.errors import SparseDeployError
from pipeline.pruners.base import Pruner
from pipeline.sequential import BlockContext
from pipeline.slicing import keep_columns, keep_rows, mark_heads
from pipeline.statistics import LayerStatistics, Statistic

STRUCTURES = ("mlp", "heads", "mlp+heads")


@dataclass
class Choice:
    """Kept unit indices (sorted), optionally a refitted full-width consumer weight, and what
    the method measured while choosing (reported per block)."""

    kept: torch.Tensor
    consumer_weight: torch.Tensor | None = None
    diagnostics: dict[str, Any] | None = None


@dataclass
class StructuredPruner(Pruner):
    """``structures``: which units to remove (``sparsity`` = the share removed, per block)."""

    structures: str = "mlp"

    statistics: ClassVar[frozenset[Statistic]] = frozenset({Statistic.GRAM})

    def __post_init__(self) -> None:
        if self.structures not in STRUCTURES:
            raise ValueError(f"structures must be one of {', '.join(STRUCTURES)}, got '{self.structures}'")

    @abstractmethod
    def choose(self, weight: torch.Tensor, stats: LayerStatistics, unit_size: int, keep: int,
               kind: str) -> Choice:
        """Which ``keep`` units of the consumer ``weight`` (input columns in units of
        ``unit_size``) to keep; ``kind`` is "mlp" or "heads" (methods may use different
        step sizes)."""

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

    def _prune_mlp(self, ctx: BlockContext, layout: MLPLayout, sparsity: float) -> Choice | None:
        consumer = ctx.block.get_submodule(layout.consumer)
        neurons = consumer.in_features
        keep = self._keep_count(neurons, sparsity, "MLP neurons", ctx.name)
        if keep == neurons:
            return None
        choice = self.choose(consumer.weight.detach().float(), ctx.stats[layout.consumer], 1, keep, "mlp")
        keep_columns(ctx.block, layout.consumer, choice.kept, choice.consumer_weight)
        rows = torch.cat([choice.kept + half * neurons for half in range(layout.halves)])
        for producer in layout.producers:
            keep_rows(ctx.block, producer, rows)
        return choice

    def _prune_heads(self, ctx: BlockContext, layout: AttentionLayout, sparsity: float) -> Choice | None:
        config = ctx.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        rep = heads // (getattr(config, "num_key_value_heads", None) or heads)
        consumer = ctx.block.get_submodule(layout.consumer)
        groups = consumer.in_features // (rep * head_dim)
        keep = self._keep_count(groups, sparsity, "KV groups" if rep > 1 else "heads", ctx.name)
        if keep == groups:
            return None
        choice = self.choose(consumer.weight.detach().float(), ctx.stats[layout.consumer], rep * head_dim, keep,
                             "heads")
        q_rows = _unit_rows(choice.kept, rep * head_dim)
        kv_rows = _unit_rows(choice.kept, head_dim)
        keep_columns(ctx.block, layout.consumer, q_rows, choice.consumer_weight)
        if len(layout.qkv) == 1:  # fused: [q (groups·rep·hd); k (groups·hd); v (groups·hd)]
            q_total, kv_total = groups * rep * head_dim, groups * head_dim
            keep_rows(ctx.block, layout.qkv[0], torch.cat([q_rows, q_total + kv_rows, q_total + kv_total + kv_rows]))
        else:
            for name, rows in zip(layout.qkv, (q_rows, kv_rows, kv_rows)):
                keep_rows(ctx.block, name, rows)
        attention = ctx.block.get_submodule(layout.module)
        layout.set_heads(attention, keep * rep, keep)
        mark_heads(attention, keep * rep, keep)
        return choice


def _unit_rows(kept: torch.Tensor, size: int) -> torch.Tensor:
    return (kept[:, None] * size + torch.arange(size)).reshape(-1)
