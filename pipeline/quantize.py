"""int8 weights after pruning: symmetric, one scale per output channel, zeros kept zero.

Why this grid: it is what the sparse kernels store (runtime/kernels: int8 non-zeros with one f32
scale per row, scale = max |row| / 127) and what ONNX Runtime's quantize_dynamic uses for
weights, so a quantized artifact stays a plain f32 ONNX file whose weights lie exactly on that
grid: ONNX Runtime and DeepSparse read the dequantized numbers, the OpenVINO extension sees the
grid and packs the non-zeros as int8 (its ``int8_grid`` test: every row's max |w| is 127 steps).

Two methods over the same grid:

- ``rtn``: round to nearest. No calibration.
- ``gptq``: round column by column and push each column's rounding error onto the columns not
  yet rounded with the Optimal Brain Surgeon update (the inverse Hessian's Cholesky factor, as
  SparseGPT prunes; SparseGPT's paper quantizes this way jointly with pruning). The mask is
  already fixed: a pruned weight is a grid point too, zero, rounded to at its turn like any
  other (the updates it received on the way are part of its error and pushed on), so the mask
  survives and nothing of the compensation is thrown away. Each row's largest weight is pinned
  at its grid end (±127 steps) so that the row keeps the scale it started with. (Re-zeroing the
  pruned weights after every update instead threw their share away: on a 70%-sparse test
  weight that was worse than round-to-nearest.)

The LM head stays f32 unless ``head: true``, as llm-compressor's schemes leave ``lm_head`` out by
default: its error lands on the logits directly. The dense int8 baselines of the bench (ONNX
Runtime's quantize_dynamic, OpenVINO's weight compression) do compress it, and at LLaMA-7B's
vocabulary it streams as many bytes as two MLP projections, so a latency comparison against them
sets it (the OpenVINO extension runs a head on the grid as OpenVINO's own int8 compression). The
head is rounded to nearest whatever the method: GPTQ's Hessian for it would be the final hidden
states' second moment, which the block-by-block calibration never reaches. A head tied to the
input embeddings (smollm2) is refused: its grid would be the embedding table's too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pipeline.architectures import ModelKind, block_linear_layers, head_is_tied, output_head
from pipeline.errors import SparseDeployError
from pipeline.models import LoadedModel
from pipeline.progress import progress
from pipeline.pruners.sparsegpt import inverse_hessian_cholesky
from pipeline.sequential import BlockContext, calibrate_sequentially
from pipeline.statistics import Statistic

log = logging.getLogger(__name__)

BITS = (8,)  # what the kernels store
GRANULARITIES = ("channel",)  # one scale per output channel (row of W)
METHODS = ("rtn", "gptq")
INT8_MAX = 127


@dataclass(frozen=True)
class QuantizeConfig:
    """The recipe's ``quantize`` section; validated here, before any compute."""

    bits: int = 8
    granularity: str = "channel"
    method: str = "rtn"
    dampening: float = 0.01  # gptq: added to H's diagonal, as a share of its mean
    block_size: int = 128  # gptq: columns whose errors are pushed on together
    head: bool = False  # the LM head too, rounded to nearest (module docstring: why off by default)

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise SparseDeployError(f"quantize: {self.bits}-bit weights are not supported (the kernels store "
                                    f"{', '.join(map(str, BITS))}-bit values)")
        if self.granularity not in GRANULARITIES:
            raise SparseDeployError(f"quantize: granularity '{self.granularity}' is not supported; choose "
                                    f"{', '.join(GRANULARITIES)} (one scale per output channel: what the kernels store)")
        if self.method not in METHODS:
            raise SparseDeployError(f"quantize: method '{self.method}' is unknown; choose {', '.join(METHODS)}")
        if not 0 < self.dampening < 1 or self.block_size < 1:
            raise SparseDeployError(f"quantize: dampening must lie in (0, 1) and block_size be >= 1 "
                                    f"(got {self.dampening}, {self.block_size})")

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq"


def channel_scales(weight: torch.Tensor, name: str) -> torch.Tensor:
    """One scale per row, max |row| / 127 (1 for an all-zero row, which stays zero). A weight that
    is all zeros or holds inf/nan has no meaningful int8 grid: refused, naming the layer."""
    if not torch.isfinite(weight).all():
        raise SparseDeployError(f"quantize: {name} holds inf or nan: no int8 grid")
    if not weight.any():
        raise SparseDeployError(f"quantize: {name} is all zeros: nothing to quantize (a layer pruned away?)")
    scale = weight.abs().amax(dim=1, keepdim=True) / INT8_MAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def to_grid(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The nearest grid points, clamped to ±127 steps (dequantized: scale * q)."""
    return torch.clamp(torch.round(values / scale), -INT8_MAX, INT8_MAX) * scale


def quantize_rtn(weight: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """Round to nearest on the per-row grid; zeros stay zero (round(0) = 0)."""
    w = weight.to(torch.float32)
    return to_grid(w, channel_scales(w, name)).to(weight.dtype)


def quantize_gptq(weight: torch.Tensor, hessian: torch.Tensor, dampening: float = 0.01, block_size: int = 128,
                  name: str = "weight") -> torch.Tensor:
    """Round column by column with OBS error compensation (module docstring), keeping the
    pruning mask and each row's scale."""
    w = weight.to(torch.float32).clone()
    channel_scales(w, name)
    u = inverse_hessian_cholesky(hessian, w, dampening)  # zeroes inputs never seen: they cannot matter
    scale = channel_scales(w, name)
    keep = w != 0
    rows = torch.arange(w.shape[0])
    pin_col = w.abs().argmax(dim=1)
    pin_value = to_grid(w[rows, pin_col].unsqueeze(1), scale).squeeze(1)  # exactly ±127 steps
    d_in = w.shape[1]
    for start in range(0, d_in, block_size):
        end = min(start + block_size, d_in)
        w_blk, u_blk, keep_blk = w[:, start:end], u[start:end, start:end], keep[:, start:end]
        err = torch.zeros_like(w_blk)
        for i in range(end - start):
            col = w_blk[:, i]
            q = torch.where(keep_blk[:, i], to_grid(col.unsqueeze(1), scale).squeeze(1), torch.zeros_like(col))
            pinned = pin_col == start + i
            q[pinned] = pin_value[pinned]
            err[:, i] = (col - q) / u_blk[i, i]
            w_blk[:, i:] -= err[:, i : i + 1] @ u_blk[i : i + 1, i:]
            w_blk[:, i] = q
        w[:, end:] -= err @ u[start:end, end:]
    return w.to(weight.dtype)


def _error(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.double() - before.double()).norm() / before.double().norm().clamp_min(1e-30))


