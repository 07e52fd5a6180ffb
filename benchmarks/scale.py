"""Full-depth LLaMA-7B geometry on one machine: peak memory, time and disk of each stage.

The full-depth proxy checkpoint (benchmarks/proxy_checkpoint.py: LLaMA-7B's configuration,
32 blocks, random weights, 26.95 GB of fp32 in shards) is pruned with OWL+Wanda 70% by the
streamed path (pipeline/streaming.py: one block resident at a time). Each stage runs in its own
child process and its peak RSS is the child's own (``wait4``'s ``ru_maxrss``), so no stage is
charged for another's memory:

- ``checkpoint``: writing the proxy checkpoint (skipped when cached: then not measured);
- ``load``: ``load_streamed`` alone (skeleton, embeddings, final norm, head);
- ``prune``: ``load_streamed`` + ``prune_model`` (OWL's observing pass, then the pruning pass)
  + ``save_pruned``: what ``sparse-deploy prune --stream`` does.

Calibration: 8 windows x 256 tokens of the usual C4 text, token ids folded into the vocabulary
(as for every proxy; computed by the parent, handed to the child as a file, so the child does
not load the tokenizer's model). Export and latency at full depth are not measured yet.

    .venv/bin/python -m benchmarks.scale          # ~1 h on 2 cores; ~55 GB of disk under the cache
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
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
    batches = torch.load(work / "batches.pt")
    result = prune_model(loaded, build_pruner("wanda"), SPARSITY, CalibrationConfig(samples=SAMPLES, seq_len=SEQ_LEN),
                         owl=OWLConfig(m=OWL_M, lam=OWL_LAMBDA), batches=batches)
    save_pruned(loaded, build_record(loaded, result), work / "pruned", overwrite=True)


def _run_child(stage: str, work: Path, blocks: int) -> dict[str, float]:
    """Peak RSS (GB) and wall time (s) of one stage in its own process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--work", str(work),
                              "--blocks", str(blocks)])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"stage {stage} failed (exit {child.returncode})")
    measured = {"peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "wall_s": time.perf_counter() - start}
    log.info("%s: peak RSS %.2f GB, %.0f s", stage, measured["peak_rss_gb"], measured["wall_s"])
    return measured


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
    parser.add_argument("--stage", choices=("checkpoint", "load", "prune"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, default=PROXIES[PROXY][1],
                        help="decoder blocks (default: the real depth; fewer for a quick check, results not written)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.stage:
        _stage(args.stage, args.work, args.blocks)
        return 0
    from pipeline.models import cache_dir

    work = cache_dir() / "scale"
    work.mkdir(parents=True, exist_ok=True)
    vocab = PROXIES[PROXY][0](0).vocab_size
    torch.save(proxy_batches(vocab, SAMPLES, SEQ_LEN), work / "batches.pt")
    stages: dict[str, dict[str, float]] = {}
    cached = (cache_dir() / "proxies" / f"{PROXY}-{args.blocks}blocks-sharded-seed0" / INDEX).is_file()
    checkpoint = _run_child("checkpoint", work, args.blocks)
    if not cached:
        stages["checkpoint"] = checkpoint
    for stage in ("load", "prune"):
        stages[stage] = _run_child(stage, work, args.blocks)
    record = json.loads((work / "pruned" / "prune_record.json").read_text())
    source = Path((work / "source.txt").read_text())
    data = {"measured": time.strftime("%Y-%m-%d %H:%M"), "environment": describe(), "blocks": args.blocks,
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "peak_rss_gb": {k: v["peak_rss_gb"] for k, v in stages.items()},
            "wall_s": {k: v["wall_s"] for k, v in stages.items()},
            "disk_gb": {"checkpoint": tree_gb(source), "pruned": tree_gb(work / "pruned")},
            "achieved_sparsity": record["achieved"]["blocks_linear"]["sparsity"],
            "block_sparsity": record["recipe"]["block_sparsity"],
            "bench_rss_gb": {}, "latency": {}, "extrapolated": {}}
    if args.blocks == PROXIES[PROXY][1]:
        write_results(RESULTS, data, markdown(data))
    else:
        log.info("%s", markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
