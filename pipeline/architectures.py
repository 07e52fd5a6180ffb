"""Per-architecture knowledge, in one place (as optimum's exporters keep theirs).

Everything else in the pipeline asks this module where a model's repeated blocks are,
which Auto class loads it and what kind of inputs it takes; nothing else branches on
``model_type``. Adding an architecture means adding one :class:`ArchitectureSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn
from transformers import PreTrainedModel

from pipeline.errors import SparseDeployError


class ModelKind(str, Enum):
    """What the model consumes and how it is evaluated."""

    CAUSAL_LM = "causal-lm"  # token ids in, next-token logits out; perplexity
    TEXT_ENCODER = "text-encoder"  # token ids in, hidden states out
    VISION = "vision"  # pixel values in, hidden states out


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where an architecture keeps what the pipeline needs.

    ``blocks`` is the dotted path, relative to ``model.base_model``, of the
    ``nn.ModuleList`` of repeated transformer blocks that the sequential engine walks.
    """

    model_type: str
    kind: ModelKind
    blocks: str


_SPECS: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("llama", ModelKind.CAUSAL_LM, "layers"),
        ArchitectureSpec("mistral", ModelKind.CAUSAL_LM, "layers"),
        ArchitectureSpec("qwen2", ModelKind.CAUSAL_LM, "layers"),
        ArchitectureSpec("phi3", ModelKind.CAUSAL_LM, "layers"),
        ArchitectureSpec("opt", ModelKind.CAUSAL_LM, "decoder.layers"),
        ArchitectureSpec("bert", ModelKind.TEXT_ENCODER, "encoder.layer"),
        ArchitectureSpec("vit", ModelKind.VISION, "encoder.layer"),
        ArchitectureSpec("dinov2", ModelKind.VISION, "encoder.layer"),
    )
}


def supported_model_types() -> list[str]:
    return sorted(_SPECS)


def spec_for_type(model_type: str) -> ArchitectureSpec:
    try:
        return _SPECS[model_type]
    except KeyError:
        raise SparseDeployError(
            f"unsupported architecture '{model_type}'; supported: {', '.join(supported_model_types())}"
        ) from None


def spec_for(model: PreTrainedModel) -> ArchitectureSpec:
    return spec_for_type(model.config.model_type)


def transformer_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The model's repeated blocks, in execution order."""
    module: nn.Module = model.base_model
    for part in spec_for(model).blocks.split("."):
        module = getattr(module, part)
    if not isinstance(module, nn.ModuleList):
        raise SparseDeployError(f"expected a ModuleList of blocks, found {type(module).__name__}")
    return module


def blocks_prefix(model: PreTrainedModel) -> str:
    """Qualified name of the blocks list inside ``model`` (for naming layers in reports)."""
    base = model.base_model_prefix
    inner = spec_for(model).blocks
    return f"{base}.{inner}" if base and hasattr(model, base) else inner


def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable Linear layers of one block, by name relative to the block."""
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}
