"""Where do DeepSparse's unstructured sparse kernels pay off on this machine?

Two sweeps of small random-weight graphs with a random unstructured share of zeros, every
sparse cell compared with its dense twin in the same run:

* break-even: a chain 4096 -> 11008 -> 4096 -> 11008 -> 4096 (LLaMA-7B's MLP widths) of
  Gemm (transB, bias) + Relu, for several sparsities and numbers of rows (batch x tokens: 1 is
  a decode step, 128 a prefill);
* graph forms, at one row (a decode step): does the way the graph spells a Linear layer decide
  whether the sparse kernels pay? Gemm vs MatMul + Add, 2-D vs 3-D activations (the exported
  decode graph feeds ``[batch, 1, hidden]``), LLaMA's gated MLP, and square 4096 layers.

Writes ``benchmarks/results/deepsparse_kernels.{json,md}``.

    python -m benchmarks.deepsparse_kernels
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.latency import summarize
from pipeline.environment import describe
from runtime.deepsparse_runner import run_deepsparse

RESULTS = Path(__file__).parent / "results"
HIDDEN, INTERMEDIATE = 4096, 11008
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
ROWS = (1, 16, 128)
FORM_SPARSITIES = (0.0, 0.7, 0.9)


@dataclass(frozen=True)
class Form:
    """How a graph spells its Linear layers, and which layers it chains."""

    label: str
    layers: str  # "mlp-chain": up/down alternating; "gated": LLaMA MLP x2; "square": 4 x 4096²
    gemm: bool = False  # Gemm(transB) with the torch-layout weight, else MatMul with [in, out]
    bias: bool = True
    relu: bool = True
    rank3: bool = False  # activations [1, rows, d] instead of [rows, d]


BREAK_EVEN = Form("Gemm(transB) + bias + Relu, 2-D", "mlp-chain", gemm=True)
FORMS = (
    BREAK_EVEN,
    Form("MatMul + Add + Relu, 2-D", "mlp-chain"),
    Form("MatMul only, 2-D", "mlp-chain", bias=False, relu=False),
    Form("MatMul only, 3-D (as the decode graph)", "mlp-chain", bias=False, relu=False, rank3=True),
    Form("LLaMA gated MLP (SiLU), 3-D, x2", "gated", bias=False, relu=False, rank3=True),
    Form("4 x 4096² MatMul + Add + Relu, 2-D", "square"),
)


class _GraphBuilder:
    """Accumulates nodes and random sparse initializers for one graph."""

    def __init__(self, form: Form, sparsity: float, seed: int = 0):
        self.form, self.sparsity = form, sparsity
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def linear(self, name: str, x: str, d_in: int, d_out: int) -> str:
        w = (self.rng.standard_normal((d_in, d_out)) * 0.02).astype(np.float32)
        w[self.rng.random(w.shape) < self.sparsity] = 0.0
        bias = numpy_helper.from_array(np.zeros(d_out, np.float32), f"{name}.b")
        if self.form.gemm:
            self.inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), f"{name}.w"), bias]
            return self.node("Gemm", [x, f"{name}.w", f"{name}.b"], name, transB=1)
        self.inits.append(numpy_helper.from_array(w, f"{name}.w"))
        y = self.node("MatMul", [x, f"{name}.w"], name + (".mm" if self.form.bias else ""))
        if self.form.bias:
            self.inits.append(bias)
            y = self.node("Add", [y, f"{name}.b"], name)
        return y

    def layer(self, name: str, x: str, d_in: int, d_out: int) -> str:
        y = self.linear(name, x, d_in, d_out)
        return self.node("Relu", [y], f"{name}.relu") if self.form.relu else y

    def gated_mlp(self, name: str, x: str) -> str:
        gate = self.linear(f"{name}.gate", x, HIDDEN, INTERMEDIATE)
        up = self.linear(f"{name}.up", x, HIDDEN, INTERMEDIATE)
        silu = self.node("Mul", [gate, self.node("Sigmoid", [gate], f"{name}.sig")], f"{name}.silu")
        down = self.linear(f"{name}.down", self.node("Mul", [silu, up], f"{name}.gu"), INTERMEDIATE, HIDDEN)
        return self.node("Add", [x, down], f"{name}.res")


def build_graph(path: Path, form: Form, rows: int, sparsity: float) -> list[int]:
    """Write the form's graph to ``path``; returns its input shape."""
    g = _GraphBuilder(form, sparsity)
    y = "x"
    if form.layers == "gated":
        for i in range(2):
            y = g.gated_mlp(f"mlp{i}", y)
    else:
        widths = (HIDDEN,) * 5 if form.layers == "square" else (HIDDEN, INTERMEDIATE) * 2 + (HIDDEN,)
        for i, (d_in, d_out) in enumerate(zip(widths, widths[1:])):
            y = g.layer(f"l{i}", y, d_in, d_out)
    shape = [1, rows, HIDDEN] if form.rank3 else [rows, HIDDEN]
    graph = helper.make_graph(g.nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, shape)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return shape


