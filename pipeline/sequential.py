"""Sequential, block-by-block calibration (the SparseGPT/Wanda scheme, as llm-compressor's
sequential pipeline runs it).

The model is run once up to its first block to capture that block's inputs. Then, for each
block in turn: hooks on its Linear layers accumulate input statistics while the calibration
batches pass through it; a ``visit`` callback (a pruner, an observer) does its work on the
block; the block, as the callback left it, produces the inputs of the next block. Later
blocks therefore calibrate on the outputs of already-pruned earlier blocks, and memory holds
one block's activations for the calibration set, not the whole model's.

When a method asks for the cross moment with a reference (``Statistic.CROSS``), the engine
also carries a second stream: the model as it entered this pass, its blocks run before the
visit, on the same tokens. Each layer's inputs are then paired with the reference's inputs
to the same layer, so a method can aim at the reference's output instead of at its layer's
own output on already-pruned inputs. It costs one more block forward per batch and one
more hidden-state set in memory.

Across processes (``torch.distributed`` initialized, e.g. by ``torchrun``; gloo on CPUs) each
rank takes its share of the calibration batches: per block the statistics, which are sums, are
summed over the ranks with ``all_reduce`` before the visit, every rank visits the block with
the same sums (so whatever the visit returns or records, such as OWL's outlier ratios, exists on
every rank), rank 0's block is then broadcast so that all ranks hold the same bytes, and each
rank runs its own batches through it. With one process nothing of this happens.

The engine knows no method: it only knows which statistics were asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from pipeline.architectures import ArchitectureSpec, blocks_prefix, linear_layers, spec_for, transformer_blocks
from pipeline.errors import SparseDeployError
from pipeline.progress import progress
from pipeline.statistics import LayerStatistics, Statistic

if TYPE_CHECKING:
    from pipeline.streaming import BlockResidency

log = logging.getLogger(__name__)


@dataclass
class BlockContext:
    """One block after calibration: its Linear layers and their input statistics.

    Layers fed by the same tensor (q/k/v, gate/up) share one statistics object.
    ``fused_rows`` names layers that hold several projections in one weight, with each
    projection's row count; ``architecture`` and ``config`` let structured methods find
    neurons and heads (all from the architecture spec, so no method branches on a model type).
    """

    index: int
    name: str
    block: nn.Module
    layers: dict[str, nn.Linear]
    stats: dict[str, LayerStatistics]
    fused_rows: dict[str, list[int]] = field(default_factory=dict)
    architecture: ArchitectureSpec | None = None
    config: PretrainedConfig | None = None


# visit(ctx) -> True when it changed the block (outputs must then be recomputed).
BlockVisitor = Callable[[BlockContext], bool]


@dataclass
class _BlockInputs:
    """What the model passed to block 0, one entry per calibration batch."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    reference: list[torch.Tensor] | None = None  # the reference stream's hidden states, when carried


class _StopForward(Exception):
    pass


