"""Models larger than memory: one decoder block resident at a time.

SparseGPT's own code and llm-compressor's sequential pipeline prune a 7B model on a machine
that cannot hold it by keeping one block in memory. Here the model is built with its
parameters on the meta device (shapes, no storage; buffers such as rotary frequencies real),
everything outside the blocks (embeddings, final norm, head) is read from the checkpoint, and
the sequential engine calls a :class:`BlockResidency` around each block: ``enter`` reads the
block's tensors from the checkpoint's shards (memory-mapped), ``leave`` drops them again, after
writing the block as the visit left it when the pass is the one that keeps its results. A pass
that only observes (OWL's outlier ratios) reads and drops. What is written goes to a
:class:`ShardWriter` in a spool directory, block by block; ``save_pruned`` adds the rest and
moves the shards into the output, so the pruned model is never whole in memory either.

Peak memory: the non-block tensors, one block (plus what a method holds for it), the
calibration activations, and one shard being written.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist
from accelerate import init_empty_weights
from torch import nn

from pipeline.architectures import blocks_prefix, tied_weight_names, transformer_blocks
from pipeline.shards import INDEX, SHARD_BYTES, Checkpoint, ShardWriter
from pipeline.sparsity_report import block_counts

log = logging.getLogger(__name__)


class BlockResidency(Protocol):
    """Where a block's tensors are while the sequential engine walks the blocks."""

    def enter(self, index: int, block: nn.Module) -> None:
        """Before the block's first use in a pass: its tensors are in memory afterwards."""

    def leave(self, index: int, block: nn.Module) -> None:
        """After the block's outputs for the next block are computed: it is not used again."""


def _load(module: nn.Module, checkpoint: Checkpoint, prefix: str) -> None:
    state = {name: checkpoint.tensor(prefix + name) for name in module.state_dict()}
    module.load_state_dict(state, strict=True, assign=True)


def _drop(module: nn.Module) -> None:
    """Every parameter back on the meta device (its storage freed, its shape kept)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=False)


@dataclass
class StreamedBlocks:
    """Blocks read from ``checkpoint`` on entry and dropped on leaving; with ``writer``, written
    (under their names in the model) before they are dropped, and counted for the sparsity
    report, since the model never holds them all."""

    checkpoint: Checkpoint
    prefix: str
    writer: ShardWriter | None = None
    counts: dict[int, Any] = field(default_factory=dict)

    def enter(self, index: int, block: nn.Module) -> None:
        _load(block, self.checkpoint, f"{self.prefix}.{index}.")

    def leave(self, index: int, block: nn.Module) -> None:
        if self.writer is not None:
            self.counts[index] = block_counts(block)
            for name, tensor in block.state_dict().items():
                self.writer.add(f"{self.prefix}.{index}.{name}", tensor)
        _drop(block)


@dataclass
class StreamedModel:
    """What a streamed model needs beyond its skeleton: the source checkpoint and, once a pass
    keeps its blocks, the spool they were written to."""

    checkpoint: Checkpoint
    prefix: str
    spool: Path | None = None
    kept: StreamedBlocks | None = None

    def reading(self) -> StreamedBlocks:
        """For a pass that observes: blocks in, blocks out, nothing written."""
        return StreamedBlocks(self.checkpoint, self.prefix)

    def keeping(self, shard_bytes: int = SHARD_BYTES) -> StreamedBlocks:
        """For the pass whose results are the model: each block written as it leaves; on the
        ranks other than 0 of a torch.distributed run (which hold the same blocks, and do not
        write) as ``reading``."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return self.reading()
        if self.kept is not None:
            raise RuntimeError("a streamed model keeps the blocks of one pass only")
        self.spool = Path(tempfile.mkdtemp(prefix="sparse-deploy-blocks-"))
        self.kept = StreamedBlocks(self.checkpoint, self.prefix, ShardWriter(self.spool, shard_bytes))
        return self.kept

    def save(self, model: nn.Module, out: Path) -> None:
        """The kept blocks and every tensor outside the blocks, as shards with an index, in ``out``."""
        if self.kept is None or self.kept.writer is None or self.spool is None:
            raise RuntimeError("nothing kept: no pass wrote this streamed model's blocks")
        writer = self.kept.writer
        for name, tensor in outside_blocks(model, self.prefix).items():
            writer.add(name, tensor)
        for shard in writer.close():
            shutil.move(str(self.spool / shard), str(out / shard))
        shutil.move(str(self.spool / INDEX), str(out / INDEX))
        self.close()

    def close(self) -> None:
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)


def outside_blocks(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The state-dict entries outside the decoder blocks (embeddings, final norm, an untied head)."""
    tied = tied_weight_names(model)
    return {name: t for name, t in model.state_dict().items() if not name.startswith(f"{prefix}.") and name not in tied}


def skeleton(auto_class: Any, config: Any, checkpoint: Checkpoint) -> tuple[nn.Module, StreamedModel]:
    """The model with its blocks on the meta device and everything else read from ``checkpoint``."""
    with init_empty_weights(include_buffers=False):
        model = auto_class.from_config(config, dtype=torch.float32)
    prefix = blocks_prefix(model)
    outside = {name: checkpoint.tensor(name) for name in outside_blocks(model, prefix)}
    model.load_state_dict(outside, strict=False, assign=True)
    model.tie_weights()
    return model.eval(), StreamedModel(checkpoint, prefix)


@contextlib.contextmanager
def resident_while_called(model: nn.Module, residency: BlockResidency) -> Iterator[None]:
    """Each decoder block entered when it is called and left when it returns, so that a whole
    forward pass (an export's parity reference, a perplexity) holds one block at a time."""
    handles = []
    for index, block in enumerate(transformer_blocks(model)):
        handles.append(block.register_forward_pre_hook(lambda mod, _args, i=index: residency.enter(i, mod)))
        handles.append(block.register_forward_hook(lambda mod, _args, _out, i=index: residency.leave(i, mod)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
