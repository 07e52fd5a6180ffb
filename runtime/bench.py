"""``sparse-deploy bench``: CPU latency of artifacts in DeepSparse, ONNX Runtime and OpenVINO.

For each artifact and runtime, in one run: prefill latency (the ``prefill`` graph on a
``seq_len``-token input), decode latency per token (the ``decode`` graph: one new token
after ``past`` cached ones), and the throughputs they imply. Each figure is the median of
``rounds`` x ``repetitions`` timed runs (``warmup`` untimed ones per round), with the
10th/90th percentiles; rounds interleave the artifacts (see :func:`measure`).
Writes ``latency.json``, ``latency.md`` and ``latency.png`` under the report directory.

DeepSparse runs in its child process; ONNX Runtime runs here with thread spinning off;
OpenVINO runs here twice, as itself (``openvino``) and with the project's sparse MatMul
extension (``openvino-sparse``, ``runtime/openvino_runner.py``). Besides each runtime's
sparse-vs-dense ratio, every cell is compared with the fastest dense runtime of the same run
(``fastest_dense``): a sparse kernel only counts if it beats the best dense one there is.
Two opt-in runtimes are what a user who quantizes instead of pruning would run, the densest
artifact's graphs with int8 weights (``onnxruntime-int8``: ``quantize_dynamic``;
``openvino-int8``: OpenVINO's own weight compression), and the report adds every cell against
the fastest of them (sparse + int8 must beat dense int8, not dense f32).
When an artifact with sparse weights is not faster than its dense twin in DeepSparse
(decode), the run fails loudly: such a graph is probably not on DeepSparse's sparse kernels.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoConfig

from export.artifact import read_manifest
from export.graphs import KVGeometry, decode_inputs
from export.ort_session import session
from pipeline.architectures import block_index, spec_for_type
from pipeline.environment import describe
from pipeline.atomic import check_directory_path
from pipeline.errors import SparseDeployError, first_line
from runtime import deepsparse_runner, openvino_runner
from runtime.onnxruntime_runner import quantize_weights_int8, time_runs

log = logging.getLogger(__name__)

# What a user who quantizes instead of pruning would run: each graph with int8 weights, converted
# by the runtime's own tool at the start of a bench (runtime -> converter: source graph, target).
INT8_CONVERTERS: dict[str, Callable[[Path, Path], Path]] = {
    "onnxruntime-int8": lambda src, dst: quantize_weights_int8(src, dst.with_suffix(".onnx")),
    "openvino-int8": lambda src, dst: openvino_runner.compress_weights_int8(src, dst.with_suffix(".xml")),
}
RUNTIMES = ("deepsparse", "onnxruntime", "openvino", "openvino-sparse", *INT8_CONVERTERS)
# The default set: the int8 baselines are opt-in (each converts every graph once per bench).
DEFAULT_RUNTIMES = RUNTIMES[:4]
FLAVOURS = ("decode", "prefill", "encoder")  # the graphs an artifact may hold (export.artifact)
# The baselines a sparse kernel must beat: every runtime on the dense model except our sparse op,
# which on a dense model is OpenVINO's own kernels under another name.
DENSE_BASELINES = ("deepsparse", "onnxruntime", "openvino")
# What sparse + int8 must beat: dense int8 weights (issue: sparse + int8).
INT8_BASELINES = tuple(INT8_CONVERTERS)


@dataclass(frozen=True)
class BenchSettings:
    seq_len: int = 128
    past: int = 127
    batch: int = 1
    threads: int | None = None  # None: all cores
    warmup: int = 3
    repetitions: int = 10  # timed runs per cell and round
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
    flavours: tuple[str, ...] = FLAVOURS  # which of each artifact's graphs to time (those it has)
    rounds: int = 2  # interleaved passes over all artifacts, order reversed every other pass
    # openvino-sparse: share of zeros from which a weight goes sparse; None: by the graph's flavour
    # (openvino_runner.min_sparsity_for)
    min_sparsity: float | None = None

    def __post_init__(self) -> None:
        unknown = set(self.runtimes) - set(RUNTIMES)
        if not self.runtimes:
            raise SparseDeployError(f"no runtime given; choose from {', '.join(RUNTIMES)}")
        if unknown:
            raise SparseDeployError(f"unknown runtime(s) {', '.join(sorted(unknown))}; choose from {', '.join(RUNTIMES)}")
        if not self.flavours or set(self.flavours) - set(FLAVOURS):
            raise SparseDeployError(f"flavours must be some of {', '.join(FLAVOURS)}, got {', '.join(self.flavours) or 'none'}")
        if min(self.seq_len, self.batch, self.repetitions, self.rounds) < 1 or self.past < 0 or self.warmup < 0:
            raise SparseDeployError("seq_len, batch, repetitions and rounds must be >= 1; past and warmup >= 0")

    def sparse_threshold(self, flavour: str | None) -> float:
        """openvino-sparse's share of zeros for a graph of ``flavour`` (None: not known)."""
        return openvino_runner.min_sparsity_for(flavour) if self.min_sparsity is None else self.min_sparsity


