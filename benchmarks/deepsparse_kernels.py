"""Where do DeepSparse's unstructured sparse kernels pay off on this machine?

Three sweeps of small random-weight graphs with a random unstructured share of zeros, every
sparse cell compared with its dense twin in the same run, the graphs of one comparison timed in
interleaved rounds (``measure_group``):

* break-even: a chain 4096 -> 11008 -> 4096 -> 11008 -> 4096 (LLaMA-7B's MLP widths) of
  Gemm (transB, bias) + Relu, for several sparsities and numbers of rows (batch x tokens: 1 is
  a decode step, 128 a prefill);
* graph forms, at one row (a decode step): does the way the graph spells a Linear layer decide
  whether the sparse kernels pay? Gemm vs MatMul + Add, 2-D vs 3-D activations (the exported
  decode graph feeds ``[batch, 1, hidden]``), LLaMA's gated MLP, and square 4096 layers;
* OATS vs unstructured at equal compression: the same chain (as the decode graph spells it),
  each layer either one MatMul with a share ρ of zeros (Wanda, SparseGPT) or OATS's
  ``x·S + (x·V)·U`` with the same stored count (S sparser, two thin dense factors), for a range
  of compressions at 1 and 128 rows. Where, if anywhere, can OATS's 1.37x over a comparably
  pruned model come from on this machine's kernels?

Writes ``benchmarks/results/deepsparse_kernels.{json,md}``; ``--only`` re-runs one sweep and
keeps the others' committed results.

    python -m benchmarks.deepsparse_kernels [--only break-even|forms|compression]
"""

from __future__ import annotations

import argparse
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

from runtime.bench import interleaved, pooled_stats, round_ratios, round_spread
from pipeline.environment import describe
from pipeline.pruners.oats import budget
from runtime.deepsparse_runner import DeepSparseResult, run_deepsparse

RESULTS = Path(__file__).parent / "results"
HIDDEN, INTERMEDIATE = 4096, 11008
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
ROWS = (1, 16, 128)
FORM_SPARSITIES = (0.0, 0.7, 0.9)
COMPRESSIONS = (0.5, 0.6, 0.7, 0.8, 0.9)
COMPRESSION_ROWS = (1, 128)
RANK_RATIO = 0.25  # OATS's default κ (pipeline.pruners.oats)
ROUNDS, WARMUP, REPETITIONS = 2, 5, 20  # per cell and round: 40 timed runs per cell in all


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
    """Accumulates nodes and random sparse initializers for one graph. ``sparsity`` is the
    share of each layer's dense parameter count not stored: with ``rank_ratio`` κ > 0 the
    layer is OATS-shaped (``pipeline.pruners.oats.budget`` splits what is kept between a sparse
    term and rank-r factors), else one weight with that share of zeros."""

    def __init__(self, form: Form, sparsity: float, seed: int = 0, rank_ratio: float = 0.0):
        self.form, self.sparsity, self.rank_ratio = form, sparsity, rank_ratio
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def weight(self, d_in: int, d_out: int, sparsity: float) -> np.ndarray:
        w = (self.rng.standard_normal((d_in, d_out)) * 0.02).astype(np.float32)
        w[self.rng.random(w.shape) < sparsity] = 0.0
        return w

    def linear(self, name: str, x: str, d_in: int, d_out: int) -> str:
        if self.rank_ratio > 0:
            return self.sparse_plus_low_rank(name, x, d_in, d_out)
        w = self.weight(d_in, d_out, self.sparsity)
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

    def sparse_plus_low_rank(self, name: str, x: str, d_in: int, d_out: int) -> str:
        """``x·S + (x·V)·U`` as the OATS export spells it (three MatMuls and an Add)."""
        if self.form.gemm or self.form.bias:
            raise ValueError("the OATS-shaped layer is spelled with plain MatMuls only")
        b = budget(d_out, d_in, self.sparsity, self.rank_ratio)
        for suffix, shape, sparsity in ((".s", (d_in, d_out), b.sparse_sparsity), (".v", (d_in, b.rank), 0.0),
                                        (".u", (b.rank, d_out), 0.0)):
            self.inits.append(numpy_helper.from_array(self.weight(*shape, sparsity), name + suffix))
        sparse = self.node("MatMul", [x, f"{name}.s"], f"{name}.xs")
        low = self.node("MatMul", [self.node("MatMul", [x, f"{name}.v"], f"{name}.xv"), f"{name}.u"], f"{name}.xvu")
        return self.node("Add", [sparse, low], name)

    def layer(self, name: str, x: str, d_in: int, d_out: int) -> str:
        y = self.linear(name, x, d_in, d_out)
        return self.node("Relu", [y], f"{name}.relu") if self.form.relu else y

    def gated_mlp(self, name: str, x: str) -> str:
        gate = self.linear(f"{name}.gate", x, HIDDEN, INTERMEDIATE)
        up = self.linear(f"{name}.up", x, HIDDEN, INTERMEDIATE)
        silu = self.node("Mul", [gate, self.node("Sigmoid", [gate], f"{name}.sig")], f"{name}.silu")
        down = self.linear(f"{name}.down", self.node("Mul", [silu, up], f"{name}.gu"), INTERMEDIATE, HIDDEN)
        return self.node("Add", [x, down], f"{name}.res")


