"""Sparse + int8 vs what users pick instead (dense int8 weights), on this machine.

The chain of benchmarks/openvino_sparse_kernels.py (4096 -> 11008 -> 4096 -> 11008 -> 4096,
MatMuls, random weights and zeros) at 1, 8 and 128 rows, one interleaved group per number of
rows:

- dense f32: ONNX Runtime, OpenVINO;
- dense int8, what a user would pick instead of pruning: ONNX Runtime after
  ``quantize_dynamic(weight_type=QInt8)`` (int8 weights, activations quantized per call), and
  OpenVINO's own int8 weight compression (each weight an i8 constant -> Convert -> Multiply by
  its per-channel scale, the pattern OpenVINO's CPU plugin runs as a compressed FullyConnected);
- openvino-sparse with f32 values, and with int8 values (the same sparse weights moved onto their
  per-output-channel int8 grid by pipeline/quantize.py: matmul_q8 at up to 8 rows, and at every
  count on AVX-512 VNNI, whose many-row kernel expands each tile once; above 8 rows on the other
  paths the f32 many-row kernel) at 50 / 70 / 90%.

Speedups against the fastest dense f32 cell and against the fastest dense int8 cell of the
group (ranges of per-round ratios in brackets). Bytes per weight: f32 4, int8 1 (+ scales),
bitmap + f32 0.125 + 4 (1 - s), bitmap + int8 0.125 + (1 - s).

Writes ``benchmarks/results/int8_kernels.{json,md}`` (~15 min):

    .venv/bin/python -m benchmarks.int8_kernels

(``--out benchmarks/results/int8_kernels_<isa>``: another machine's sweep next to the committed one.)
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from benchmarks.deepsparse_kernels import HIDDEN, INTERMEDIATE, build_graph
from benchmarks.openvino_sparse_kernels import FORM, WEIGHTS
from benchmarks.output import kernel_sweep_main
from pipeline.quantize import quantize_rtn
from runtime.bench import INT8_BASELINES, INT8_CONVERTERS, BenchSettings, interleaved, pooled_stats, round_ratios, \
    round_spread, time_cell

RESULTS = Path(__file__).parent / "results"
SPARSITIES = (0.5, 0.7, 0.9)
ROWS = (1, 8, 128)
DENSE_F32 = ("onnxruntime", "openvino")
SETTINGS = BenchSettings(warmup=5, repetitions=20, rounds=2, min_sparsity=0.01)


def bytes_per_weight(runtime: str, sparsity: float, values: str) -> float:
    value_bytes = 1.0 if values == "int8" else 4.0
    return 0.125 + value_bytes * (1 - sparsity) if runtime == "openvino-sparse" else value_bytes


def on_grid(src: Path, dst: Path, min_sparsity: float = 0.0) -> int:
    """The graph with every MatMul weight (Wᵀ: K x N) of at least ``min_sparsity`` zeros on its
    per-output-channel int8 grid, stored dequantized (the pipeline's own rounding, as its quantize
    step leaves a model); how many weights were moved (the tests use it too)."""
    model = onnx.load(str(src))
    moved = 0
    for init in model.graph.initializer:
        wt = numpy_helper.to_array(init)
        if wt.ndim == 2 and wt.dtype == np.float32 and np.mean(wt == 0) >= min_sparsity:
            grid = quantize_rtn(torch.from_numpy(np.ascontiguousarray(wt.T)), init.name).numpy().T
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(grid, dtype=np.float32), init.name))
            moved += 1
    onnx.save(model, str(dst))
    return moved


def _graphs(rows: int, work: Path) -> dict[tuple[str, float, str], Path]:
    """(runtime, sparsity, values) -> the graph it runs."""
    dense = work / "dense.onnx"
    build_graph(dense, FORM, rows, 0.0)
    graphs = {("onnxruntime", 0.0, "f32"): dense, ("openvino", 0.0, "f32"): dense}
    for runtime in INT8_BASELINES:
        graphs[(runtime, 0.0, "int8")] = INT8_CONVERTERS[runtime](dense, work / f"dense-{runtime}")
    for s in SPARSITIES:
        f32, grid = work / f"sparse-{s}.onnx", work / f"sparse-{s}-int8.onnx"
        build_graph(f32, FORM, rows, s)
        on_grid(f32, grid)
        f32.unlink()  # the grid graph serves both: SPARSE_DEPLOY_OV_VALUES=f32 packs it f32
        graphs[("openvino-sparse", s, "f32")] = grid
        graphs[("openvino-sparse", s, "int8")] = grid
    return graphs


def measure_rows(rows: int, work: Path) -> list[dict[str, Any]]:
    graphs = _graphs(rows, work)
    cells = list(graphs)
    feeds = {"x": np.random.default_rng(rows).standard_normal((rows, HIDDEN)).astype(np.float32)}
    runs: list[list[list[float]]] = [[] for _ in cells]
    info: list[dict[str, Any]] = [{} for _ in cells]
    try:
        for r in range(SETTINGS.rounds):
            for i in interleaved(list(range(len(cells))), r):
                runtime, sparsity, values = cells[i]
                logging.info("rows %d, round %d: %s %s at %.0f%%", rows, r + 1, runtime, values, 100 * sparsity)
                os.environ["SPARSE_DEPLOY_OV_VALUES"] = "f32" if values == "f32" else "auto"
                times, info[i] = time_cell(runtime, graphs[cells[i]], feeds, SETTINGS)
                runs[i].append(times)
    finally:
        os.environ.pop("SPARSE_DEPLOY_OV_VALUES", None)
        for path in work.iterdir():
            path.unlink()
    out = [{"rows": rows, "runtime": rt, "sparsity": s, "values": v, **pooled_stats(times),
            **({"sparse_ops": extra["sparse_ops"]} if "sparse_ops" in extra else {})}
           for (rt, s, v), times, extra in zip(cells, runs, info)]
    derive(out)
    return out


def derive(cells: list[dict[str, Any]]) -> None:
    """Bytes per weight, GB/s and both speedups, from the measured medians (re-applied by --render)."""
    for rows in {c["rows"] for c in cells}:
        group = [c for c in cells if c["rows"] == rows]
        bases = {kind: min((c for c in group if c["runtime"] in names), key=lambda c: c["median_ms"])
                 for kind, names in (("f32", DENSE_F32), ("int8", INT8_BASELINES))}
        for c in group:
            bpw = bytes_per_weight(c["runtime"], c["sparsity"], c["values"])
            c.update(bytes_per_weight=bpw, gb_per_s=WEIGHTS * bpw / (c["median_ms"] / 1000) / 1e9)
            for kind, base in bases.items():
                c[f"baseline_{kind}"] = base["runtime"]
                c[f"speedup_vs_{kind}"] = base["median_ms"] / c["median_ms"]
                c[f"round_speedups_vs_{kind}"] = round_ratios(base["round_medians_ms"], c["round_medians_ms"])


def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = ["# Sparse + int8 vs dense int8 (what users pick instead)", "",
             f"Measured {data['measured']} on {env['cpu']}, {env['cores']} cores, ISA {env.get('isa')}; "
             f"onnxruntime {env['packages']['onnxruntime']}, openvino {env['packages'].get('openvino')}.", "",
             f"Chain {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN} of MatMuls ({WEIGHTS / 1e6:.0f}M "
             f"weights), random weights and zeros. Per number of rows all cells in one group, {SETTINGS.rounds} "
             f"interleaved rounds (reversed every other round), {SETTINGS.warmup} warm-up + {SETTINGS.repetitions} timed "
             "runs per cell and round, median of all timed runs. `onnxruntime-int8`: quantize_dynamic (QInt8 weights, "
             "activations quantized per call); `openvino-int8`: OpenVINO's compressed-weight pattern (i8 constant, "
             "Convert, Multiply by the per-channel scale). openvino-sparse int8: the same sparse weights on their "
             "per-output-channel int8 grid; up to 8 rows it runs matmul_q8 (x quantized per row, integer dots), above "
             "that on AVX-512 VNNI too (each tile expanded once to dense int8), on the other paths the f32 many-row "
             "kernel on int8 values. Speedups against the fastest dense f32 and the fastest "
             "dense int8 cell of the group (per-round range in brackets).", ""]
    for rows in ROWS:
        here = [c for c in data["cells"] if c["rows"] == rows]
        if not here:
            continue
        lines += [f"## {rows} row{'s' if rows > 1 else ''}", "",
                  "| runtime | values | sparsity | median ms | p10-p90 ms | vs fastest dense f32 | vs fastest dense int8 "
                  "| bytes/weight | GB/s |", "|---|---|---|---|---|---|---|---|---|"]
        for c in here:
            lines.append(f"| {c['runtime']} | {c['values']} | {c['sparsity']:.0%} | {c['median_ms']:.2f} | "
                         f"{c['p10_ms']:.2f}-{c['p90_ms']:.2f} | {c['speedup_vs_f32']:.2f}x"
                         f"{round_spread(c['round_speedups_vs_f32'])} | {c['speedup_vs_int8']:.2f}x"
                         f"{round_spread(c['round_speedups_vs_int8'])} | {c['bytes_per_weight']:.3f} | "
                         f"{c['gb_per_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return kernel_sweep_main(RESULTS / "int8_kernels", __doc__.split("\n")[0], ROWS, SETTINGS, measure_rows, derive, render,
                             argv)


if __name__ == "__main__":
    sys.exit(main())
