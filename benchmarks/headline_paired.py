"""The headline's OWL+Wanda 70% figures timed call by call: every graph they compare held at once.

The proxy run (``benchmarks.proxies``, recipes/proxies/llama7b-headline.yaml) times each cell's
repetitions back to back, so the fastest dense runtime's cells and the sparse ones are timed tens
of seconds apart, and this VM's memory bandwidth drifts by ~1.5x within seconds (docs/kernels.md,
"Noise"). Here, per graph flavour, the cells the four OWL+Wanda 70% headline figures need are
compiled once and timed in alternation (``runtime.paired``): every dense runtime on the dense
LLaMA-7B proxy (2 blocks) and on its head-only reference, openvino-sparse and DeepSparse on
OWL+Wanda 70% and on the head-only reference. Per decoder block as in the proxy run:
``(T(2 blocks) - T(head-only)) / 2`` from the medians of all cycles, against the fastest dense
runtime of this run; the range is over consecutive segments of the cycles.

    .venv/bin/python -m benchmarks.headline_paired [--cycles 300 60] [--segments 5]

writes ``benchmarks/results/headline_paired.{json,md}``; ``benchmarks.headline`` takes the four
OWL+Wanda 70% figures from it and keeps the proxy run's next to them.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.output import write_results
from benchmarks.proxies import HEAD_ONLY, Variant, artifact_for, build_proxy, variant_artifact
from export.artifact import read_manifest
from pipeline.environment import describe
from runtime.bench import DENSE_BASELINES, BenchSettings, _feeds
from runtime.paired import PAUSE_S, alternate, call_timer

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
VARIANT = Variant.parse("owl-wanda-70=wanda:0.7:owl")  # recipes/proxies/llama7b-headline.yaml's
PROXY, BLOCKS = "llama7b", 2
SPARSE_RUNTIMES = ("openvino-sparse", "deepsparse")  # the candidates on the pruned proxy
FLAVOURS = ("decode", "prefill")
CYCLES = (300, 60)  # per flavour: a decode cycle takes ~0.4 s, a prefill one ~5 s on 2 cores


def cells() -> list[tuple[str, str]]:
    """``(runtime, label)`` of every graph one flavour's cycle runs."""
    dense = [(rt, label) for rt in DENSE_BASELINES for label in ("dense", HEAD_ONLY)]
    return dense + [(rt, label) for rt in SPARSE_RUNTIMES for label in (VARIANT.label, HEAD_ONLY)
                    if (rt, label) not in dense]


def block_ms(medians: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """Per decoder block: each runtime's head-only time subtracted, divided by the blocks."""
    return {(rt, label): (ms - medians[rt, HEAD_ONLY]) / BLOCKS
            for (rt, label), ms in medians.items() if label != HEAD_ONLY}


def figures(times_s: dict[tuple[str, str], list[float]], segments: int) -> dict[str, Any]:
    """The fastest dense runtime (by its block time over all cycles) and every candidate's
    per-block speedup against it, with the same ratio per segment of consecutive cycles."""
    def medians(part: slice) -> dict[tuple[str, str], float]:
        return {key: statistics.median(t[part]) * 1000 for key, t in times_s.items()}

    blocks = block_ms(medians(slice(None)))
    base = min(DENSE_BASELINES, key=lambda rt: blocks[rt, "dense"])
    n = min(len(t) for t in times_s.values())
    bounds = [round(i * n / segments) for i in range(segments + 1)]
    per_segment = [block_ms(medians(slice(a, b))) for a, b in zip(bounds, bounds[1:]) if b - a >= 2]
    speedups = {rt: {"speedup": blocks[base, "dense"] / blocks[rt, VARIANT.label],
                     "segments": [s[base, "dense"] / s[rt, VARIANT.label] for s in per_segment]}
                for rt in SPARSE_RUNTIMES}
    return {"baseline_runtime": base, "block_ms": {f"{rt}/{label}": ms for (rt, label), ms in blocks.items()},
            "speedups": speedups}


def _artifacts() -> dict[str, Path]:
    dense_dir = build_proxy(PROXY, BLOCKS)
    return {"dense": artifact_for(dense_dir), HEAD_ONLY: artifact_for(build_proxy(PROXY, 0)),
            VARIANT.label: variant_artifact(dense_dir, VARIANT, 16, 256, keep_model=False)}


def measure_flavour(flavour: str, artifacts: dict[str, Path], cycles: int, s: BenchSettings,
                    segments: int) -> dict[str, Any]:
    with ExitStack() as stack:
        timers, info = {}, {}
        for rt, label in cells():
            artifact = artifacts[label]
            log.info("%s: compiling %s / %s", flavour, label, rt)
            graph = artifact / read_manifest(artifact)["flavours"][flavour]["file"]
            timers[rt, label], info[f"{rt}/{label}"] = stack.enter_context(
                call_timer(rt, graph, _feeds(artifact, flavour, s), s, flavour))
        start = time.monotonic()
        times = alternate(timers, cycles, desc=f"{flavour}: paired cycles")
        wall_s = time.monotonic() - start
    ms = {f"{rt}/{label}": [t * 1000 for t in ts] for (rt, label), ts in times.items()}
    return {"cycles": cycles, "wall_s": wall_s, "times_ms": ms, "runtime_info": info, **figures(times, segments)}


def run(cycles: dict[str, int], segments: int) -> dict[str, Any]:
    s = BenchSettings()
    artifacts = _artifacts()
    result: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%d %H:%M"), "environment": describe(),
        "settings": {"proxy": f"{PROXY}, {BLOCKS} blocks, random weights", "variant": VARIANT.describe(),
                     "batch": s.batch, "seq_len": s.seq_len, "past": s.past, "warmup": s.warmup,
                     "segments": segments, "pause_s_before_each_call": PAUSE_S},
        "flavours": {}}
    for flavour, n in cycles.items():
        result["flavours"][flavour] = measure_flavour(flavour, artifacts, n, s, segments)
    return result


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}x" if values else "n/a"