def build_graph(path: Path, form: Form, rows: int, sparsity: float, rank_ratio: float = 0.0) -> list[int]:
    """Write the form's graph to ``path``; returns its input shape."""
    g = _GraphBuilder(form, sparsity, rank_ratio=rank_ratio)
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


@dataclass(frozen=True)
class Cell:
    """One graph of a sweep: its form, rows, share of the dense count not stored, and (OATS
    shape) rank ratio."""

    form: Form
    rows: int
    sparsity: float
    rank_ratio: float = 0.0


def _row(cell: Cell, results: list[DeepSparseResult]) -> dict[str, Any]:
    """One cell's rounds as one row: statistics of all timed runs and each round's median."""
    row = {"form": cell.form.label, "rows": cell.rows, "sparsity": cell.sparsity, "rank_ratio": cell.rank_ratio,
           **pooled_stats([r.times_s for r in results]),
           "native_ops": results[0].fraction_of_supported_ops, "deepsparse": results[0].versions["deepsparse"]}
    logging.info("%s, rows %d, sparsity %.2f, rank ratio %.2f: %.2f ms", cell.form.label, cell.rows, cell.sparsity,
                 cell.rank_ratio, row["median_ms"])
    return row


def measure_group(cells: list[Cell], work: Path) -> list[dict[str, Any]]:
    """Build every graph of one comparison, then time them in ``ROUNDS`` interleaved rounds
    (``runtime.bench.interleaved``): measured one after another, a drift of the machine's
    speed would pass for a speedup. Speedups are against the group's first cell, as the ratio
    of pooled medians and round by round."""
    paths = [work / f"graph{i}.onnx" for i in range(len(cells))]
    feeds = [{"x": np.ones(build_graph(path, c.form, c.rows, c.sparsity, c.rank_ratio), np.float32)}
             for path, c in zip(paths, cells)]
    results: list[list[DeepSparseResult]] = [[] for _ in cells]
    try:
        for r in range(ROUNDS):
            for i in interleaved(list(range(len(cells))), r):
                results[i].append(run_deepsparse(paths[i], feeds[i], warmup=WARMUP, repetitions=REPETITIONS))
    finally:
        for path in paths:  # a 4096 <-> 11008 chain weighs 0.7 GB on disk
            path.unlink(missing_ok=True)
    rows = [_row(c, res) for c, res in zip(cells, results)]
    for row in rows:
        row["speedup"] = rows[0]["median_ms"] / row["median_ms"]
    for row in rows[1:]:  # the baseline would only compare with itself
        row["round_speedups"] = round_ratios(rows[0]["round_medians_ms"], row["round_medians_ms"])
    return rows


def sweep(form: Form, rows: int, sparsities: tuple[float, ...], work: Path) -> list[dict[str, Any]]:
    """The form at each sparsity, against its first (dense) cell."""
    return measure_group([Cell(form, rows, sparsity) for sparsity in sparsities], work)


COMPRESSION_FORM = FORMS[3]  # MatMul only, 3-D: how the exported decode graph spells a Linear


def sweep_compression(rows: int, work: Path) -> list[dict[str, Any]]:
    """Dense, then unstructured and OATS-shaped at each compression, all in one interleaved
    group. Speedups are against the dense cell; each OATS cell also carries its ratio to the
    unstructured cell of the same compression (pooled and per round)."""
    cells = [Cell(COMPRESSION_FORM, rows, 0.0)]
    for compression in COMPRESSIONS:
        cells += [Cell(COMPRESSION_FORM, rows, compression), Cell(COMPRESSION_FORM, rows, compression, RANK_RATIO)]
    measured = measure_group(cells, work)
    for unstructured, oats in zip(measured[1::2], measured[2::2]):
        oats["vs_unstructured"] = unstructured["median_ms"] / oats["median_ms"]
        oats["vs_unstructured_rounds"] = round_ratios(unstructured["round_medians_ms"], oats["round_medians_ms"])
    return measured


