"""A full-depth model larger than memory on one machine: peak memory, time and disk of each stage.

A recipe (recipes/proxies/*-full-*.yaml) names a full-depth proxy checkpoint
(benchmarks/proxy_checkpoint.py; LLaMA-7B's: its configuration, 32 blocks, random weights,
26.95 GB of fp32 in shards), the variant to prune it to (OWL+Wanda 70%), the calibration set and
the runtimes that time the pruned artifact. Pruning and export are streamed
(pipeline/streaming.py, export/streamed.py: one block resident at a time). Each stage runs in its own
child process and its peak RSS is the child's own, so no stage is charged for another's memory:
the child's high-water mark (``VmHWM``, and its own children's ``ru_maxrss``: DeepSparse's worker)
written as it exits. Not the parent's ``wait4`` ``ru_maxrss``: at ``exec`` Linux folds the
high-water mark of the parent's memory (which the child shared until then) into the child's, so
a small stage would be charged the parent's RSS.

- ``checkpoint``: writing the proxy checkpoint (skipped when cached: then not measured);
- ``load``: ``load_streamed`` alone (skeleton, embeddings, final norm, head);
- ``prune``: ``load_streamed`` + ``prune_model`` (OWL's observing pass, then the pruning pass)
  + ``save_pruned``: what ``sparse-deploy prune --stream`` does;
- ``export``: ``export_artifact(..., stream=True)`` of the pruned directory, parity included (what
  ``sparse-deploy export --stream`` does);
- ``export-dense`` (recipes with ``dense: true``): the same for the dense checkpoint;
- ``bench-<runtime>``: each artifact's decode (1 token after 127) and prefill (128 tokens) latency
  at full depth, batch 1, in one runtime, each (runtime, artifact) in its own process per round, so
  that one model at a time is resident; ``rounds`` interleaved, order reversed every other one.

Besides the high-water mark, the parent samples the child's ``/proc/<pid>/status`` every 0.2 s: a
runtime that memory-maps the external data (ONNX Runtime, OpenVINO) has the weights' file pages
in its RSS, which the kernel reclaims under pressure, so peak RSS is given with its anonymous
(heap) and file-backed parts. When the disk cannot hold checkpoint, pruned model and artifact at
once, the checkpoint (deterministic, rewritten in ~2 min) is removed after pruning.

Calibration (the recipe's; 8 windows x 256 tokens): the usual C4 text, token ids folded into the vocabulary
(as for every proxy; computed by the parent, handed to the child as a file, so the child does
not load the tokenizer's model). Each stage's measurement is kept in the work directory, so
``--stages`` reruns some and the report keeps the others'.

    .venv/bin/python -m benchmarks.scale --recipe recipes/proxies/llama7b-full-owl-wanda-70.yaml
    # ~1 h on 2 cores; ~55-80 GB of disk under the cache
    # --blocks 2: the same stages on 2 blocks (minutes), written beside as OUT_2blocks.{json,md}
    # --render: the committed report again, with the extrapolation of a proxy run made after it
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from benchmarks.cache import tree_gb
from benchmarks.output import write_results
from benchmarks.proxies import PROXIES, Variant, proxy_batches
from benchmarks.proxy_checkpoint import proxy_checkpoint
from pipeline.environment import describe
from pipeline.errors import SparseDeployError
from pipeline.residency import status_kb
from pipeline.shards import INDEX

log = logging.getLogger(__name__)

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "proxies" / "llama7b-full-owl-wanda-70.yaml"
BENCH_PAST, BENCH_SEQ, BENCH_REPETITIONS = 127, 128, 5  # the proxies' decode and prefill sizes; few runs: ~1 s each
BASE_STAGES = ("checkpoint", "load", "prune")
ARTIFACT_DIRS = {"pruned": "artifact", "dense": "artifact-dense"}
STAGE_OUTPUTS = {"prune": "pruned", "export": ARTIFACT_DIRS["pruned"], "export-dense": ARTIFACT_DIRS["dense"]}


@dataclass(frozen=True)
class ScaleRecipe:
    """A full-depth run as data (recipes/proxies/*-full-*.yaml): the proxy, the variant (as
    benchmarks/proxies.py writes it), the calibration set, the runtimes that time the artifact
    (those whose loaded form fits the machine), and where the results go."""

    proxy: str
    variant: Variant
    samples: int
    seq_len: int
    runtimes: tuple[str, ...]
    out: Path
    dense: bool = False  # export and time the dense checkpoint too (when its loaded form fits the machine)
    rounds: int = 1  # interleaved rounds over (runtime, artifact), order reversed every other round
    extrapolate: Path | None = None  # the 2-block proxy recipe whose extrapolation is set beside this run

    @classmethod
    def load(cls, path: Path) -> "ScaleRecipe":
        data = yaml.safe_load(path.read_text())
        allowed = {"proxy", "variant", "calibration", "runtimes", "out", "dense", "rounds", "extrapolate"}
        if not isinstance(data, dict) or set(data) - allowed or data.get("proxy") not in PROXIES:
            raise SparseDeployError(f"{path}: a full-depth recipe has keys {', '.join(sorted(allowed))} and a proxy "
                                    f"among {', '.join(PROXIES)}")
        calibration = data.get("calibration", {})
        return cls(data["proxy"], Variant.parse(data["variant"]), int(calibration.get("samples", 8)),
                   int(calibration.get("seq_len", 256)), tuple(data.get("runtimes", ())),
                   ROOT / data.get("out", f"benchmarks/results/scale_{data['proxy']}"), bool(data.get("dense", False)),
                   int(data.get("rounds", 1)), ROOT / data["extrapolate"] if data.get("extrapolate") else None)

    @property
    def artifacts(self) -> tuple[str, ...]:
        return ("dense", "pruned") if self.dense else ("pruned",)

    @property
    def stages(self) -> tuple[str, ...]:
        exports = ("export-dense", "export") if self.dense else ("export",)
        return (*BASE_STAGES, *exports, *(f"bench-{r}" for r in self.runtimes))


def _stage(stage: str, work: Path, blocks: int, recipe: ScaleRecipe) -> None:
    """One stage, in this (child) process."""
    from pipeline.models import load_streamed
    from pipeline.owl import OWLConfig
    from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
    from pipeline.pruners import build_pruner

    if stage.split(":")[0] not in recipe.stages:
        raise SystemExit(f"unknown stage {stage}; the recipe's are {', '.join(recipe.stages)}")
    source = work / "source.txt"
    if stage == "checkpoint":
        source.write_text(str(proxy_checkpoint(recipe.proxy, blocks)))
        return
    if stage in ("export", "export-dense"):  # the pruned export reads the pruned shards alone (no checkpoint)
        from export.artifact import export_artifact

        model, artifact = (work / "pruned", "pruned") if stage == "export" else (source.read_text(), "dense")
        export_artifact(str(model), work / ARTIFACT_DIRS[artifact], overwrite=True, stream=True)
        return
    if stage.startswith("bench-"):  # bench-RUNTIME:ARTIFACT:ROUND
        runtime, artifact, round_ = stage.removeprefix("bench-").split(":")
        _bench(runtime, work, artifact, int(round_))
        return
    loaded = load_streamed(source.read_text())
    if stage == "load":
        return
    batches = torch.load(work / "batches.pt")
    variant = recipe.variant
    result = prune_model(loaded, build_pruner(variant.method, **dict(variant.params)), variant.sparsity,
                         CalibrationConfig(samples=recipe.samples, seq_len=recipe.seq_len),
                         owl=OWLConfig() if variant.owl else None, batches=batches)
    save_pruned(loaded, build_record(loaded, result), work / "pruned", overwrite=True)


def _bench(runtime: str, work: Path, artifact: str, round_: int) -> None:
    """Decode and prefill latency of one artifact at full depth in ``runtime`` (one process: only
    this artifact resident), raw times kept for pooling over rounds."""
    from runtime.bench import BenchSettings, _feeds, time_cell

    directory = work / ARTIFACT_DIRS[artifact]
    settings = BenchSettings(seq_len=BENCH_SEQ, past=BENCH_PAST, warmup=1, repetitions=BENCH_REPETITIONS,
                             runtimes=(runtime,))
    manifest = json.loads((directory / "manifest.json").read_text())
    result = {}
    for flavour, entry in manifest["flavours"].items():
        times, info = time_cell(runtime, directory / entry["file"], _feeds(directory, flavour, settings), settings,
                                 flavour)
        result[flavour] = {"times_s": times, **info}
        log.info("%s %s %s: median %.1f ms", runtime, artifact, flavour, 1000 * sorted(times)[len(times) // 2])
    out = work / "bench" / f"{runtime}-{artifact}-{round_}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _bench_cells(recipe: ScaleRecipe, asked: list[str] | None) -> list[tuple[str, str]]:
    """(runtime, artifact) pairs to time: all of the recipe's, or those ``--stages`` names as
    ``bench-RUNTIME`` (every artifact) or ``bench-RUNTIME:ARTIFACT`` (one)."""
    return [(r, a) for r in recipe.runtimes for a in recipe.artifacts
            if asked is None or f"bench-{r}" in asked or f"bench-{r}:{a}" in asked]


def _bench_schedule(cells: list[tuple[str, str]], rounds: int) -> list[str]:
    """Child stages ``bench-RUNTIME:ARTIFACT:ROUND``: every cell once per round, in reversed order
    every other round (the machine drifts; see docs/export.md)."""
    return [f"bench-{r}:{a}:{round_}" for round_ in range(rounds)
            for r, a in (reversed(cells) if round_ % 2 else cells)]


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants: a runtime may do its work in a worker process of its own
    (DeepSparse runs in its venv's child), whose memory is the stage's too."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return tree


def _memory(pid: int) -> dict[str, int]:
    """Resident anonymous and file-backed kB of a process and its descendants, and their kB swapped
    out (``VmSwap``: nonzero only on a machine with swap); 0s once they are gone."""
    total = {"anon": 0, "file": 0, "swap": 0}
    for member in _process_tree(pid):
        try:
            kb = status_kb(member)
        except OSError:
            continue
        total["anon"] += kb.get("RssAnon", 0)
        total["file"] += kb.get("RssFile", 0) + kb.get("RssShmem", 0)
        total["swap"] += kb.get("VmSwap", 0)
    return total


def _swap_total_gb() -> float:
    """The machine's swap space (``SwapTotal`` of /proc/meminfo): a stage measured with swap is
    labelled so, its latency is not a swap-less machine's."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("SwapTotal:"):
            return int(line.split()[1]) * 1024 / 1e9
    return 0.0


def _peak_file(work: Path, stage: str) -> Path:
    return work / "peaks" / f"{stage}.kb"


def _record_peak(work: Path, stage: str) -> None:
    """This (child) process's peak RSS in kB: its own high-water mark, or its children's where
    larger (a runtime's worker process)."""
    import resource

    own = status_kb()["VmHWM"]
    out = _peak_file(work, stage)
    out.parent.mkdir(exist_ok=True)
    out.write_text(str(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))


def _run_child(stage: str, work: Path, blocks: int, recipe: Path) -> dict[str, float]:
    """Peak RSS (GB; with its anonymous and file-backed parts, sampled) and wall time (s) of one
    stage in its own process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--work", str(work),
                              "--blocks", str(blocks), "--recipe", str(recipe)])
    peaks = {"anon": 0, "file": 0, "swap": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for part, kb in _memory(child.pid).items():
                peaks[part] = max(peaks[part], kb)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    child.wait()
    done.set()
    sampler.join()
    sampled = {"peak_anon_gb": peaks["anon"] * 1024 / 1e9, "peak_file_gb": peaks["file"] * 1024 / 1e9,
               "wall_s": time.perf_counter() - start, "ended": time.strftime("%Y-%m-%d %H:%M")}
    if swap_total := _swap_total_gb():
        sampled |= {"swap_total_gb": swap_total, "peak_swap_gb": peaks["swap"] * 1024 / 1e9}
    if child.returncode:
        error = ("killed (SIGKILL: the kernel's out-of-memory killer, most likely)" if child.returncode == -9
                 else f"exit {child.returncode}")
        log.error("stage %s failed: %s (sampled peak: anonymous %.2f GB, file-backed %.2f GB)", stage, error,
                  sampled["peak_anon_gb"], sampled["peak_file_gb"])
        return {"error": error, **sampled}
    peak_kb = int(_peak_file(work, stage).read_text())
    measured = {"peak_rss_gb": peak_kb * 1024 / 1e9, **sampled}
    log.info("%s: peak RSS %.2f GB (anonymous %.2f, file-backed %.2f sampled), %.0f s", stage,
             measured["peak_rss_gb"], measured["peak_anon_gb"], measured["peak_file_gb"], measured["wall_s"])
    return measured


def _make_room(work: Path, checkpoint: Path) -> bool:
    """Remove the (deterministic) checkpoint when the disk cannot also hold the artifact."""
    if not checkpoint.is_dir() or shutil.disk_usage(work).free > tree_gb(work / "pruned") * 1e9 * 1.05:
        return False
    log.info("removing %s to make room for the artifact (rewritten by the checkpoint stage)", checkpoint)
    shutil.rmtree(checkpoint)
    return True


def _gb(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _depth(data: dict[str, Any]) -> str:
    """'full depth', or 'N blocks' for a shorter comparison run (``--blocks``)."""
    full = data["blocks"] == PROXIES[data["recipe"]["proxy"]][1]
    return "full depth" if full else f"{data['blocks']} blocks"


def markdown(data: dict[str, Any]) -> str:
    env, recipe = data["environment"], data["recipe"]
    depth = _depth(data)
    title = (f"Full-depth {recipe['proxy']} geometry, streamed ({data['blocks']} blocks)" if depth == "full depth"
             else f"{recipe['proxy']} geometry, streamed, {depth} of {PROXIES[recipe['proxy']][1]} (beside the "
                  "full-depth run)")
    lines = [f"# {title}", "",
             f"Measured {data['measured']} on {env['cpu']}, {env['cores']} cores, {data['memory_gib']:.1f} GiB; "
             f"torch {env['packages'].get('torch')}, openvino {env['packages'].get('openvino')}, onnxruntime "
             f"{env['packages'].get('onnxruntime')}. {recipe['variant']}, calibration {recipe['samples']} x "
             f"{recipe['seq_len']} tokens (`{recipe['file']}`). Each stage in its own process: peak RSS is that "
             "process's high-water mark (`VmHWM`); its anonymous (heap) and file-backed parts are the peaks of `/proc/<pid>/status` "
             "sampled every 0.2 s (file-backed pages are memory-mapped weights, which the kernel reclaims under "
             "pressure).", "",
             "| stage | peak RSS (GB) | anonymous (GB) | file-backed (GB) | wall (s) |", "|---|---|---|---|---|"]
    for stage, wall in data["wall_s"].items():
        parts = data["peak_rss_parts_gb"].get(stage, {})
        rss = data["peak_rss_gb"].get(stage)
        if stage.startswith("bench-"):
            continue  # in the latency table
        lines.append(f"| {stage} | {_gb(rss)} | {_gb(parts.get('anonymous'))} | {_gb(parts.get('file_backed'))} "
                     f"| {wall:.0f} |")
    lines += ["", "| on disk | GB |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in data["disk_gb"].items()), "",
              f"Achieved sparsity of the blocks' Linear layers: {data['achieved_sparsity']:.4f}; OWL block sparsities "
              f"{min(data['block_sparsity']):.3f}-{max(data['block_sparsity']):.3f}.", ""]
    if data["latency"]:
        lines += [f"Latency at {depth}, batch 1: decode = 1 token after {BENCH_PAST}, prefill = {BENCH_SEQ} "
                  f"tokens; median (p10-p90) of {BENCH_REPETITIONS} runs after 1 warm-up per round, "
                  f"{_rounds_measured(data['latency'])} of the recipe's {data['recipe']['rounds']} round(s) measured; "
                  "each artifact in its own process per round, so only one "
                  "is resident. Peak RSS: that process's, the most over rounds.", "",
                  "| runtime | artifact | decode (ms) | prefill (ms) | peak RSS (GB) |", "|---|---|---|---|---|"]
        for runtime, artifacts in data["latency"].items():
            for artifact, entry in artifacts.items():
                cells = [f"{v['median_ms']:.1f} ({v['p10_ms']:.1f}-{v['p90_ms']:.1f})" if v else ""
                         for v in (entry.get("decode"), entry.get("prefill"))]
                rss = data["bench_rss_gb"].get(runtime, {}).get(artifact)
                lines.append(f"| {runtime} | {artifact} | {' | '.join(cells)} | {_gb(rss)} |")
        lines.append("")
        for runtime, artifacts in data.get("bench_failed", {}).items():
            for artifact, f in artifacts.items():
                lines.append(f"- {runtime} could not time the {artifact} artifact: {f['error']} (sampled before it "
                             f"ended: anonymous {f['sampled_anonymous_gb']:.2f} GB, file-backed "
                             f"{f['sampled_file_backed_gb']:.2f} GB)")
        for runtime, artifacts in data.get("bench_swap_gb", {}).items():
            for artifact, swap in artifacts.items():
                faults = [f"{flavour} {v['timed_major_faults']}" for flavour, v in
                          data["latency"].get(runtime, {}).get(artifact, {}).items() if "timed_major_faults" in v]
                lines.append(f"- {runtime} {artifact}: measured (last round ended {swap['ended']}) with "
                             f"{swap['swap_total_gb']:.1f} GB of swap on the machine; up to {swap['peak_swap_gb']:.2f} GB of its memory was swapped out; page faults "
                             f"read from disk during its timed runs: {', '.join(faults) or 'not counted'}")
        for flavour, entry in data["speedups"].items():
            parts = [f"{r} {v['vs_fastest_dense']:.2f}x" + (f" (own dense {v['vs_own_dense']:.2f}x)"
                                                              if v["vs_own_dense"] else "")
                     for r, v in entry["pruned"].items()]
            lines.append(f"- {flavour}: pruned vs the fastest dense runtime ({entry['baseline_runtime']}, "
                         f"{entry['baseline_ms']:.1f} ms): {', '.join(parts)}")
        lines.append("")
    lines += _extrapolation_lines(data["extrapolated"], data["latency"], depth)
    lines += [f"Artifact storage: {data['artifact_storage']}", ""]
    return "\n".join(lines)


def _rounds_measured(latency: dict[str, Any]) -> int:
    """Rounds with a measurement (a run stopped part-way reports what it has, and says so)."""
    return max(len(flavour["round_medians_ms"]) for artifacts in latency.values() for entry in artifacts.values()
               for flavour in entry.values())


def _extrapolation_lines(ex: dict[str, Any], latency: dict[str, Any], depth: str = "full depth") -> list[str]:
    if not ex:
        return ["Not measured yet: the 2-block proxy's extrapolation of this configuration on this machine.", ""]
    cpu = "the same CPU" if ex["same_cpu"] else f"**another CPU ({ex['cpu']}): its figures do not compare with these**"
    lines = [f"## {depth.capitalize()} vs the {ex['blocks']}-block extrapolation", "",
             f"From [`{ex['source']}`]({os.path.relpath(ROOT / ex['source'], ROOT / 'benchmarks' / 'results')}) "
             f"(`{ex['recipe']}`, a separate run, measured {ex['measured']} on {cpu}): extrapolated = head-only + {ex['depth']} x "
             "block, block = (proxy - head-only) / blocks, an estimate (benchmarks/proxies.py); error = extrapolated "
             "/ measured - 1.", "",
             "| runtime | artifact | graph | head-only (ms) | block (ms) | extrapolated (ms) | measured (ms) | error |",
             "|---|---|---|---|---|---|---|---|"]
    for runtime, cell in ex["latency"].items():
        for artifact, graphs in cell.items():
            for flavour, v in graphs.items():
                measured = "-" if v["measured_ms"] is None else f"{v['measured_ms']:.1f}"
                error = "-" if v["error"] is None else f"{v['error']:+.1%}"
                lines.append(f"| {runtime} | {artifact} | {flavour} | {v['head_ms']:.1f} | {v['block_ms']:.2f} | "
                             f"{v['extrapolated_ms']:.1f} | {measured} | {error} |")
    lines.append("")
    dense_measured = any("dense" in e for e in latency.values())
    for flavour, v in ex["pruned_vs_extrapolated_dense"].items():
        parts = ", ".join(f"{r} {x:.2f}x" for r, x in v["pruned"].items())
        lines.append(f"- {flavour}: pruned, measured at {depth}, vs dense **extrapolated from its blocks** "
                     f"({v['baseline_runtime']}, the fastest dense runtime of the proxy run: "
                     f"{v['dense_extrapolated_ms']:.1f} ms){'' if dense_measured else ' (no dense artifact timed in this run)'}: "
                     f"{parts}")
    return [*lines, ""]


ARTIFACT_STORAGE = ("one ONNX graph per flavour (decode with KV cache, prefill) and one external data file that "
                    "both share (the prefill's is a hard link): fp32 initializers, zeros stored, at 64 KiB-aligned "
                    "offsets, written tensor by tensor by the streamed export. ONNX Runtime and OpenVINO map the data "
                    "file instead of reading it; openvino-sparse packs each sparse MatMul weight into its bitmap "
                    "form when the model is read.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="a full-depth recipe (default: %(default)s)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, default=None,
                        help="decoder blocks (default: the real depth; fewer for a quick check or a comparison, "
                             "written to OUT_<blocks>blocks)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated stages to run (default: all; the others' last measurements are "
                             "reported; bench-RUNTIME:ARTIFACT times one artifact; '' only rewrites the report)")
    parser.add_argument("--render", action="store_true",
                        help="rewrite the committed report with the extrapolation of the proxy run now in "
                             "benchmarks/results, measuring nothing (a full-depth run's work directory, 55-80 GB, "
                             "is deleted after it; the proxy run may come later)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    recipe = ScaleRecipe.load(args.recipe)
    blocks = args.blocks if args.blocks is not None else PROXIES[recipe.proxy][1]
    if args.stage:
        _stage(args.stage, args.work, blocks, recipe)
        _record_peak(args.work, args.stage)
        return 0
    out = recipe.out if blocks == PROXIES[recipe.proxy][1] else recipe.out.with_name(f"{recipe.out.name}_{blocks}blocks")
    if args.render:
        render(recipe, out)
        return 0
    from pipeline.models import cache_dir

    work = cache_dir() / "scale" / f"{recipe.proxy}-{recipe.variant.directory_tag()}-{blocks}blocks"
    work.mkdir(parents=True, exist_ok=True)
    vocab = PROXIES[recipe.proxy][0](0).vocab_size
    torch.save(proxy_batches(vocab, recipe.samples, recipe.seq_len), work / "batches.pt")
    measured_file = work / "stages.json"
    stages: dict[str, dict[str, float]] = json.loads(measured_file.read_text()) if measured_file.is_file() else {}
    asked = None if args.stages is None else args.stages.split(",")
    wanted = [s for s in recipe.stages if not s.startswith("bench-") and (asked is None or s in asked)]
    checkpoint_dir = cache_dir() / "proxies" / f"{recipe.proxy}-{blocks}blocks-sharded-seed0"
    disk_file = work / "disk.json"
    disk = json.loads(disk_file.read_text()) if disk_file.is_file() else {}
    if (checkpoint_dir / INDEX).is_file():
        disk["checkpoint"] = tree_gb(checkpoint_dir)
    wanted += _bench_schedule(_bench_cells(recipe, asked), recipe.rounds)
    for stage in wanted:
        if stage != "checkpoint" and not (work / "source.txt").is_file():
            raise SystemExit("run the checkpoint stage first")
        if stage == "export":
            _make_room(work, checkpoint_dir)
        cached = stage == "checkpoint" and (checkpoint_dir / INDEX).is_file()
        measured = _run_child(stage, work, blocks, args.recipe)
        if "error" in measured and not stage.startswith("bench-"):  # what follows needs this stage's output
            raise SystemExit(f"stage {stage} failed: {measured['error']}")
        if not cached:  # a cached checkpoint's stage only names it
            stages[stage] = measured
        if stage == "checkpoint":
            disk["checkpoint"] = tree_gb(checkpoint_dir)
        measured_file.write_text(json.dumps(stages, indent=2) + "\n")
    # what this invocation wrote; the others' sizes stay as measured (their directories may be gone)
    disk |= {name: tree_gb(work / name) for stage, name in STAGE_OUTPUTS.items() if stage in wanted}
    disk_file.write_text(json.dumps(disk) + "\n")
    data = _report(recipe, args.recipe, blocks, work, stages, disk)
    write_results(out, data, markdown(data))
    return 0


def render(recipe: ScaleRecipe, out: Path) -> None:
    """``out``.{json,md} again from the committed JSON, its extrapolation recomputed from the proxy
    run's report as it stands now (the full-depth figures are kept as measured)."""
    committed = out.with_suffix(".json")
    if not committed.is_file():
        raise SystemExit(f"no {committed} to render: run the recipe first")
    data = json.loads(committed.read_text())
    data["extrapolated"] = _extrapolation(recipe, data["latency"], data["blocks"])
    write_results(out, data, markdown(data))


def _pooled_latency(work: Path, recipe: ScaleRecipe) -> dict[str, dict[str, Any]]:
    """runtime -> artifact -> flavour -> median / p10 / p90 over every round's runs, each round's
    median, and what the runtime said (openvino-sparse: its sparse MatMuls)."""
    from runtime.bench import summarize

    latency: dict[str, dict[str, Any]] = {}
    for runtime in recipe.runtimes:
        for artifact in recipe.artifacts:
            rounds = [json.loads(f.read_text()) for f in sorted((work / "bench").glob(f"{runtime}-{artifact}-*.json"))]
            if not rounds:
                continue
            entry = latency.setdefault(runtime, {}).setdefault(artifact, {})
            for flavour in rounds[0]:
                runs = [r[flavour] for r in rounds]
                stats = summarize([t for r in runs for t in r["times_s"]])
                info = {k: v for k, v in runs[0].items() if k != "times_s"}
                if all("timed_major_faults" in r for r in runs):  # every round's, not the first's
                    info["timed_major_faults"] = sum(r["timed_major_faults"] for r in runs)
                entry[flavour] = {**{k: stats[k] for k in ("median_ms", "p10_ms", "p90_ms", "n")},
                                  "round_medians_ms": [summarize(r["times_s"])["median_ms"] for r in runs], **info}
    return latency


def _speedups(latency: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per flavour: the fastest dense runtime measured in this run and each runtime's pruned
    artifact against it (and against its own dense artifact)."""
    from runtime.bench import DENSE_BASELINES

    result: dict[str, Any] = {}
    flavours = {f for entry in latency.values() for a in entry.values() for f in a}
    for flavour in sorted(flavours):
        dense = {r: e["dense"][flavour]["median_ms"] for r, e in latency.items()
                 if r in DENSE_BASELINES and flavour in e.get("dense", {})}
        if not dense:
            continue
        baseline = min(dense, key=dense.get)
        result[flavour] = {"baseline_runtime": baseline, "baseline_ms": dense[baseline], "pruned": {
            r: {"vs_fastest_dense": dense[baseline] / e["pruned"][flavour]["median_ms"],
                "vs_own_dense": (e["dense"][flavour]["median_ms"] / e["pruned"][flavour]["median_ms"]
                                 if flavour in e.get("dense", {}) else None)}
            for r, e in latency.items() if flavour in e.get("pruned", {})}}
    return result


def _shown(path: Path) -> str:
    """A path as the report shows it: from the repository root when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _extrapolation(recipe: ScaleRecipe, latency: dict[str, dict[str, Any]], depth: int) -> dict[str, Any]:
    """The 2-block proxy's figures for this configuration (``recipe.extrapolate``: its recipe,
    benchmarks/proxies.py), per runtime and graph: head-only, block, and head-only + ``depth`` x block
    for dense and pruned, each next to what this run measured at ``depth`` blocks (``error``: the
    extrapolation over the measurement, minus one; a ``--blocks 2`` run is thus held to the proxy's
    own 2 blocks, not to the 32-block figure). Empty until that run's report exists; a run on
    another CPU is kept but marked, as its ratios are not comparable with this one's."""
    if recipe.extrapolate is None:
        return {}
    proxy_recipe = yaml.safe_load(recipe.extrapolate.read_text())
    report_file = ROOT / proxy_recipe["out"] / "latency.json"
    if not report_file.is_file():
        log.warning("no %s yet (run benchmarks.proxies --recipe %s): nothing to extrapolate from", report_file,
                    recipe.extrapolate)
        return {}
    report = json.loads(report_file.read_text())
    label = recipe.variant.label
    cells: dict[str, dict[str, Any]] = {}
    for entry in report["decomposition"]:
        if entry["variant"] != label:
            continue
        total = {key: entry["head_ms"] + depth * ms for key, ms in entry["block_ms"].items()}
        cell = cells.setdefault(entry["runtime"], {})
        for artifact, key in (("dense", "dense"), ("pruned", label)):
            measured = latency.get(entry["runtime"], {}).get(artifact, {}).get(entry["flavour"])
            cell.setdefault(artifact, {})[entry["flavour"]] = {
                "head_ms": entry["head_ms"], "block_ms": entry["block_ms"][key], "extrapolated_ms": total[key],
                "measured_ms": measured["median_ms"] if measured else None,
                "error": total[key] / measured["median_ms"] - 1 if measured else None}
    return {"source": _shown(report_file), "recipe": _shown(recipe.extrapolate),
            "measured": report["measured"], "cpu": report["environment"]["cpu"],
            "same_cpu": report["environment"]["cpu"] == describe()["cpu"],
            "blocks": proxy_recipe.get("blocks", 2), "depth": depth, "latency": cells,
            "pruned_vs_extrapolated_dense": _vs_extrapolated_dense(cells, latency)}


def _vs_extrapolated_dense(cells: dict[str, dict[str, Any]], latency: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per graph: the pruned artifact measured at full depth against the fastest dense runtime's
    extrapolation (what stands in for a dense model that fits no runtime here: LLaMA-7B's)."""
    from runtime.bench import DENSE_BASELINES

    result: dict[str, Any] = {}
    flavours = {f for cell in cells.values() for f in cell.get("dense", {})}
    for flavour in sorted(flavours):
        dense = {r: c["dense"][flavour]["extrapolated_ms"] for r, c in cells.items()
                 if r in DENSE_BASELINES and flavour in c.get("dense", {})}
        pruned = {r: e["pruned"][flavour]["median_ms"] for r, e in latency.items() if flavour in e.get("pruned", {})}
        if dense and pruned:
            baseline = min(dense, key=dense.get)
            result[flavour] = {"baseline_runtime": baseline, "dense_extrapolated_ms": dense[baseline],
                               "pruned": {r: dense[baseline] / ms for r, ms in pruned.items()}}
    return result


def _report(recipe: ScaleRecipe, recipe_file: Path, blocks: int, work: Path, stages: dict[str, dict[str, float]],
            disk: dict[str, float]) -> dict[str, Any]:
    """The results file: the issue's keys (``blocks``, ``peak_rss_gb``, ``bench_rss_gb``, ``wall_s``,
    ``disk_gb``, ``latency``, ``extrapolated``) and what they rest on."""
    record = json.loads((work / "pruned" / "prune_record.json").read_text())
    bench_rss: dict[str, dict[str, float]] = {}
    failed: dict[str, dict[str, dict[str, Any]]] = {}
    swapped: dict[str, dict[str, dict[str, float]]] = {}
    for stage, measured in stages.items():
        if stage.startswith("bench-") and stage.count(":") == 2:
            runtime, artifact, _ = stage.removeprefix("bench-").split(":")
            if "error" in measured:  # a runtime whose loaded form does not fit: said, not dropped
                failed.setdefault(runtime, {})[artifact] = {"error": measured["error"],
                                                             "sampled_anonymous_gb": measured["peak_anon_gb"],
                                                             "sampled_file_backed_gb": measured["peak_file_gb"]}
                continue
            kept = bench_rss.setdefault(runtime, {})
            kept[artifact] = max(kept.get(artifact, 0.0), measured["peak_rss_gb"])
            if "swap_total_gb" in measured:  # measured on a machine with swap: said beside its latency
                seen = swapped.setdefault(runtime, {}).setdefault(artifact, {"swap_total_gb": 0.0, "peak_swap_gb": 0.0,
                                                                              "ended": ""})
                for key in seen:
                    seen[key] = max(seen[key], measured[key])
    latency = _pooled_latency(work, recipe)
    ended = [v["ended"] for v in stages.values() if "ended" in v]  # a report rewritten later keeps the run's date
    return {"measured": max(ended, default=time.strftime("%Y-%m-%d %H:%M")), "environment": describe(),
            "blocks": blocks,
            "recipe": {"file": _shown(recipe_file),
                       "proxy": recipe.proxy, "variant": recipe.variant.describe(),
                       "samples": recipe.samples, "seq_len": recipe.seq_len, "rounds": recipe.rounds},
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "peak_rss_gb": {k: v["peak_rss_gb"] for k, v in stages.items() if not k.startswith("bench-")
                            and "peak_rss_gb" in v},
            "peak_rss_parts_gb": {k: {"anonymous": v.get("peak_anon_gb"), "file_backed": v.get("peak_file_gb")}
                                  for k, v in stages.items()},
            "wall_s": {k: v["wall_s"] for k, v in stages.items()},
            "disk_gb": disk,
            "achieved_sparsity": record["achieved"]["blocks_linear"]["sparsity"],
            "block_sparsity": record["recipe"]["block_sparsity"],
            "bench_rss_gb": bench_rss,
            "bench_failed": failed,
            "bench_swap_gb": swapped,
            "latency": latency,
            "speedups": _speedups(latency),
            "extrapolated": _extrapolation(recipe, latency, blocks),
            "artifact_storage": ARTIFACT_STORAGE}


if __name__ == "__main__":
    sys.exit(main())