def sweep(form: Form, rows: int, sparsities: tuple[float, ...], work: Path) -> list[dict[str, Any]]:
    """Time the form at each sparsity; speedups are against its first (dense) cell."""
    cells, dense_ms = [], None
    for sparsity in sparsities:
        path = work / "graph.onnx"
        shape = build_graph(path, form, rows, sparsity)
        result = run_deepsparse(path, {"x": np.ones(shape, np.float32)}, warmup=10, repetitions=40)
        stats = summarize(result.times_s)
        dense_ms = dense_ms or stats["median_ms"]
        cells.append({"form": form.label, "rows": rows, "sparsity": sparsity, **stats,
                      "speedup": dense_ms / stats["median_ms"], "native_ops": result.fraction_of_supported_ops,
                      "deepsparse": result.versions["deepsparse"]})
        logging.info("%s, rows %d, sparsity %.2f: %.2f ms (%.2fx)", form.label, rows, sparsity, stats["median_ms"],
                     cells[-1]["speedup"])
    return cells


def _cell(c: dict[str, Any]) -> str:
    return f"{c['median_ms']:.1f} ms ({c['speedup']:.2f}x)"


def render(data: dict[str, Any]) -> str:
    env, cells = data["environment"], data["break_even"]
    lines = ["# DeepSparse unstructured-sparsity break-even on this machine", "",
             f"Measured {data['measured']} on {env['cpu']}, {env['cores']} cores, deepsparse {cells[0]['deepsparse']}. "
             "Random weights, random unstructured zeros; 10 warm-up + 40 timed runs per cell, median (p10/p90 in the "
             "JSON); speedup vs the dense graph of the same form and rows, measured in the same run.", "",
             f"## Break-even: chain {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN}, "
             f"{BREAK_EVEN.label}", "",
             "| rows | " + " | ".join(f"{s:.0%}" for s in SPARSITIES) + " |", "|---|" + "---|" * len(SPARSITIES)]
    for rows in ROWS:
        lines.append(f"| {rows} | " + " | ".join(_cell(c) for c in cells if c["rows"] == rows) + " |")
    forms = data.get("forms", [])
    if forms:
        lines += ["", "## Graph forms at one row (a decode step)", "",
                  "| form | " + " | ".join(f"{s:.0%}" for s in FORM_SPARSITIES) + " | DeepSparse native ops |",
                  "|---|" + "---|" * (len(FORM_SPARSITIES) + 1)]
        for label in dict.fromkeys(c["form"] for c in forms):
            row = [c for c in forms if c["form"] == label]
            lines.append(f"| {label} | " + " | ".join(_cell(c) for c in row) + f" | {row[0]['native_ops']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        break_even = [c for rows in ROWS for c in sweep(BREAK_EVEN, rows, SPARSITIES, Path(tmp))]
        forms = [c for form in FORMS for c in sweep(form, 1, FORM_SPARSITIES, Path(tmp))]
    data = {"measured": time.strftime("%Y-%m-%d %H:%M"), "environment": describe(), "break_even": break_even,
            "forms": forms}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deepsparse_kernels.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "deepsparse_kernels.md").write_text(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