def _cell(c: dict[str, Any]) -> str:
    return f"{c['median_ms']:.1f} ms, {c['speedup']:.2f}x{round_spread(c.get('round_speedups'))}"


PROTOCOL = (f"graphs of one comparison built first, then timed in {ROUNDS} interleaved rounds (back to back, "
            f"reversed every other round), {WARMUP} warm-up + {REPETITIONS} timed runs per cell and round; median "
            "of all timed runs (p10/p90 in the JSON), speedup = ratio of medians, then the range of the per-round "
            "ratios")


def render(data: dict[str, Any]) -> str:
    env, cells = data["environment"], data["break_even"]
    lines = ["# DeepSparse unstructured-sparsity break-even on this machine", "",
             f"Measured {_dates(data)} on {env['cpu']}, {env['cores']} cores, deepsparse {cells[0]['deepsparse']}. "
             "Random weights, random unstructured zeros; speedup vs the dense graph of the same form and rows, "
             "measured in the same run. Protocol:", ""]
    by_protocol: dict[str, list[str]] = {}
    for key in data["measured_sweeps"]:
        by_protocol.setdefault(data["protocols"][key], []).append(key)
    lines += [f"- {', '.join(keys)}: {protocol}" for protocol, keys in by_protocol.items()]
    lines += ["", f"## Break-even: chain {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN}, "
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
    return "\n".join(lines + _render_compression(data.get("compression", []))) + "\n"


def _dates(data: dict[str, Any]) -> str:
    return "; ".join(f"{k} {v}" for k, v in data["measured_sweeps"].items())


def _render_compression(cells: list[dict[str, Any]]) -> list[str]:
    if not cells:
        return []
    lines = ["", f"## OATS-shaped vs unstructured at equal compression ({COMPRESSION_FORM.label}, "
             f"rank ratio {RANK_RATIO})", "",
             "Each layer keeps (1 - compression) of its dense parameter count: unstructured = one weight with that "
             "share of zeros; OATS = sparse term S (sparser) + rank-r factors V, U, budget as "
             "`pipeline.pruners.oats.budget`. Speedups vs the dense chain of the same rows; the last column is the "
             "OATS paper's comparison (target 1.37x).", "",
             "| rows | compression | S sparsity | unstructured | OATS-shaped | OATS vs unstructured |",
             "|---|---|---|---|---|---|"]
    for rows in dict.fromkeys(c["rows"] for c in cells):
        here = [c for c in cells if c["rows"] == rows]
        dense = here[0]
        lines.append(f"| {rows} | dense | - | {dense['median_ms']:.1f} ms | - | - |")
        for unstructured, oats in zip(here[1::2], here[2::2]):
            s_sparsity = budget(HIDDEN, INTERMEDIATE, oats["sparsity"], RANK_RATIO).sparse_sparsity
            vs = f"{oats['vs_unstructured']:.2f}x{round_spread(oats.get('vs_unstructured_rounds'))}"
            lines.append(f"| {rows} | {oats['sparsity']:.0%} | {s_sparsity:.1%} | {_cell(unstructured)} | "
                         f"{_cell(oats)} | {vs} |")
    return lines


SWEEPS = {
    "break-even": lambda work: [c for rows in ROWS for c in sweep(BREAK_EVEN, rows, SPARSITIES, work)],
    "forms": lambda work: [c for form in FORMS for c in sweep(form, 1, FORM_SPARSITIES, work)],
    "compression": lambda work: [c for rows in COMPRESSION_ROWS for c in sweep_compression(rows, work)],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(SWEEPS), help="re-run one sweep, keep the others' results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    previous = RESULTS / "deepsparse_kernels.json"
    data = json.loads(previous.read_text()) if args.only and previous.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in [args.only] if args.only else SWEEPS:
            data[key.replace("-", "_")] = SWEEPS[key](Path(tmp))
            data.setdefault("measured_sweeps", {})[key] = time.strftime("%Y-%m-%d %H:%M")
            data.setdefault("protocols", {})[key] = PROTOCOL
    data.update(measured=time.strftime("%Y-%m-%d %H:%M"), environment=describe())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deepsparse_kernels.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "deepsparse_kernels.md").write_text(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