def markdown(result: dict[str, Any]) -> str:
    env, st = result["environment"], result["settings"]
    pkgs = env["packages"]
    lines = [f"# Headline figures timed call by call ({st['proxy']}, {st['variant']})", "",
             f"Measured {result['measured']} on {env['cpu']}, {env['cores']} cores, ISA {env.get('isa', 'n/a')}; "
             f"onnxruntime {pkgs.get('onnxruntime')}, openvino {pkgs.get('openvino')}, deepsparse 1.8.0. Every graph "
             "below compiled once and held; per cycle each runs once (order reversed every other cycle, "
             f"{st['pause_s_before_each_call'] * 1000:.0f} ms pause before each call). Block ms = (median of the "
             f"2-block graph - median of head-only) / 2, same runtime; speedup against the fastest dense runtime's "
             f"block; range over {st['segments']} segments of consecutive cycles. Batch {st['batch']}; decode: 1 token "
             f"after {st['past']}; prefill: {st['seq_len']} tokens. "
             "Command: `.venv/bin/python -m benchmarks.headline_paired`.", ""]
    for flavour, f in result["flavours"].items():
        lines += [f"## {flavour} ({f['cycles']} cycles, {f['wall_s']:.0f} s)", "",
                  "| runtime | graph | median ms | p10-p90 ms | block ms |", "|---|---|---|---|---|"]
        for key, ms in f["times_ms"].items():
            q = statistics.quantiles(ms, n=10)
            block = f["block_ms"].get(key)
            lines.append(f"| {key.split('/')[0]} | {key.split('/')[1]} | {statistics.median(ms):.2f} | "
                         f"{q[0]:.2f}-{q[-1]:.2f} | {'' if block is None else f'{block:.2f}'} |")
        lines += ["", f"Fastest dense runtime: **{f['baseline_runtime']}**.", ""]
        for rt, sp in f["speedups"].items():
            lines.append(f"- {rt}, OWL+Wanda 70% per block: **{sp['speedup']:.2f}x** (segments {_spread(sp['segments'])})")
        ops = f["runtime_info"].get(f"openvino-sparse/{VARIANT.label}", {}).get("sparse_ops")
        if ops:
            lines.append(f"- openvino-sparse ops on the pruned graph: {ops}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, nargs=2, default=list(CYCLES), metavar=("DECODE", "PREFILL"),
                        help="cycles per flavour (0 skips it; default %(default)s)")
    parser.add_argument("--segments", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "headline_paired")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = run({f: n for f, n in zip(FLAVOURS, args.cycles) if n > 0}, args.segments)
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