def _quantize_layer(name: str, layer: nn.Linear, config: QuantizeConfig, hessian: torch.Tensor | None) -> dict[str, Any]:
    before = layer.weight.data.clone()
    if config.method == "gptq":
        after = quantize_gptq(before, hessian, config.dampening, config.block_size, name)
    else:
        after = quantize_rtn(before, name)
    layer.weight.data.copy_(after)
    entry: dict[str, Any] = {"layer": name, "weight_error": _error(before, after)}
    if hessian is not None:  # the error on the calibration inputs: ||ΔW X|| / ||W X||
        h = hessian.double()
        delta = (after - before).double()
        entry["output_error"] = float(torch.sqrt(torch.einsum("ij,jk,ik->", delta, h, delta).clamp_min(0) /
                                                 torch.einsum("ij,jk,ik->", before.double(), h, before.double())
                                                 .clamp_min(1e-30)))
    return entry


def worst_layer(entry: dict[str, Any]) -> dict[str, Any]:
    """The layer of a ``quantize_model`` entry with the largest weight error."""
    return max(entry["layers"], key=lambda e: e["weight_error"])


_NO_HEAD = "head is set but the model has no LM head (a vision encoder?)"
_TIED_HEAD = ("shares its weight with the input embeddings (tie_word_embeddings): its int8 grid would be the "
              "embedding table's too; leave head unset")


def check_head_config(kind: ModelKind, config: Any) -> None:
    """``head: true`` on a model that has an untied LM head, judged from its configuration (a
    recipe's check before any stage runs, whose error names the key ``quantize.head``;
    ``quantize_model`` checks the loaded model again)."""
    if kind is not ModelKind.CAUSAL_LM:
        raise SparseDeployError(_NO_HEAD)
    if getattr(config, "tie_word_embeddings", False):
        raise SparseDeployError(f"the LM head {_TIED_HEAD}")


def _head(loaded: LoadedModel) -> tuple[str, nn.Linear]:
    """The LM head that ``head: true`` asks for; refused when there is none or it is tied."""
    found = output_head(loaded.model)
    if found is None:
        raise SparseDeployError(f"quantize: {_NO_HEAD}")
    if head_is_tied(loaded.model):
        raise SparseDeployError(f"quantize: {found[0]} {_TIED_HEAD}")
    return found


@torch.no_grad()
def quantize_head(loaded: LoadedModel) -> dict[str, Any]:
    """Round the LM head to nearest on its grid, in place (``head: true``; also the latency
    proxies' head-only reference for a model whose head is int8); its per-layer entry."""
    name, layer = _head(loaded)
    return _quantize_layer(name, layer, QuantizeConfig(method="rtn"), None)


def check_quantizable(loaded: LoadedModel, config: QuantizeConfig) -> None:
    """Every layer to quantize has a grid (finite, not all zeros), and a head asked for is
    there and untied: checked before any compute."""
    for name, layer in block_linear_layers(loaded.model).items():
        channel_scales(layer.weight.data, name)
    if config.head:
        name, layer = _head(loaded)
        channel_scales(layer.weight.data, name)


@torch.no_grad()
def quantize_model(loaded: LoadedModel, config: QuantizeConfig,
                   batches: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Quantize every block Linear of ``loaded.model`` in place; returns the record's
    ``quantization`` entry (settings and the error per layer). ``batches``: the calibration
    windows, needed by ``gptq`` only."""
    check_quantizable(loaded, config)
    if not block_linear_layers(loaded.model):
        raise SparseDeployError("quantize: the model has no plain Linear layers left (OATS's sparse + low-rank "
                                "layers are not quantized)")
    layers: list[dict[str, Any]] = []
    if config.needs_calibration:
        if not batches:
            raise SparseDeployError("quantize: method gptq needs calibration batches")

        def visit(ctx: BlockContext) -> bool:
            for name, layer in ctx.layers.items():
                layers.append(_quantize_layer(f"{ctx.index}.{name}", layer, config, ctx.stats[name].hessian))
            return True

        calibrate_sequentially(loaded.model, batches, frozenset({Statistic.GRAM}), visit, description="quantize (gptq)")
    else:
        for name, layer in progress(block_linear_layers(loaded.model).items(), desc="quantize (rtn)", unit="layers"):
            layers.append(_quantize_layer(name, layer, config, None))
    if config.head:
        layers.append(quantize_head(loaded))
    entry = {**asdict(config), "scheme": "symmetric, zero point 0, scale = max |row| / 127, stored dequantized (f32)",
             "layers": layers}
    worst = worst_layer(entry)
    log.info("quantized %d layers to int8 (%s): worst weight error %.4f in %s", len(layers), config.method,
             worst["weight_error"], worst["layer"])
    return entry
