"""Layer reconstruction error of Wanda, SparseGPT and OATS on real smollm2-135m layers.

Does a method's perplexity follow how well it reconstructs each layer's output? For every
Linear of a few blocks spread over the depth, on the dense model's calibration inputs, each
method prunes the weight to the same compression and we measure the relative output error

    tr(ΔW H ΔWᵀ) / tr(W H Wᵀ),   H = E[x xᵀ],   ΔW = W - Ŵ

(for OATS, Ŵ = S + U·V, compression counted with the low-rank factors). SparseGPT minimises
exactly this per layer (OBS updates); Wanda and OATS do not. Compare with the perplexities in
``quality_oats_smollm2.md``.

    python -m benchmarks.layer_error [--blocks 1 8 15 22 29] [--compressions 0.5 0.6 0.7]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.output import write_results
from pipeline.environment import describe
from pipeline.models import DEFAULT_MODEL, load_model
from pipeline.prune import CalibrationConfig, calibration_batches
from pipeline.pruners import build_pruner
from pipeline.pruners.base import WeightPruner
from pipeline.pruners.oats import OATSPruner
from pipeline.sequential import BlockContext, calibrate_sequentially
from pipeline.statistics import LayerStatistics, Statistic

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
METHODS = ("wanda", "sparsegpt", "oats")


def relative_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``: the share of the layer's output energy the approximation loses."""
    h, w, delta = hessian.double(), weight.double(), (weight - approx).double()
    return float(torch.einsum("oi,ij,oj->", delta, h, delta) / torch.einsum("oi,ij,oj->", w, h, w))


def approximate(pruner: WeightPruner | OATSPruner, weight: torch.Tensor, stats: LayerStatistics,
                compression: float, rows: list[int] | None) -> torch.Tensor:
    """The weight as the method would leave it, re-densified (OATS: S + U·V)."""
    if isinstance(pruner, OATSPruner):
        sparse, factors = pruner.decompose_weight(weight, stats.second_moment, compression, rows)
        return sparse + torch.cat([u @ v for u, v in factors])
    return pruner.prune_weight(weight, stats, compression)


def run(blocks: list[int], compressions: list[float]) -> dict[str, Any]:
    loaded = load_model(DEFAULT_MODEL)
    calibration = CalibrationConfig()
    pruners = {m: build_pruner(m) for m in METHODS}
    layers: dict[str, Any] = {}

    def visit(ctx: BlockContext) -> bool:
        if ctx.index in blocks:
            for name, layer in ctx.layers.items():
                weight, stats = layer.weight.detach().float(), ctx.stats[name]
                layers[f"{ctx.name}.{name}"] = row = {
                    f"{m}-{int(100 * c)}": relative_error(weight, approximate(p, weight, stats, c,
                                                                              ctx.fused_rows.get(name)), stats.hessian)
                    for c in compressions for m, p in pruners.items()}
                log.info("%s.%s: %s", ctx.name, name, ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
        return False  # statistics only: the model stays dense

    calibrate_sequentially(loaded.model, calibration_batches(loaded, calibration),
                           frozenset({Statistic.SECOND_MOMENT, Statistic.GRAM}), visit, description="dense statistics")
    keys = next(iter(layers.values())).keys()
    summary = {k: {"mean": statistics.fmean(r[k] for r in layers.values()),
                   "median": statistics.median(r[k] for r in layers.values())} for k in keys}
    return {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": describe(),
        "settings": {"model": DEFAULT_MODEL, "blocks": blocks, "compressions": compressions,
                     "pruners": {m: p.config() for m, p in pruners.items()},
                     "calibration": calibration.protocol().to_dict()},
        "layers": layers,
        "summary": summary,
    }


def markdown(result: dict[str, Any]) -> str:
    env, s, summary = result["environment"], result["settings"], result["summary"]
    cal = s["calibration"]
    lines = [
        "# Layer reconstruction error: Wanda, SparseGPT, OATS on smollm2-135m",
        "",
        f"Measured {result['measured']} on {env['cpu']} ({env['cores']} cores), torch {env['packages']['torch']}.",
        "",
        f"- Blocks {s['blocks']}, every Linear; the dense model's inputs on {cal['windows']} x {cal['seq_len']} "
        f"tokens of `{cal['source']}`; each method at the same compression (OATS: rank ratio "
        f"{s['pruners']['oats']['rank_ratio']}, {s['pruners']['oats']['iterations']} iterations, low-rank factors "
        "counted).",
        "- Relative error `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` per layer; mean and median over the layers.",
        "",
        "| compression | " + " | ".join(f"{m} mean | {m} median" for m in METHODS) + " | OATS / SparseGPT (mean) "
        "| OATS / Wanda (mean) |",
        "|---|" + "---|" * (2 * len(METHODS) + 2),
    ]
    for c in s["compressions"]:
        cell = {m: summary[f"{m}-{int(100 * c)}"] for m in METHODS}
        lines.append(f"| {c:.0%} | " + " | ".join(f"{cell[m]['mean']:.4f} | {cell[m]['median']:.4f}" for m in METHODS)
                     + f" | {cell['oats']['mean'] / cell['sparsegpt']['mean']:.2f}x "
                       f"| {cell['oats']['mean'] / cell['wanda']['mean']:.2f}x |")
    lines += ["", "## Per layer", "", "| layer | " + " | ".join(next(iter(result["layers"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(result["layers"].values())))]
    for name, row in result["layers"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 8, 15, 22, 29])
    parser.add_argument("--compressions", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    parser.add_argument("--out", type=Path, default=RESULTS / "layer_error_smollm2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.blocks, args.compressions)
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
