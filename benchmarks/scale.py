"""Full-depth LLaMA-7B geometry on one machine: peak memory, time and disk of each stage.

The full-depth proxy checkpoint (benchmarks/proxy_checkpoint.py: LLaMA-7B's configuration,
32 blocks, random weights, 26.95 GB of fp32 in shards) is pruned with OWL+Wanda 70% by the
streamed path (pipeline/streaming.py: one block resident at a time). Each stage runs in its own
child process and its peak RSS is the child's own (``wait4``'s ``ru_maxrss``), so no stage is
charged for another's memory:

- ``checkpoint``: writing the proxy checkpoint (skipped when cached: then not measured);
- ``load``: ``load_streamed`` alone (skeleton, embeddings, final norm, head);
- ``prune``: ``load_streamed`` + ``prune_model`` (OWL's observing pass, then the pruning pass)
  + ``save_pruned``: what ``sparse-deploy prune --stream`` does;
- ``export``: ``export_artifact(..., stream=True)`` of the pruned directory, parity included (what
  ``sparse-deploy export --stream`` does);
- ``bench-<runtime>``: the pruned artifact's decode (1 token after 127) and prefill (128 tokens)
  latency at full depth, batch 1, in one runtime, in its own process.

Besides ``ru_maxrss``, the parent samples the child's ``/proc/<pid>/status`` every 0.2 s: a
runtime that memory-maps the external data (ONNX Runtime, OpenVINO) has the weights' file pages
in its RSS, which the kernel reclaims under pressure, so peak RSS is given with its anonymous
(heap) and file-backed parts. When the disk cannot hold checkpoint, pruned model and artifact at
once, the checkpoint (deterministic, rewritten in ~2 min) is removed after pruning.

Calibration: 8 windows x 256 tokens of the usual C4 text, token ids folded into the vocabulary
(as for every proxy; computed by the parent, handed to the child as a file, so the child does
not load the tokenizer's model). Each stage's measurement is kept in the work directory, so
``--stages`` reruns some and the report keeps the others'.

    .venv/bin/python -m benchmarks.scale          # ~1.5 h on 2 cores; ~55-80 GB of disk under the cache
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
from typing import Any

import torch

from benchmarks.cache import tree_gb
from benchmarks.output import write_results
from benchmarks.proxies import PROXIES, proxy_batches
from benchmarks.proxy_checkpoint import proxy_checkpoint
from pipeline.environment import describe
from pipeline.shards import INDEX

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "scale_llama7b"
PROXY, SPARSITY, OWL_M, OWL_LAMBDA = "llama7b", 0.7, 5.0, 0.08
SAMPLES, SEQ_LEN = 8, 256
BENCH_RUNTIMES = ("openvino-sparse",)  # whose loaded form of the 70% artifact fits 24 GiB (see the report)
BENCH_PAST, BENCH_SEQ, BENCH_REPETITIONS = 127, 128, 5
STAGES = ("checkpoint", "load", "prune", "export", *(f"bench-{r}" for r in BENCH_RUNTIMES))


def _stage(stage: str, work: Path, blocks: int) -> None:
    """One stage, in this (child) process."""
    from pipeline.models import load_streamed
    from pipeline.owl import OWLConfig
    from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
    from pipeline.pruners import build_pruner

    source = work / "source.txt"
    if stage == "checkpoint":
        source.write_text(str(proxy_checkpoint(PROXY, blocks)))
        return
    loaded = load_streamed(source.read_text())
    if stage == "load":
        return
    if stage == "export":
        from export.artifact import export_artifact

        export_artifact(str(work / "pruned"), work / "artifact", overwrite=True, stream=True)
        return
    if stage.startswith("bench-"):
        _bench(stage.removeprefix("bench-"), work)
        return
    batches = torch.load(work / "batches.pt")
    result = prune_model(loaded, build_pruner("wanda"), SPARSITY, CalibrationConfig(samples=SAMPLES, seq_len=SEQ_LEN),
                         owl=OWLConfig(m=OWL_M, lam=OWL_LAMBDA), batches=batches)
    save_pruned(loaded, build_record(loaded, result), work / "pruned", overwrite=True)


def _bench(runtime: str, work: Path) -> None:
    """Decode and prefill latency of the pruned artifact at full depth in ``runtime``."""
    from runtime.bench import BenchSettings, _feeds, summarize, time_cell

    artifact = work / "artifact"
    settings = BenchSettings(seq_len=BENCH_SEQ, past=BENCH_PAST, warmup=1, repetitions=BENCH_REPETITIONS,
                             runtimes=(runtime,))
    manifest = json.loads((artifact / "manifest.json").read_text())
    result = {}
    for flavour, entry in manifest["flavours"].items():
        times, info = time_cell(runtime, artifact / entry["file"], _feeds(artifact, flavour, settings), settings)
        result[flavour] = {**summarize(times), **info}
        log.info("%s %s: median %.1f ms", runtime, flavour, result[flavour]["median_ms"])
    (work / f"bench-{runtime}.json").write_text(json.dumps(result, indent=2) + "\n")


def _memory(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident kB of a process, 0s once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return 0, 0
    kb = lambda key: int(fields.get(key, "0 kB").split()[0])  # noqa: E731
    return kb("RssAnon"), kb("RssFile") + kb("RssShmem")


def _run_child(stage: str, work: Path, blocks: int) -> dict[str, float]:
    """Peak RSS (GB; with its anonymous and file-backed parts, sampled) and wall time (s) of one
    stage in its own process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--work", str(work),
                              "--blocks", str(blocks)])
    peaks = {"anon": 0, "file": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            anon, file = _memory(child.pid)
            peaks["anon"], peaks["file"] = max(peaks["anon"], anon), max(peaks["file"], file)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"stage {stage} failed (exit {child.returncode})")
    measured = {"peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "peak_anon_gb": peaks["anon"] * 1024 / 1e9,
                "peak_file_gb": peaks["file"] * 1024 / 1e9, "wall_s": time.perf_counter() - start}
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


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [f"# Full-depth LLaMA-7B geometry, streamed ({data['blocks']} blocks)", "",
             f"Measured {data['measured']} on {env['cpu']}, {env['cores']} cores, {data['memory_gib']:.1f} GiB; "
             f"torch {env['packages'].get('torch')}. OWL+Wanda {SPARSITY:.0%} (M = {OWL_M}, lambda = {OWL_LAMBDA}), "
             f"calibration {SAMPLES} x {SEQ_LEN} tokens. Each stage in its own process; peak RSS is that process's.",
             "", "| stage | peak RSS (GB) | wall (s) |", "|---|---|---|"]
    for stage, gb in data["peak_rss_gb"].items():
        lines.append(f"| {stage} | {gb:.2f} | {data['wall_s'][stage]:.0f} |")
    lines += ["", "| on disk | GB |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in data["disk_gb"].items()), "",
              f"Achieved sparsity of the blocks' Linear layers: {data['achieved_sparsity']:.4f}; OWL block sparsities "
              f"{min(data['block_sparsity']):.3f}-{max(data['block_sparsity']):.3f}.", "",
              "Not measured yet: export (streamed export is not built), latency at full depth, the Phi-3-mini "
              "geometry's dense vs pruned latency, the 2-block extrapolation's error.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, default=PROXIES[PROXY][1],
                        help="decoder blocks (default: the real depth; fewer for a quick check, results not written)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated stages to run (the others' last measurements are reported)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.stage:
        _stage(args.stage, args.work, args.blocks)
        return 0
    from pipeline.models import cache_dir

    work = cache_dir() / "scale" / f"{args.blocks}blocks"
    work.mkdir(parents=True, exist_ok=True)
    vocab = PROXIES[PROXY][0](0).vocab_size
    torch.save(proxy_batches(vocab, SAMPLES, SEQ_LEN), work / "batches.pt")
    measured_file = work / "stages.json"
    stages: dict[str, dict[str, float]] = json.loads(measured_file.read_text()) if measured_file.is_file() else {}
    wanted = [s for s in STAGES if s in args.stages.split(",")]
    checkpoint_dir = cache_dir() / "proxies" / f"{PROXY}-{args.blocks}blocks-sharded-seed0"
    disk = {}
    for stage in wanted:
        if stage != "checkpoint" and not (work / "source.txt").is_file():
            raise SystemExit("run the checkpoint stage first")
        if stage == "export" and _make_room(work, checkpoint_dir):
            stages["checkpoint_removed"] = {"before": "export"}
        cached = stage == "checkpoint" and (checkpoint_dir / INDEX).is_file()
        measured = _run_child(stage, work, args.blocks)
        if not cached:
            stages[stage] = measured
        if stage == "checkpoint":
            disk["checkpoint"] = tree_gb(checkpoint_dir)
        measured_file.write_text(json.dumps(stages, indent=2) + "\n")
    record = json.loads((work / "pruned" / "prune_record.json").read_text())
    disk_file = work / "disk.json"
    disk = {**(json.loads(disk_file.read_text()) if disk_file.is_file() else {}), **disk,
            **{name: tree_gb(work / name) for name in ("pruned", "artifact") if (work / name).is_dir()}}
    disk_file.write_text(json.dumps(disk) + "\n")
    timed = {k: v for k, v in stages.items() if "wall_s" in v}
    bench = {r: json.loads((work / f"bench-{r}.json").read_text()) for r in BENCH_RUNTIMES
             if (work / f"bench-{r}.json").is_file()}
    data = {"measured": time.strftime("%Y-%m-%d %H:%M"), "environment": describe(), "blocks": args.blocks,
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "peak_rss_gb": {k: v["peak_rss_gb"] for k, v in timed.items() if not k.startswith("bench-")},
            "peak_rss_parts_gb": {k: {"anonymous": v.get("peak_anon_gb"), "file_backed": v.get("peak_file_gb")}
                                  for k, v in timed.items()},
            "wall_s": {k: v["wall_s"] for k, v in timed.items()},
            "disk_gb": disk,
            "achieved_sparsity": record["achieved"]["blocks_linear"]["sparsity"],
            "block_sparsity": record["recipe"]["block_sparsity"],
            "bench_rss_gb": {k.removeprefix("bench-"): v["peak_rss_gb"] for k, v in timed.items()
                             if k.startswith("bench-")},
            "latency": {r: {"pruned": {f: {"median_ms": v["median_ms"], "p10_ms": v["p10_ms"], "p90_ms": v["p90_ms"],
                                           "n": v["n"]} for f, v in b.items()}} for r, b in bench.items()},
            "extrapolated": {}}
    if args.blocks == PROXIES[PROXY][1]:
        write_results(RESULTS, data, markdown(data))
    else:
        log.info("%s", markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
