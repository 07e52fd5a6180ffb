"""Latency on geometry proxies of the papers' models (LLaMA-7B, Phi-3-mini).

The real 7B weights cannot be had here, and a 135M model is too narrow for sparse kernels
to pay off. A proxy has the real model's widths (LLaMA-7B: hidden 4096, MLP 11008, 32
heads, vocabulary 32000) but only a few decoder blocks, random weights, and goes through
the real pipeline: calibrated on the same text (token ids folded into its vocabulary),
pruned (OWL+Wanda 70% by default), exported, benchmarked. Quality means nothing on it.

With two blocks the dense embedding and head weigh far more than in the 32-block model, so
besides the measured end-to-end figure we report, each labelled as what it is:

* decoder blocks alone: ``(T(proxy) - T(head-only)) / blocks``, where the head-only
  artifact is the same model with zero blocks (embedding, final norm, lm_head);
* end-to-end extrapolated to the real depth: ``T(head-only) + depth * T(block)``.

    python -m benchmarks.proxies --proxy llama7b [--blocks 2] [--method wanda --sparsity 0.7 --owl]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config, PretrainedConfig

from benchmarks.latency import BenchRow, BenchSettings, measure, write_report
from export.artifact import export_artifact
from pipeline.atomic import atomic_directory
from pipeline.data import calibration_samples, token_batches
from pipeline.models import DEFAULT_MODEL, cache_dir, load_model
from pipeline.owl import OWLConfig
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"

# Published configs; ``depth`` is the real number of decoder blocks.
PROXIES: dict[str, tuple[Callable[[int], PretrainedConfig], int]] = {
    "llama7b": (lambda n: LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False, num_hidden_layers=n), 32),
    "phi3-mini": (lambda n: Phi3Config(hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
                                       num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                                       rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=32000,
                                       num_hidden_layers=n), 32),
}


def build_proxy(name: str, blocks: int) -> Path:
    """A random-weight model of the proxy's geometry with ``blocks`` blocks (cached)."""
    config = PROXIES[name][0](blocks)
    out = cache_dir() / "proxies" / f"{name}-{blocks}blocks"
    if not (out / "config.json").is_file():
        log.info("building %s with %d blocks", name, blocks)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with atomic_directory(out, overwrite=True) as tmp:
            model.save_pretrained(tmp)
    return out


def proxy_batches(vocab: int, samples: int, seq_len: int) -> list[dict[str, Any]]:
    """The usual calibration text, tokenized by smollm2's tokenizer, ids folded into ``vocab``."""
    tokenizer = load_model(DEFAULT_MODEL).tokenizer
    ids = calibration_samples(tokenizer, "c4", samples, seq_len, seed=0) % vocab
    return token_batches(ids, batch_size=4)


def prune_proxy(source: Path, method: str, sparsity: float, owl: bool, samples: int, seq_len: int) -> Path:
    tag = f"{method}{'-owl' if owl else ''}-{int(sparsity * 100)}"
    out = source.parent / f"{source.name}-{tag}"
    if not (out / "config.json").is_file():
        loaded = load_model(str(source))
        batches = proxy_batches(loaded.model.config.vocab_size, samples, seq_len)
        calibration = CalibrationConfig(samples=samples, seq_len=seq_len)
        result = prune_model(loaded, build_pruner(method), sparsity, calibration,
                             owl=OWLConfig() if owl else None, batches=batches)
        record = build_record(loaded, result)
        record["recipe"]["calibration"]["note"] = "smollm2 token ids folded into the proxy vocabulary"
        save_pruned(loaded, record, out, overwrite=True)
    return out


def artifact_for(model_dir: Path) -> Path:
    out = model_dir.parent / "artifacts" / model_dir.name
    if not (out / "manifest.json").is_file():
        export_artifact(str(model_dir), out, overwrite=True)
    return out


def decomposition(rows: list[BenchRow], blocks: int, depth: int) -> tuple[list[dict[str, Any]], str]:
    """Per-block time and depth-extrapolated end-to-end speedups, from the head-only row."""
    table = []
    for flavour in sorted({r.flavour for r in rows}):
        for runtime in sorted({r.runtime for r in rows}):
            cell = {r.label: r.stats["median_ms"] for r in rows
                    if r.flavour == flavour and r.runtime == runtime and not r.error}
            if not {"dense", "pruned", "head-only"} <= cell.keys():
                continue
            head = cell["head-only"]
            block = {k: (cell[k] - head) / blocks for k in ("dense", "pruned")}
            e2e = {k: head + depth * block[k] for k in ("dense", "pruned")}
            table.append({"flavour": flavour, "runtime": runtime, "head_ms": head,
                          "block_ms": block, "measured_speedup": cell["dense"] / cell["pruned"],
                          "blocks_speedup": block["dense"] / block["pruned"] if block["pruned"] > 0 else None,
                          f"extrapolated_{depth}_blocks_ms": e2e,
                          "extrapolated_speedup": e2e["dense"] / e2e["pruned"]})
    lines = ["## Decomposition", "",
             f"Head-only = the same model with 0 blocks (embedding, final norm, lm_head). Block time = (proxy - "
             f"head-only) / {blocks}. Extrapolated = head-only + {depth} x block time: an estimate for the real "
             "depth, not a measurement.", "",
             f"| graph | runtime | head-only ms | block ms dense -> pruned | decoder blocks speedup | measured "
             f"{blocks}-block speedup | extrapolated {depth}-block speedup |", "|---|---|---|---|---|---|---|"]
    for t in table:
        b = t["block_ms"]
        bs = "n/a" if t["blocks_speedup"] is None else f"{t['blocks_speedup']:.2f}x"
        lines.append(f"| {t['flavour']} | {t['runtime']} | {t['head_ms']:.2f} | {b['dense']:.2f} -> {b['pruned']:.2f} | "
                     f"{bs} | {t['measured_speedup']:.2f}x | {t['extrapolated_speedup']:.2f}x |")
    return table, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", choices=sorted(PROXIES), default="llama7b")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--no-owl", action="store_true")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--past", type=int, default=127)
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--runtime", default="deepsparse,onnxruntime")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    depth = PROXIES[args.proxy][1]
    dense_dir = build_proxy(args.proxy, args.blocks)
    head_dir = build_proxy(args.proxy, 0)
    pruned_dir = prune_proxy(dense_dir, args.method, args.sparsity, not args.no_owl, args.calib_samples,
                             args.calib_seq_len)
    artifacts = [artifact_for(d) for d in (dense_dir, pruned_dir, head_dir)]
    settings = BenchSettings(seq_len=args.seq_len, past=args.past, repetitions=args.repetitions,
                             runtimes=tuple(args.runtime.split(",")))
    rows = measure(artifacts, settings, labels=["dense", "pruned", "head-only"])
    table, section = decomposition(rows, args.blocks, depth)
    recipe = f"{'OWL+' if not args.no_owl else ''}{args.method} {args.sparsity:.0%}"
    out = args.out or RESULTS / f"latency_{args.proxy}_proxy"
    report = write_report(rows, settings, out, title=f"Latency: {args.proxy} geometry proxy ({args.blocks} blocks, "
                          f"random weights), dense vs {recipe}", extra={"decomposition": table, "sections": [section]})
    log.info("wrote %s", out / "latency.md")
    return 1 if report["sparse_not_faster_in_deepsparse"] else 0


if __name__ == "__main__":
    sys.exit(main())