def summarize(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
            "stdev_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, "n": len(ms)}


def block_sparsity(manifest: dict[str, Any]) -> float | None:
    """Share of zeros in the decoder blocks' weights, from the manifest's weight list; None
    for a graph without blocks (a proxy's head-only artifact). Low-rank factors count as
    stored non-zeros against the dense weight they help replace (the sparse term has its
    full shape), so for OATS this is the compression rate."""
    blocks = _block_weights(manifest)
    total = sum(int(np.prod(w["shape"])) for w in blocks if w.get("pattern") != "low-rank")
    return 1 - block_nonzeros(manifest) / total if total else None


def block_nonzeros(manifest: dict[str, Any]) -> int:
    """Stored non-zeros of the decoder blocks' weights: what "densest" means across unstructured,
    low-rank and sliced artifacts (a sliced one has no zeros, but fewer weights)."""
    return sum(w["nonzeros"] for w in _block_weights(manifest))


def _block_weights(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for name, w in manifest["weights"].items() if block_index(name) is not None]


def _feeds(artifact: Path, flavour: str, s: BenchSettings) -> dict[str, np.ndarray]:
    """Inputs of one graph at the bench's sizes, from the artifact's config (what the model is)."""
    config = AutoConfig.from_pretrained(artifact, trust_remote_code=False)
    if flavour == "decode":
        return {k: v.numpy() for k, v in decode_inputs(KVGeometry.from_config(config), seq=1, past=s.past,
                                                       batch=s.batch).items()}
    graph_input = spec_for_type(config.model_type).kind.encoder_input  # prefill: token ids, as a text encoder's
    return {graph_input.name: graph_input.example(config, s.batch, s.seq_len)}


def time_cell(runtime: str, graph: Path, feeds: dict[str, np.ndarray], s: BenchSettings,
              flavour: str | None = None) -> tuple[list[float], dict[str, Any]]:
    """Timed runs (seconds) of one graph in one runtime, and what the runtime says about it
    (also the kernel sweeps' timer). An int8 runtime takes the graph its converter wrote
    (``INT8_CONVERTERS``; ``measure`` converts each graph once)."""
    if runtime.startswith("onnxruntime"):
        return time_runs(session(graph, threads=s.threads), feeds, s.warmup, s.repetitions), {}
    if runtime.startswith("openvino"):
        compiled, ops = openvino_runner.compile_model(graph, sparse=runtime == "openvino-sparse", threads=s.threads,
                                                      min_sparsity=s.sparse_threshold(flavour))
        times = openvino_runner.time_runs(compiled, feeds, s.warmup, s.repetitions)
        return times, ({"sparse_ops": ops.as_dict()} if runtime == "openvino-sparse" else {})
    result = deepsparse_runner.run_deepsparse(graph, feeds, num_cores=s.threads, warmup=s.warmup,
                                              repetitions=s.repetitions)
    return result.times_s, {"compile_s": result.compile_s, "timed_major_faults": result.timed_major_faults,
                            "fraction_of_supported_ops": result.fraction_of_supported_ops,
                            "deepsparse": result.versions}


@dataclass
class BenchRow:
    artifact: str
    label: str
    sparsity: float | None
    flavour: str
    runtime: str
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    nonzeros: int | None = None  # stored non-zeros of the decoder blocks


@dataclass(frozen=True)
class _Cell:
    artifact: Path
    label: str
    sparsity: float | None
    nonzeros: int
    flavour: str
    graph: Path


def _cells(artifacts: list[Path], labels: list[str] | None, flavours: tuple[str, ...] = FLAVOURS) -> list[_Cell]:
    cells, present = [], set()
    for i, artifact in enumerate(artifacts):
        manifest = read_manifest(artifact)
        present |= set(manifest["flavours"])
        for flavour, info in manifest["flavours"].items():
            if flavour in flavours:
                cells.append(_Cell(artifact, labels[i] if labels else artifact.name, block_sparsity(manifest),
                                   block_nonzeros(manifest), flavour, artifact / info["file"]))
    if not cells:
        raise SparseDeployError(f"no graph to time: the artifacts hold {', '.join(sorted(present))}, the bench "
                                f"asks for {', '.join(flavours)}")
    return cells


def measure(artifacts: list[Path], s: BenchSettings, labels: list[str] | None = None) -> list[BenchRow]:
    """Every artifact's graphs in every runtime, in ``s.rounds`` interleaved rounds.

    Why rounds: this machine's speed drifts (``benchmarks.drift``: one dense decode graph's
    medians ranged 47.8-64.7 ms within a few minutes), so measuring one artifact after the
    other credits whichever ran later. In each round the artifacts of one graph and runtime
    run back to back, in reversed order every other round; each row keeps its per-round
    medians, and speedups are also taken round by round, between cells minutes apart at most.
    """
    cells = _cells(artifacts, labels, s.flavours)
    baseline_cells = _int8_baseline_cells(cells)
    rows = {(i, rt): BenchRow(str(c.artifact), c.label, c.sparsity, c.flavour, rt, nonzeros=c.nonzeros)
            for i, c in enumerate(cells) for rt in s.runtimes if rt not in INT8_BASELINES or i in baseline_cells}
    runs: dict[tuple[int, str], list[tuple[list[float], dict[str, Any]]]] = {key: [] for key in rows}
    with tempfile.TemporaryDirectory(prefix="sparse-deploy-int8-") as work:
        graphs = _Int8Graphs(Path(work))
        for r, i, runtime in _schedule(cells, s):
            if (i, runtime) not in rows:
                continue
            row, cell = rows[i, runtime], cells[i]
            if row.error:
                continue  # failed in an earlier round: do not compile it again
            log.info("round %d/%d: %s / %s / %s", r + 1, s.rounds, cell.label, cell.flavour, runtime)
            try:
                graph = graphs.get(runtime, cell.graph)
                runs[i, runtime].append(time_cell(runtime, graph, _feeds(cell.artifact, cell.flavour, s), s,
                                                       cell.flavour))
            except Exception as exc:  # a graph a runtime cannot load or run is a failed cell, reported, not a traceback
                row.error = str(exc) if isinstance(exc, SparseDeployError) else first_line(exc)
                log.error("%s / %s / %s failed: %s", cell.label, cell.flavour, runtime, row.error)
                log.debug("cell failure", exc_info=True)
    for key, row in rows.items():
        if not row.error:
            row.stats = _pooled(runs[key])
    return list(rows.values())


def _int8_baseline_cells(cells: list[_Cell]) -> set[int]:
    """The cells the int8 runtimes time: the densest artifact's (they are baselines; on a pruned
    graph they would run as fast, its zeros stored as int8 zeros) and those without decoder
    blocks (a proxy's head-only graph, which the per-block figures subtract)."""
    with_blocks = [c for c in cells if c.sparsity is not None]
    densest = min(with_blocks, key=densest_first).artifact if with_blocks else None
    return {i for i, c in enumerate(cells) if c.sparsity is None or c.artifact == densest}


class _Int8Graphs:
    """The int8 runtimes' graphs, converted once per bench (the first round) into ``work``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.done: dict[tuple[str, Path], Path] = {}

    def get(self, runtime: str, graph: Path) -> Path:
        if runtime not in INT8_CONVERTERS:
            return graph
        key = (runtime, graph)
        if key not in self.done:
            log.info("converting %s for %s", graph, runtime)
            self.done[key] = INT8_CONVERTERS[runtime](graph, self.work / f"{len(self.done)}-{graph.stem}")
        return self.done[key]


def interleaved(group: list[int], r: int) -> list[int]:
    """The order in which round ``r`` times a group of things compared with each other: back
    to back, reversed every other round, so that a steady drift of the machine's speed favours
    none of them."""
    return group if r % 2 == 0 else group[::-1]


def _schedule(cells: list[_Cell], s: BenchSettings) -> Iterator[tuple[int, int, str]]:
    """``(round, cell index, runtime)`` in measuring order: per round, per graph flavour and
    runtime, every artifact back to back (``interleaved``)."""
    for r in range(s.rounds):
        for flavour in dict.fromkeys(c.flavour for c in cells):
            group = [i for i, c in enumerate(cells) if c.flavour == flavour]
            for runtime in s.runtimes:
                yield from ((r, i, runtime) for i in interleaved(group, r))


def _pooled(runs: list[tuple[list[float], dict[str, Any]]]) -> dict[str, Any]:
    """One cell's rounds as one row: statistics of all timed runs, each round's median, and
    what the runtime reported (DeepSparse's compile time as the median over rounds)."""
    info = runs[0][1]
    if "compile_s" in info:
        info = {**info, "compile_s": float(np.median([i["compile_s"] for _, i in runs]))}
    return {**pooled_stats([times for times, _ in runs]), **info}


def pooled_stats(rounds: list[list[float]]) -> dict[str, Any]:
    """Timed runs (seconds) of one cell, round by round: statistics of all of them pooled, and
    each round's median (what per-round speedups are taken from)."""
    return {**summarize([t for times in rounds for t in times]),
            "round_medians_ms": [float(np.median(times)) * 1000 for times in rounds]}


def speedups(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """Each sparse artifact against the densest one (most stored non-zeros in the decoder
    blocks, then fewest zeros), per flavour and runtime (artifacts without decoder blocks take
    no part). By share of zeros alone a sliced artifact would pass for the dense one: the
    random dense proxy holds a few exact zeros, the sliced one fewer."""
    out = []
    for flavour in sorted({r.flavour for r in rows}):
        for runtime in sorted({r.runtime for r in rows}):
            group = [r for r in rows if r.flavour == flavour and r.runtime == runtime and not r.error
                     and r.sparsity is not None]
            if len(group) < 2:
                continue
            dense = min(group, key=densest_first)
            for r in group:
                if r is not dense:
                    out.append({"flavour": flavour, "runtime": runtime, "artifact": r.label, "baseline": dense.label,
                                "sparsity": r.sparsity, "speedup": dense.stats["median_ms"] / r.stats["median_ms"],
                                "round_speedups": round_ratios(dense.stats.get("round_medians_ms", []),
                                                               r.stats.get("round_medians_ms", []))})
    return out


def densest_first(cell: BenchRow | _Cell) -> tuple[int, float]:
    """Sort key: most stored non-zeros in the decoder blocks, then fewest zeros first."""
    return -(cell.nonzeros or 0), cell.sparsity or 0.0


def fastest_dense(rows: list[BenchRow], baselines: tuple[str, ...] = DENSE_BASELINES) -> list[dict[str, Any]]:
    """Every cell against the fastest of ``baselines`` on the densest artifact, per flavour: the
    figure a user deciding whether to prune needs (a sparse kernel that beats a slow dense runtime
    but not the fastest one buys nothing). With ``INT8_BASELINES``: against dense int8 weights."""
    out = []
    for flavour in sorted({r.flavour for r in rows}):
        group = [r for r in rows if r.flavour == flavour and not r.error and r.sparsity is not None]
        if not group:
            continue
        densest = min(group, key=densest_first).artifact
        base = min((r for r in group if r.artifact == densest and r.runtime in baselines),
                   key=lambda r: r.stats["median_ms"], default=None)
        if base is None:
            continue
        for r in group:
            if r is not base:
                out.append({"flavour": flavour, "runtime": r.runtime, "artifact": r.label, "sparsity": r.sparsity,
                            "baseline": base.label, "baseline_runtime": base.runtime,
                            "speedup": base.stats["median_ms"] / r.stats["median_ms"],
                            "round_speedups": round_ratios(base.stats.get("round_medians_ms", []),
                                                           r.stats.get("round_medians_ms", []))})
    return out


def round_ratios(baseline_ms: list[float], other_ms: list[float]) -> list[float]:
    """Baseline over other, round by round: each ratio compares times measured close together
    (a non-positive time, e.g. a block time below the noise, gives no ratio)."""
    return [b / o for b, o in zip(baseline_ms, other_ms) if o > 0]


def sparse_not_faster(table: list[dict[str, Any]], min_sparsity: float = 0.3) -> list[dict[str, Any]]:
    return [t for t in table if t["runtime"] == "deepsparse" and t["flavour"] in ("decode", "encoder")
            and t["sparsity"] >= min_sparsity and t["speedup"] <= 1.0]


def write_report(rows: list[BenchRow], s: BenchSettings, out: Path, title: str = "Latency",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """latency.{json,md,png} in ``out``, all rendered before the first is written, so that a
    failure (in the plot, say) leaves no report that looks complete but lacks a part."""
    table = speedups(rows)
    report = {"title": title, "measured": time.strftime("%Y-%m-%d %H:%M"), "environment": describe(),
              "settings": {**s.__dict__, "min_sparsity": {f: s.sparse_threshold(f) for f in FLAVOURS}},
              "rows": [r.__dict__ for r in rows], "speedups": table,
              "fastest_dense": fastest_dense(rows), "fastest_int8_dense": fastest_dense(rows, INT8_BASELINES),
              "sparse_not_faster_in_deepsparse": sparse_not_faster(table), **(extra or {})}
    rendered = {"latency.json": (json.dumps(report, indent=2) + "\n").encode(),
                "latency.md": _markdown(report).encode(), "latency.png": _plot(rows, title)}
    out.mkdir(parents=True, exist_ok=True)
    for name, data in rendered.items():
        (out / name).write_bytes(data)
    return report


def _markdown(report: dict[str, Any]) -> str:
    env, s = report["environment"], report["settings"]
    ds = next((r["stats"].get("deepsparse", {}).get("deepsparse") for r in report["rows"]
               if r["runtime"] == "deepsparse" and r["stats"]), "n/a")
    lines = [f"# {report['title']}", "",
             f"Measured {report['measured']} on {env['cpu']}, {env['cores']} cores ({env.get('isa', 'n/a')}); onnxruntime "
             f"{env['packages']['onnxruntime']}, openvino {env['packages'].get('openvino', 'n/a')}, deepsparse {ds}, "
             f"torch {env['packages']['torch']}. OpenVINO runs f32 (INFERENCE_PRECISION_HINT), like the others.", "",
             f"Protocol: batch {s['batch']}; prefill = {s['seq_len']} tokens, no cache; decode = 1 token after "
             f"{s['past']} cached; threads {s['threads'] or 'all'}; all cells in one run, in {s.get('rounds', 1)} "
             "interleaved rounds (each round runs every artifact of one graph and runtime back to back, in reversed "
             f"order every other round), each cell {s['warmup']} warm-up + {s['repetitions']} timed runs per round; "
             "median of all timed runs with 10th-90th percentiles. Speedups: ratio of those medians, and in brackets "
             "the range of the per-round ratios (this machine's speed drifts: a ratio that moves between rounds is "
             "that drift, not the artifact).", "",
             "| artifact | block sparsity | graph | runtime | median ms | p10-p90 ms | tokens/s | DeepSparse native ops "
             "| MatMuls on the sparse op |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r["error"]:
            lines.append(f"| {r['label']} | {_fmt(r['sparsity'])} | {r['flavour']} | {r['runtime']} | failed: "
                         f"{r['error'][:120]} | | | | |")
            continue
        st = r["stats"]
        tokens = s["batch"] * (s["seq_len"] if r["flavour"] == "prefill" else 1)
        frac = st.get("fraction_of_supported_ops")
        lines.append(f"| {r['label']} | {_fmt(r['sparsity'])} | {r['flavour']} | {r['runtime']} | {st['median_ms']:.2f} | "
                     f"{st['p10_ms']:.2f}-{st['p90_ms']:.2f} | {tokens / st['median_ms'] * 1000:.1f} | "
                     f"{'-' if frac is None else f'{frac:.1%}'} | {_sparse_ops(st.get('sparse_ops'))} |")
    lines += ["", "## Speedup over the densest artifact (median / median)", "",
              "| graph | runtime | artifact | block sparsity | speedup |", "|---|---|---|---|---|"]
    lines += [f"| {t['flavour']} | {t['runtime']} | {t['artifact']} | {t['sparsity']:.2f} | {t['speedup']:.2f}x"
              f"{round_spread(t.get('round_speedups'))} |" for t in report["speedups"]]
    for key, what in (("fastest_dense", "dense runtime"), ("fastest_int8_dense", "dense int8 runtime")):
        if key == "fastest_dense" or report.get(key):
            lines += ["", f"## Speedup over the fastest {what} (median / median)", "",
                      "| graph | runtime | artifact | block sparsity | baseline | speedup |", "|---|---|---|---|---|---|"]
            lines += [f"| {t['flavour']} | {t['runtime']} | {t['artifact']} | {t['sparsity']:.2f} | {t['baseline']} in "
                      f"{t['baseline_runtime']} | {t['speedup']:.2f}x{round_spread(t.get('round_speedups'))} |"
                      for t in report.get(key, [])]
    bad = report["sparse_not_faster_in_deepsparse"]
    if bad:
        lines += ["", "**Sparse artifacts not faster than dense in DeepSparse:** " +
                  ", ".join(f"{t['artifact']} ({t['flavour']}, {t['speedup']:.2f}x)" for t in bad)]
    for section in report.get("sections", []):
        lines += ["", section]
    return "\n".join(lines) + "\n"


def round_spread(ratios: list[float] | None) -> str:
    """`` (rounds 1.20-1.31x)``: the range of per-round speedups, where there were several rounds."""
    return f" (rounds {min(ratios):.2f}-{max(ratios):.2f}x)" if ratios and len(ratios) > 1 else ""


def _sparse_ops(ops: dict[str, Any] | None) -> str:
    if not ops:
        return "-"
    paths = ", ".join(f"{isa} {n}" for isa, n in sorted(ops["isa"].items()))
    int8 = ops.get("dense_int8_matmuls", 0)  # absent in reports written before int8 dense weights
    total = ops["sparse_matmuls"] + ops["dense_constant_matmuls"] + int8
    return (f"{ops['sparse_matmuls']} of {total}" + (f" ({paths})" if paths else "") +
            (f", {int8} dense int8" if int8 else ""))


def _fmt(sparsity: float | None) -> str:
    return "no blocks" if sparsity is None else f"{sparsity:.2f}"


def _plot(rows: list[BenchRow], title: str) -> bytes:
    """The latency figure as PNG bytes: latency vs block sparsity, one panel per graph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flavours = sorted({r.flavour for r in rows})
    fig, axes = plt.subplots(1, len(flavours), figsize=(5 * len(flavours), 4), squeeze=False)
    for ax, flavour in zip(axes[0], flavours):
        for runtime in sorted({r.runtime for r in rows}):
            pts = sorted(((r.sparsity, r.stats) for r in rows if r.flavour == flavour and r.runtime == runtime
                          and not r.error and r.sparsity is not None), key=lambda p: p[0])
            if not pts:
                continue
            x = [p[0] for p in pts]
            med = [p[1]["median_ms"] for p in pts]
            err = [[m - p[1]["p10_ms"] for m, p in zip(med, pts)], [p[1]["p90_ms"] - m for m, p in zip(med, pts)]]
            ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label=runtime)
        ax.set_title(f"{flavour}")
        ax.set_xlabel("decoder-block weight sparsity")
        ax.set_ylabel("latency (ms, median, p10-p90)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle("\n".join(textwrap.wrap(title, 50 * len(flavours))), fontsize=10)  # long variant lists wrap
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return png.getvalue()


def failed_cells(rows: list[BenchRow]) -> list[BenchRow]:
    return [r for r in rows if r.error]


def bench(artifacts: list[Path], s: BenchSettings, out: Path, allow_slower: bool = False,
          labels: list[str] | None = None, title: str = "Latency") -> dict[str, Any]:
    """Measure, write the report, and fail when a cell could not be measured or sparsity did
    not pay off in DeepSparse (the report is written either way: it says which and why)."""
    check_directory_path(out)
    if "deepsparse" in s.runtimes and not deepsparse_runner.available():
        raise SparseDeployError("DeepSparse venv missing (run `make install`) or pass --runtime onnxruntime")
    if "openvino-sparse" in s.runtimes:
        openvino_runner.library()  # one line naming the build command, before any timing
    rows = measure(artifacts, s, labels)
    report = write_report(rows, s, out, title=title)
    failed = failed_cells(rows)
    if failed:
        first = failed[0]
        raise SparseDeployError(f"{len(failed)} of {len(rows)} measurements failed (first: {first.label} / "
                                f"{first.flavour} / {first.runtime}: {first.error}); report in {out}")
    bad = report["sparse_not_faster_in_deepsparse"]
    if bad and not allow_slower:
        names = ", ".join(f"{t['artifact']} ({t['flavour']} {t['speedup']:.2f}x)" for t in bad)
        raise SparseDeployError(f"sparse artifact(s) not faster than dense in DeepSparse: {names}; report in {out}")
    return report
