"""Does this machine's speed drift, and can the latency protocol let drift pick a winner?

ONNX Runtime cannot use unstructured zeros, so a dense graph and its unstructured-sparse twin
must tie in it: any "speedup" between them is the protocol's. Both decode graphs of the
LLaMA-7B proxy (dense and Wanda 60%, built and cached by ``benchmarks.proxies``) are loaded
side by side and timed three ways in one run:

* sequential, dense first: ``runs`` x dense, then ``runs`` x sparse (how ``bench`` measured
  before it had rounds), and again with the sparse graph first;
* interleaved: ``pairs`` short blocks of each, alternating, order reversed every other pair.

The dense graph's block medians over the run show the drift itself.

    python -m benchmarks.drift [--pairs 30] [--block 5] [--runs 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from export.artifact import read_manifest
from export.ort_session import session
from runtime.bench import BenchSettings, _feeds, round_ratios
from benchmarks.output import write_results
from benchmarks.proxies import Variant, artifact_for, build_proxy, variant_artifact
from pipeline.environment import describe
from runtime.onnxruntime_runner import time_runs

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
SPARSE = Variant.parse("wanda-60=wanda:0.6")


def _decode(artifact: Path) -> tuple[Any, dict[str, Any]]:
    graph = artifact / read_manifest(artifact)["flavours"]["decode"]["file"]
    return session(graph), _feeds(artifact, "decode", BenchSettings())


def _median_ms(sess: Any, feeds: dict[str, Any], runs: int) -> float:
    return statistics.median(time_runs(sess, feeds, 1, runs)) * 1000


def run(pairs: int, block: int, runs: int) -> dict[str, Any]:
    dense_dir = build_proxy("llama7b", 2)
    graphs = {"dense": _decode(artifact_for(dense_dir)),
              "sparse": _decode(variant_artifact(dense_dir, SPARSE, 16, 256, keep_model=False))}

    def sequential(first: str, second: str) -> float:
        """Speedup of sparse over dense measured one graph after the other."""
        ms = {name: _median_ms(*graphs[name], runs) for name in (first, second)}
        return ms["dense"] / ms["sparse"]

    dense_first = sequential("dense", "sparse")
    interleaved: dict[str, list[float]] = {"dense": [], "sparse": []}
    for p in range(pairs):
        for name in ("dense", "sparse") if p % 2 == 0 else ("sparse", "dense"):
            interleaved[name].append(_median_ms(*graphs[name], block))
    sparse_first = sequential("sparse", "dense")
    ratios = round_ratios(interleaved["dense"], interleaved["sparse"])
    return {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": describe(),
        "settings": {"proxy": "llama7b, 2 blocks", "sparse": SPARSE.describe(), "graph": "decode, 1 token after 127",
                     "runtime": "onnxruntime", "pairs": pairs, "block": block, "sequential_runs": runs},
        "sequential_speedup": {"dense_first": dense_first, "sparse_first": sparse_first},
        "interleaved_ms": interleaved,
        "interleaved_speedup": statistics.median(interleaved["dense"]) / statistics.median(interleaved["sparse"]),
        "pair_speedups": ratios,
    }


def markdown(result: dict[str, Any]) -> str:
    env, s, seq = result["environment"], result["settings"], result["sequential_speedup"]
    dense, ratios = result["interleaved_ms"]["dense"], result["pair_speedups"]
    return "\n".join([
        "# Drift: does the protocol let the machine pick a winner? (ONNX Runtime, dense vs unstructured twin)",
        "",
        f"Measured {result['measured']} on {env['cpu']} ({env['cores']} cores), onnxruntime "
        f"{env['packages']['onnxruntime']}. Graphs: LLaMA-7B proxy ({s['proxy']}) {s['graph']}, dense vs "
        f"{s['sparse']}; ONNX Runtime cannot use unstructured zeros, so the true speedup is 1.00x.",
        "",
        "| protocol | speedup of the sparse twin |",
        "|---|---|",
        f"| sequential, dense first ({s['sequential_runs']} runs each) | {seq['dense_first']:.2f}x |",
        f"| sequential, sparse first ({s['sequential_runs']} runs each) | {seq['sparse_first']:.2f}x |",
        f"| interleaved ({s['pairs']} pairs of {s['block']}-run blocks, medians of all) | "
        f"{result['interleaved_speedup']:.2f}x |",
        "",
        f"- Per pair (blocks minutes apart at most): median {statistics.median(ratios):.2f}x, range "
        f"{min(ratios):.2f}-{max(ratios):.2f}x.",
        f"- The drift itself: the dense graph's block medians over the run range {min(dense):.1f}-{max(dense):.1f} ms "
        f"(median {statistics.median(dense):.1f} ms).",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "drift_llama7b_proxy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.pairs, args.block, args.runs)
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