def _capture_first_block_inputs(model: PreTrainedModel, batches: list[dict[str, Any]]) -> _BlockInputs:
    captured = _BlockInputs()

    def grab(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.hidden.append(args[0])
        captured.args.append(args[1:])
        captured.kwargs.append(kwargs)
        raise _StopForward

    handle = transformer_blocks(model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**batch)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _forward(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _run_block(block: nn.Module, inputs: _BlockInputs) -> list[torch.Tensor]:
    return [_forward(block, *batch) for batch in zip(inputs.hidden, inputs.args, inputs.kwargs)]


class _StatisticsCollector:
    """Forward hooks accumulating :class:`LayerStatistics` for a block's Linear layers.

    With the cross moment wanted each batch runs twice: first on the block's inputs (statistics,
    and each distinct layer input kept), then, after ``begin_reference``, on the reference
    stream's inputs, whose layer inputs are paired with the kept ones."""

    def __init__(self, layers: dict[str, nn.Linear], want: frozenset[Statistic], gram_dtype: torch.dtype):
        self.stats: dict[str, LayerStatistics] = {}
        self._want, self._gram_dtype, self._pair = want, gram_dtype, Statistic.CROSS in want
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}  # holds refs: ids stay unique
        self._kept: dict[int, torch.Tensor] = {}  # id(stats) -> this batch's input, awaiting its reference
        self._reference = False
        self._handles = [layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str) -> Callable:
        def record(_module: nn.Module, inputs: tuple, _output: Any) -> None:
            x = inputs[0]
            if self._reference:
                stats = self.stats[name]
                kept = self._kept.pop(id(stats), None)  # None: a layer sharing an already paired input
                if kept is not None:
                    stats.add_reference(kept, x)
                return
            first = self._seen.get(id(x))
            if first is None:
                self._seen[id(x)] = (x, name)
                if name not in self.stats:
                    self.stats[name] = LayerStatistics.empty(x.shape[-1], self._want, self._gram_dtype)
                self.stats[name].add_batch(x)
                if self._pair:
                    self._kept[id(self.stats[name])] = x
            elif self.stats.setdefault(name, self.stats[first[1]]) is not self.stats[first[1]]:
                raise RuntimeError(f"layer '{name}' changed which tensor it shares between batches")

        return record

    def begin_reference(self) -> None:
        self._reference = True

    def end_batch(self) -> None:
        if self._kept:
            raise RuntimeError(f"the reference pass did not reach {len(self._kept)} of the block's layer inputs")
        self._seen.clear()
        self._reference = False

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._seen.clear()


def _collect(block: nn.Module, layers: dict[str, nn.Linear], inputs: _BlockInputs, want: frozenset[Statistic],
             gram_dtype: torch.dtype) -> tuple[dict[str, LayerStatistics], list[torch.Tensor], list[torch.Tensor]]:
    """The block's statistics and its outputs on both streams (the reference's: empty when
    not carried), all from the block as it is before the visit."""
    collector = _StatisticsCollector(layers, want, gram_dtype)
    outputs, reference = [], []
    try:
        for index, batch in enumerate(zip(inputs.hidden, inputs.args, inputs.kwargs)):
            outputs.append(_forward(block, *batch))
            if inputs.reference is not None:
                collector.begin_reference()
                reference.append(_forward(block, inputs.reference[index], *batch[1:]))
            collector.end_batch()
    finally:
        collector.close()
    return collector.stats, outputs, reference


def _ranks() -> tuple[int, int]:
    """(this process's rank, the number of ranks): (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _share(batches: list[dict[str, Any]], rank: int, world: int) -> list[dict[str, Any]]:
    if len(batches) < world:
        raise SparseDeployError(f"{len(batches)} calibration batches cannot be shared by {world} ranks")
    return batches[rank::world]


def _sum_over_ranks(stats: dict[str, LayerStatistics]) -> None:
    """Every rank's sums, added up on every rank (layers sharing an input share one object)."""
    for s in {id(s): s for s in stats.values()}.values():
        for tensor in (s.sq_sum, s.gram_sum, s.cross_sum):
            if tensor is not None:
                dist.all_reduce(tensor)
        counts = torch.tensor([s.tokens, s.cross_tokens], dtype=torch.int64)
        dist.all_reduce(counts)
        s.tokens, s.cross_tokens = int(counts[0]), int(counts[1])


def _broadcast_block(block: nn.Module) -> None:
    for tensor in block.state_dict().values():
        dist.broadcast(tensor, src=0)


@torch.no_grad()
def calibrate_sequentially(
    model: PreTrainedModel,
    batches: list[dict[str, Any]],
    statistics: frozenset[Statistic],
    visit: BlockVisitor,
    *,
    gram_dtype: torch.dtype = torch.float32,
    description: str = "calibrating",
    residency: BlockResidency | None = None,
) -> None:
    """Walk the model's blocks in order, calling ``visit`` on each after collecting the
    requested ``statistics`` from the (already visited) previous blocks' outputs.
    ``residency``: for a model whose blocks are not all in memory (pipeline/streaming.py), told
    when each block is first needed and when it is done with."""
    was_training = model.training
    model.eval()
    rank, world = _ranks()
    if world > 1:
        batches = _share(batches, rank, world)
    try:
        inputs = _capture_first_block_inputs(model, batches)
        if Statistic.CROSS in statistics:
            inputs.reference = list(inputs.hidden)  # the streams part from the first visited block on
        prefix = blocks_prefix(model)
        blocks = transformer_blocks(model)
        spec = spec_for(model)
        fused = spec.fused_rows(model.config)
        for index in progress(range(len(blocks)), desc=description, unit="blocks"):
            block = blocks[index]
            if residency is not None:
                residency.enter(index, block)
            layers = linear_layers(block)
            if statistics:
                stats, outputs, reference = _collect(block, layers, inputs, statistics, gram_dtype)
                if world > 1:
                    _sum_over_ranks(stats)
            else:
                stats, outputs, reference = {}, None, []
            changed = visit(BlockContext(index, f"{prefix}.{index}", block, layers, stats, fused, spec, model.config))
            if world > 1 and changed:
                _broadcast_block(blocks[index])
            if changed or outputs is None:
                outputs = _run_block(blocks[index], inputs)
            if residency is not None:
                residency.leave(index, blocks[index])
            inputs.hidden = outputs
            if inputs.reference is not None:
                inputs.reference = reference
    finally:
        model.train(was_training)
