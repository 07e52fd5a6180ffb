"""Sequential, block-by-block calibration (the SparseGPT/Wanda scheme, as llm-compressor's
sequential pipeline runs it).

The model is run once up to its first block to capture that block's inputs. Then, for each
block in turn: hooks on its Linear layers accumulate input statistics while the calibration
batches pass through it; a ``visit`` callback (a pruner, an observer) does its work on the
block; the block, as the callback left it, produces the inputs of the next block. Later
blocks therefore calibrate on the outputs of already-pruned earlier blocks, and memory holds
one block's activations for the calibration set, not the whole model's.

The engine knows no method: it only knows which statistics were asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PretrainedConfig, PreTrainedModel

from pipeline.architectures import ArchitectureSpec, blocks_prefix, linear_layers, spec_for, transformer_blocks
from pipeline.statistics import LayerStatistics, Statistic

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


def _run_block(block: nn.Module, inputs: _BlockInputs) -> list[torch.Tensor]:
    outputs = []
    for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
        out = block(hidden, *args, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


class _StatisticsCollector:
    """Forward hooks accumulating :class:`LayerStatistics` for a block's Linear layers."""

    def __init__(self, layers: dict[str, nn.Linear], want: frozenset[Statistic], gram_dtype: torch.dtype):
        self.stats: dict[str, LayerStatistics] = {}
        self._want, self._gram_dtype = want, gram_dtype
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}  # holds refs: ids stay unique
        self._handles = [layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str) -> Callable:
        def record(_module: nn.Module, inputs: tuple, _output: Any) -> None:
            x = inputs[0]
            first = self._seen.get(id(x))
            if first is None:
                self._seen[id(x)] = (x, name)
                if name not in self.stats:
                    self.stats[name] = LayerStatistics.empty(x.shape[-1], self._want, self._gram_dtype)
                self.stats[name].add_batch(x)
            elif self.stats.setdefault(name, self.stats[first[1]]) is not self.stats[first[1]]:
                raise RuntimeError(f"layer '{name}' changed which tensor it shares between batches")

        return record

    def end_batch(self) -> None:
        self._seen.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._seen.clear()


def _collect(block: nn.Module, layers: dict[str, nn.Linear], inputs: _BlockInputs, want: frozenset[Statistic],
             gram_dtype: torch.dtype) -> tuple[dict[str, LayerStatistics], list[torch.Tensor]]:
    collector = _StatisticsCollector(layers, want, gram_dtype)
    outputs = []
    try:
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
            out = block(hidden, *args, **kwargs)
            outputs.append(out[0] if isinstance(out, tuple) else out)
            collector.end_batch()
    finally:
        collector.close()
    return collector.stats, outputs


@torch.no_grad()
def calibrate_sequentially(
    model: PreTrainedModel,
    batches: list[dict[str, Any]],
    statistics: frozenset[Statistic],
    visit: BlockVisitor,
    *,
    gram_dtype: torch.dtype = torch.float32,
    description: str = "calibrating",
) -> None:
    """Walk the model's blocks in order, calling ``visit`` on each after collecting the
    requested ``statistics`` from the (already visited) previous blocks' outputs."""
    was_training = model.training
    model.eval()
    try:
        inputs = _capture_first_block_inputs(model, batches)
        prefix = blocks_prefix(model)
        blocks = transformer_blocks(model)
        spec = spec_for(model)
        fused = spec.fused_rows(model.config)
        for index in tqdm(range(len(blocks)), desc=description, unit="block", disable=None):
            block = blocks[index]
            layers = linear_layers(block)
            if statistics:
                stats, outputs = _collect(block, layers, inputs, statistics, gram_dtype)
            else:
                stats, outputs = {}, None
            changed = visit(BlockContext(index, f"{prefix}.{index}", block, layers, stats, fused, spec, model.config))
            if changed or outputs is None:
                outputs = _run_block(blocks[index], inputs)
            inputs.hidden = outputs
    finally:
        model.train(was_training)
