"""The interface between the calibration engine and a pruning method.

The engine knows nothing about any one method. It asks a :class:`Pruner` which input
statistics it needs, collects them for one block, then hands the block over in a
:class:`BlockContext`. A method may rewrite weights in place (magnitude, Wanda,
SparseGPT), replace modules (OATS: sparse + low-rank factors) or slice structure out
(OSSCAR); the engine simply runs whatever block it gets back to produce the next block's
inputs. A method that changed modules records what a reload needs in ``finalize``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from pipeline.architectures import ArchitectureSpec
from pipeline.masks import SparsityPattern
from pipeline.sequential import BlockContext
from pipeline.statistics import LayerStatistics, Statistic


class Pruner(ABC):
    """A configured pruning method. Subclasses are dataclasses whose fields are the
    method's parameters, validated in ``__post_init__``."""

    name: ClassVar[str]
    statistics: ClassVar[frozenset[Statistic]]

    @abstractmethod
    def prune_block(self, ctx: BlockContext, sparsity: float) -> dict[str, Any] | None:
        """Prune ``ctx.block`` to ``sparsity`` (in place or by replacing its modules). May
        return what the method measured on the way (e.g. its solver's objectives): the engine
        keeps it per block in the prune record, uninterpreted."""

    def check_model(self, layers: dict[str, nn.Linear]) -> None:
        """Reject a model the method cannot prune, before any compute (default: accept)."""

    def finalize(self, model: PreTrainedModel, spec: ArchitectureSpec) -> None:
        """After the last block: record in ``model.config`` what a reload needs to rebuild the
        modules this method changed, so the pruned model saves and loads as a plain
        ``save_pretrained`` directory (default: nothing; the weights kept their shapes)."""

    def implied_sparsity(self) -> float | None:
        """The target a pattern fixes (N:M), or None when the user chooses it."""
        return None

    def config(self) -> dict:
        """The parameters that reproduce this pruner, for records and recipes."""
        return {"method": self.name}


@dataclass
class PatternedPruner(Pruner):
    """A method whose zeros may follow a pattern (unstructured or N:M): the one place that
    parses the pattern and checks every layer's width against it."""

    pattern: SparsityPattern = field(default_factory=SparsityPattern)

    def __post_init__(self) -> None:
        if isinstance(self.pattern, str):
            self.pattern = SparsityPattern.parse(self.pattern)

    def check_model(self, layers: dict[str, nn.Linear]) -> None:
        for name, layer in layers.items():
            self.pattern.check_width(layer.in_features, name)

    def config(self) -> dict:
        return {**super().config(), "pattern": str(self.pattern)}


@dataclass
class WeightPruner(PatternedPruner):
    """A method that turns each Linear weight into a sparse weight of the same shape,
    one layer at a time, unstructured or N:M."""

    @abstractmethod
    def prune_weight(self, weight: torch.Tensor, stats: LayerStatistics | None, sparsity: float) -> torch.Tensor:
        """Return the pruned weight (float32, same shape) for ``sparsity``. ``stats`` is
        None when the method asked for no statistics."""

    def prune_block(self, ctx: BlockContext, sparsity: float) -> None:
        if self.pattern.is_nm:
            sparsity = self.pattern.sparsity
        for name, layer in ctx.layers.items():
            pruned = self.prune_weight(layer.weight.detach().float(), ctx.stats.get(name), sparsity)
            layer.weight.data.copy_(pruned.to(layer.weight.dtype))

    def implied_sparsity(self) -> float | None:
        return self.pattern.sparsity if self.pattern.is_nm else None
