"""Where do DeepSparse's unstructured sparse kernels pay off on this machine?

A chain 4096 -> 11008 -> 4096 -> 11008 -> 4096 (LLaMA-7B's MLP widths) of Gemm (transB,
bias) + Relu, random weights with a random unstructured share of zeros, timed in
DeepSparse for several sparsities and numbers of rows (batch x tokens: 1 is a decode step,
128 a prefill). Every sparse cell is compared with the dense chain of the same rows, in
one run. Writes ``benchmarks/results/deepsparse_kernels.{json,md}``.

    python -m benchmarks.deepsparse_kernels
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.latency import summarize
from pipeline.environment import describe
from runtime.deepsparse_runner import run_deepsparse

RESULTS = Path(__file__).parent / "results"
WIDTHS = (4096, 11008, 4096, 11008, 4096)
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
ROWS = (1, 16, 128)


def gemm_chain(path: Path, rows: int, sparsity: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (d_in, d_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        w = (rng.standard_normal((d_out, d_in)) * 0.02).astype(np.float32)
        w[rng.random(w.shape) < sparsity] = 0.0
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(d_out, np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"], transB=1),
                  helper.make_node("Relu", [f"g{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, WIDTHS[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [rows, WIDTHS[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in ROWS:
            dense_ms = None
            for sparsity in SPARSITIES:
                path = Path(tmp) / f"chain_{rows}_{sparsity}.onnx"
                gemm_chain(path, rows, sparsity)
                result = run_deepsparse(path, {"x": np.ones((rows, WIDTHS[0]), np.float32)}, warmup=10, repetitions=40)
                stats = summarize(result.times_s)
                dense_ms = dense_ms or stats["median_ms"]
                cells.append({"rows": rows, "sparsity": sparsity, **stats, "speedup": dense_ms / stats["median_ms"],
                              "deepsparse": result.versions["deepsparse"]})
                logging.info("rows %d sparsity %.2f: %.2f ms (%.2fx)", rows, sparsity, stats["median_ms"],
                             cells[-1]["speedup"])
    env = describe()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deepsparse_kernels.json").write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M"),
                                                                 "environment": env, "cells": cells}, indent=2) + "\n")
    lines = ["# DeepSparse unstructured-sparsity break-even on this machine", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {env['cpu']}, {env['cores']} cores, deepsparse "
             f"{cells[0]['deepsparse']}. Chain {' -> '.join(map(str, WIDTHS))} of Gemm(transB, bias) + Relu, random "
             "weights, random unstructured zeros; 10 warm-up + 40 timed runs per cell, median (p10/p90 in the JSON); speedup vs the dense chain of the same rows.", "",
             "| rows | " + " | ".join(f"{s:.0%}" for s in SPARSITIES) + " |",
             "|---|" + "---|" * len(SPARSITIES)]
    for rows in ROWS:
        row = [c for c in cells if c["rows"] == rows]
        lines.append(f"| {rows} | " + " | ".join(f"{c['median_ms']:.1f} ms ({c['speedup']:.2f}x)" for c in row) + " |")
    (RESULTS / "deepsparse_kernels.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
