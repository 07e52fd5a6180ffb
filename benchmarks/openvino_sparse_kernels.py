"""Where does our sparse MatMul (runtime/kernels, run as ``openvino-sparse``) pay off, next to
every dense runtime and DeepSparse, on this machine?

The chain 4096 -> 11008 -> 4096 -> 11008 -> 4096 (LLaMA-7B's MLP widths) of plain MatMuls (how
the exported graphs spell a Linear), random weights with a random unstructured share of zeros,
at 1, 16 and 128 rows (1 = a decode step, 128 = a prefill). For each number of rows, one
interleaved group: the dense chain in ONNX Runtime, OpenVINO and DeepSparse; each sparse chain
in openvino-sparse and (at 70% and 90%) DeepSparse. Every cell's speedup is against the fastest
dense runtime of its group, with the range of per-round ratios.

Per cell also: bytes per weight of the stored form (dense f32: 4; bitmap-16: 0.125 + 4 (1 - s)),
the weight stream it achieves (GB/s = weight bytes / median time) and the bandwidth ceiling,
i.e. the speedup it would reach at the fastest dense cell's GB/s (what bounds a one-row cell
that streams its weights once). At one row the group also times a plain read loop over the dense
chain's bytes on the same thread pool (``openvino_runner.stream_read``): the most this machine
streams at that moment, and each cell's GB/s as a share of it.

Writes ``benchmarks/results/openvino_sparse_kernels.{json,md}`` (~15 min):

    .venv/bin/python -m benchmarks.openvino_sparse_kernels
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.deepsparse_kernels import FORMS, HIDDEN, INTERMEDIATE, build_graph
from benchmarks.output import kernel_sweep_main
from runtime import openvino_runner
from runtime.bench import BenchSettings, interleaved, pooled_stats, round_ratios, round_spread, time_cell

RESULTS = Path(__file__).parent / "results"
SPARSITIES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # 0.4-0.6: where the MIN_SPARSITY thresholds are chosen
DEEPSPARSE_SPARSITIES = (0.7, 0.9)
ROWS = (1, 16, 128)
DENSE_RUNTIMES = ("onnxruntime", "openvino", "deepsparse")
FORM = FORMS[2]  # MatMul only, 2-D
WEIGHTS = 2 * (HIDDEN * INTERMEDIATE) * 2  # four layers
SETTINGS = BenchSettings(warmup=5, repetitions=20, rounds=2, min_sparsity=0.01)  # every sparse chain on the op
READ_LOOP = "read loop"  # the streaming reference cell (module docstring), at one row


def bytes_per_weight(runtime: str, sparsity: float) -> float | None:
    """Bytes the runtime streams per logical weight: our op reads bitmap-16 (see
    runtime/kernels/sparse_format.hpp), dense cells f32; DeepSparse's sparse format is not
    documented (None: no GB/s or ceiling claimed for it)."""
    if runtime == "openvino-sparse":
        return 0.125 + 4 * (1 - sparsity)
    return 4.0 if sparsity == 0.0 else None


def derive(cells: list[dict[str, Any]]) -> None:
    """Bytes per weight, GB/s, ceiling and the speedup against the fastest dense cell of each
    group of rows, from the measured medians (also re-applied by ``--render``)."""
    for rows in {c["rows"] for c in cells}:
        group = [c for c in cells if c["rows"] == rows]
        base = min((c for c in group if c["sparsity"] == 0.0 and c["runtime"] in DENSE_RUNTIMES),
                   key=lambda c: c["median_ms"])
        for c in group:
            bpw = bytes_per_weight(c["runtime"], c["sparsity"])
            c.update(bytes_per_weight=bpw, baseline=base["runtime"], speedup=base["median_ms"] / c["median_ms"],
                     round_speedups=round_ratios(base["round_medians_ms"], c["round_medians_ms"]),
                     gb_per_s=None if bpw is None else WEIGHTS * bpw / (c["median_ms"] / 1000) / 1e9,
                     ceiling=None if bpw is None else 4.0 / bpw)  # at the baseline's bandwidth
        read = next((c["gb_per_s"] for c in group if c["runtime"] == READ_LOOP), None)
        for c in group:
            c["share_of_read_loop"] = None if read is None or c["gb_per_s"] is None else c["gb_per_s"] / read


def _time_read_loop(words: np.ndarray) -> list[float]:
    """The read loop timed like a cell (``SETTINGS``' warm-up and repetitions)."""
    for _ in range(SETTINGS.warmup):
        openvino_runner.stream_read(words)
    times = []
    for _ in range(SETTINGS.repetitions):
        start = time.perf_counter()
        openvino_runner.stream_read(words)
        times.append(time.perf_counter() - start)
    return times


def measure_rows(rows: int, work: Path) -> list[dict[str, Any]]:
    graphs = {s: work / f"chain-{s}.onnx" for s in (0.0, *SPARSITIES)}
    feeds = {"x": np.random.default_rng(rows).standard_normal((rows, HIDDEN)).astype(np.float32)}
    for sparsity, path in graphs.items():
        build_graph(path, FORM, rows, sparsity)
    cells = [(rt, 0.0) for rt in DENSE_RUNTIMES] + [("openvino-sparse", s) for s in SPARSITIES] + \
            [("deepsparse", s) for s in DEEPSPARSE_SPARSITIES] + ([(READ_LOOP, 0.0)] if rows == 1 else [])
    words = np.random.default_rng(0).integers(0, 2**63, WEIGHTS // 2, dtype=np.uint64) if rows == 1 else None
    runs: list[list[list[float]]] = [[] for _ in cells]
    info: list[dict[str, Any]] = [{} for _ in cells]
    try:
        for r in range(SETTINGS.rounds):
            for i in interleaved(list(range(len(cells))), r):
                runtime, sparsity = cells[i]
                logging.info("rows %d, round %d: %s at %.0f%%", rows, r + 1, runtime, 100 * sparsity)
                if runtime == READ_LOOP:
                    times, info[i] = _time_read_loop(words), {}
                else:
                    times, info[i] = time_cell(runtime, graphs[sparsity], feeds, SETTINGS)
                runs[i].append(times)
    finally:
        for path in graphs.values():  # 0.7 GB each
            path.unlink(missing_ok=True)
    out = []
    for (runtime, sparsity), times, extra in zip(cells, runs, info):
        out.append({"rows": rows, "runtime": runtime, "sparsity": sparsity, **pooled_stats(times),
                    **({"sparse_ops": extra["sparse_ops"]} if "sparse_ops" in extra else {}),
                    **({"native_ops": extra["fraction_of_supported_ops"],
                        "deepsparse": extra["deepsparse"]["deepsparse"]} if "deepsparse" in extra else {})})
    derive(out)
    return out


def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = ["# Our sparse MatMul (openvino-sparse) vs dense runtimes and DeepSparse", "",
             f"Measured {data['measured']} on {env['cpu']}, {env['cores']} cores, ISA {env.get('isa')}; "
             f"onnxruntime {env['packages']['onnxruntime']}, openvino {env['packages'].get('openvino')} (f32), "
             f"deepsparse {next((c['deepsparse'] for c in data['cells'] if 'deepsparse' in c), 'n/a')}.", "",
             f"Chain {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN} of MatMuls, random weights "
             f"and zeros ({WEIGHTS / 1e6:.0f}M weights, {WEIGHTS * 4 / 1e6:.0f} MB in f32). Per number of rows, all "
             f"cells in one group timed in {SETTINGS.rounds} interleaved rounds (back to back, reversed every other "
             f"round), {SETTINGS.warmup} warm-up + {SETTINGS.repetitions} timed runs per cell and round; median of all "
             "timed runs. Speedup = fastest dense cell's median / this median (range of per-round ratios in "
             "brackets). GB/s = weight bytes streamed (bytes per weight x weights) / median. Ceiling = the speedup "
             "at the fastest dense cell's bandwidth (4 / bytes per weight): what a one-row kernel that is bound by "
             "memory could reach. Core-ns per chunk = median x cores / (weights / 16 x rows): the CPU time one "
             "16-column chunk of one row of W costs per row of x; where it stays flat as the sparsity rises, the "
             "kernel is bound by its work per chunk (instructions), not by the bytes it streams. Read loop (1 row): "
             "a plain 2-thread read of the dense chain's bytes on the kernels' thread pool, timed like the cells; "
             "% of read loop = a cell's GB/s over the read loop's, the share of what this machine streamed in the "
             "same run.", ""]
    for rows in ROWS:
        here = [c for c in data["cells"] if c["rows"] == rows]
        if not here:
            continue
        lines += [f"## {rows} row{'s' if rows > 1 else ''}", "",
                  "| runtime | sparsity | median ms | p10-p90 ms | speedup vs fastest dense | bytes/weight | GB/s | ceiling "
                  "| % of read loop | core-ns per chunk |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in here:
            lines.append(f"| {c['runtime']} | {c['sparsity']:.0%} | {c['median_ms']:.2f} | {c['p10_ms']:.2f}-"
                         f"{c['p90_ms']:.2f} | {c['speedup']:.2f}x{round_spread(c['round_speedups'])} | "
                         f"{_num(c['bytes_per_weight'], '.3f')} | {_num(c['gb_per_s'], '.1f')} | "
                         f"{_num(c['ceiling'], '.2f', 'x')} | {_percent(c.get('share_of_read_loop'))} | "
                         f"{core_ns_per_chunk(c, env['cores']):.2f} |")
        lines.append("")
    return "\n".join(lines)


def core_ns_per_chunk(cell: dict[str, Any], cores: int) -> float:
    """CPU nanoseconds per 16-column chunk of one row of W and one row of x (see render)."""
    return cell["median_ms"] * 1e6 * cores / (WEIGHTS / 16 * cell["rows"])


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def main(argv: list[str] | None = None) -> int:
    return kernel_sweep_main(RESULTS / "openvino_sparse_kernels", __doc__.split("\n")[0], ROWS, SETTINGS, measure_rows, derive, render,
                             argv)


if __name__ == "__main__":
    sys.exit(main())
