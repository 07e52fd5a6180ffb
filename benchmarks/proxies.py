"""Latency on geometry proxies of the papers' models (LLaMA-7B, Phi-3-mini).

The real 7B weights cannot be had here, and a 135M model is too narrow for sparse kernels
to pay off. A proxy has the real model's widths (LLaMA-7B: hidden 4096, MLP 11008, 32
heads, vocabulary 32000) but only a few decoder blocks, random weights, and goes through
the real pipeline: calibrated on the same text (token ids folded into its vocabulary),
pruned (OWL+Wanda 70% by default), exported, benchmarked. Quality means nothing on it.

With two blocks the dense embedding and head weigh far more than in the 32-block model, so
besides the measured end-to-end figure we report, each labelled as what it is:

* decoder blocks alone: ``(T(proxy) - T(head-only)) / blocks``, where the head-only
  artifact is the same model with zero blocks (embedding, final norm, lm_head); a variant whose
  LM head is int8 (``quantize=...:head``) has its own reference, ``head-only-int8`` (the head on
  the same grid), so that its blocks are not credited with what the int8 head saves;
* end-to-end extrapolated to the real depth: ``T(head-only) + depth * T(block)``.

    python -m benchmarks.proxies --proxy llama7b [--blocks 2] [--variant pruned=wanda:0.7:owl]
    python -m benchmarks.proxies --proxy phi3-mini --variant wanda-50=wanda:0.5 \\
        --variant oats-50=oats:0.5:iterations=20 --compare oats-50=wanda-50 --out benchmarks/results/latency_oats_phi3
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import shutil
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config, PretrainedConfig

from benchmarks.cache import code_keyed, drop_stale, tree_gb
from runtime.bench import DEFAULT_RUNTIMES, DENSE_BASELINES, INT8_BASELINES, RUNTIMES, BenchRow, BenchSettings, measure, round_ratios, round_spread, write_report
from export.artifact import export_artifact, read_manifest
from pipeline.architectures import block_index
from pipeline.atomic import atomic_directory
from pipeline.errors import SparseDeployError
from pipeline.data import calibration_samples, token_batches
from pipeline.models import DEFAULT_MODEL, cache_dir, load_model
from pipeline.owl import OWLConfig
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner, parse_params
from pipeline.quantize import QuantizeConfig, quantize_head, quantize_model

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


HEAD_ONLY, HEAD_ONLY_INT8 = "head-only", "head-only-int8"  # the zero-block references (module docstring)


def int8_head_proxy(head_dir: Path) -> Path:
    """The head-only proxy with its LM head rounded onto its int8 grid (cached, keyed on the code)."""
    out = code_keyed(head_dir.parent / f"{head_dir.name}-int8-head")
    if not (out / "config.json").is_file():
        drop_stale(out)
        loaded = load_model(str(head_dir))
        quantize_head(loaded)
        with atomic_directory(out, overwrite=True) as tmp:
            loaded.model.save_pretrained(tmp)
    return out


def proxy_batches(vocab: int, samples: int, seq_len: int) -> list[dict[str, Any]]:
    """The usual calibration text, tokenized by smollm2's tokenizer, ids folded into ``vocab``."""
    tokenizer = load_model(DEFAULT_MODEL).tokenizer
    ids = calibration_samples(tokenizer, "c4", samples, seq_len, seed=0) % vocab
    return token_batches(ids, batch_size=4)


@dataclass(frozen=True)
class Variant:
    """A pruned twin of the proxy: ``LABEL=METHOD:SPARSITY[:owl][:quantize=rtn|gptq[:head]][:KEY=VALUE...]``
    on the command line, e.g. ``oats-50=oats:0.5:iterations=20``; ``quantize`` adds the recipe's
    int8 step (pipeline/quantize.py) after pruning, ``head`` has it quantize the LM head too (as
    the dense int8 baselines do)."""

    label: str
    method: str
    sparsity: float
    owl: bool = False
    params: tuple[tuple[str, Any], ...] = ()
    quantize: QuantizeConfig | None = None  # None for f32 weights

    @classmethod
    def parse(cls, text: str) -> "Variant":
        label, sep, spec = text.partition("=")
        parts = spec.split(":")
        if not sep or len(parts) < 2:
            raise SparseDeployError(f"bad variant '{text}': expected "
                                    "LABEL=METHOD:SPARSITY[:owl][:quantize=rtn|gptq[:head]][:KEY=VALUE...]")
        flags = {part for part in parts[2:] if part in ("owl", "head")}
        params = parse_params([part for part in parts[2:] if part not in flags])
        method = params.pop("quantize", None)
        if "head" in flags and method is None:
            raise SparseDeployError(f"bad variant '{text}': head quantizes the LM head, so it needs quantize=rtn|gptq")
        # an unknown method fails here, before any compute
        quantize = None if method is None else QuantizeConfig(method=str(method), head="head" in flags)
        return cls(label, parts[0], float(parts[1]), "owl" in flags, tuple(params.items()), quantize)

    @property
    def head_reference(self) -> str:
        """The head-only row subtracted from this variant's time (module docstring)."""
        return HEAD_ONLY_INT8 if self.quantize and self.quantize.head else HEAD_ONLY

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.params)
        q = self.quantize
        int8 = f" + int8 ({q.method}{', head too' if q.head else ''})" if q else ""
        return f"{'OWL+' if self.owl else ''}{self.method} {self.sparsity:.0%}{extra}{int8}"

    def directory_tag(self) -> str:
        q = self.quantize
        key = (self.method, self.sparsity, self.owl, self.params) + ((q.method,) if q else ()) + (("head",) if q and q.head else ())
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:8]
        return f"{self.method}{'-owl' if self.owl else ''}-{int(self.sparsity * 100)}{'-int8' if q else ''}-{digest}"


def _pruned_dir(source: Path, variant: Variant) -> Path:
    return code_keyed(source.parent / f"{source.name}-{variant.directory_tag()}")


def prune_proxy(source: Path, variant: Variant, samples: int, seq_len: int) -> Path:
    out = _pruned_dir(source, variant)
    if not (out / "config.json").is_file():
        drop_stale(out)
        loaded = load_model(str(source))
        batches = proxy_batches(loaded.model.config.vocab_size, samples, seq_len)
        calibration = CalibrationConfig(samples=samples, seq_len=seq_len)
        result = prune_model(loaded, build_pruner(variant.method, **dict(variant.params)), variant.sparsity,
                             calibration, owl=OWLConfig() if variant.owl else None, batches=batches)
        record = build_record(loaded, result)
        record["recipe"]["calibration"]["note"] = "smollm2 token ids folded into the proxy vocabulary"
        if variant.quantize:
            record["recipe"]["quantization"] = quantize_model(loaded, variant.quantize, batches)
        save_pruned(loaded, record, out, overwrite=True)
    return out


def _artifact_dir(model_dir: Path) -> Path:
    return code_keyed(model_dir.parent / "artifacts" / model_dir.name.partition("@")[0])


def artifact_for(model_dir: Path) -> Path:
    out = _artifact_dir(model_dir)
    if not (out / "manifest.json").is_file():
        drop_stale(out)
        export_artifact(str(model_dir), out, overwrite=True)
    return out


def variant_artifact(source: Path, variant: Variant, samples: int, seq_len: int, keep_model: bool) -> Path:
    """The exported artifact of a pruned twin (cached, keyed on the variant and the code).
    Without ``keep_model`` the pruned HF directory is deleted once exported: a 7B-geometry
    proxy weighs ~2.7 GB per copy."""
    model_dir = _pruned_dir(source, variant)
    if (_artifact_dir(model_dir) / "manifest.json").is_file():
        return _artifact_dir(model_dir)
    artifact = artifact_for(prune_proxy(source, variant, samples, seq_len))
    if not keep_model:
        shutil.rmtree(model_dir)
    return artifact


def _block_cells(stats: dict[str, dict[str, Any]], blocks: int,
                 heads: dict[str, str]) -> tuple[dict[str, float], dict[str, float]] | None:
    """``(block ms, head-only ms)`` per label of one (flavour, runtime) cell, each label's
    head-only reference (``heads``, default ``head-only``) subtracted; None when a reference
    or the dense row is missing."""
    labels = [k for k in stats if k not in (HEAD_ONLY, HEAD_ONLY_INT8)]
    if "dense" not in labels or any(heads.get(k, HEAD_ONLY) not in stats for k in labels):
        return None
    head = {k: stats[heads.get(k, HEAD_ONLY)]["median_ms"] for k in labels}
    return {k: (stats[k]["median_ms"] - head[k]) / blocks for k in labels}, head


def decomposition(rows: list[BenchRow], blocks: int, depth: int, baselines: dict[str, str] | None = None,
                  heads: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Per-block time and depth-extrapolated end-to-end speedups of every pruned variant, from
    its head-only reference (``heads``: label -> reference, default ``head-only``); against
    dense, and against ``baselines[variant]`` (another variant: OATS vs Wanda at the same
    compression) where given."""
    baselines, heads = baselines or {}, heads or {}
    table = []
    for flavour in sorted({r.flavour for r in rows}):
        for runtime in sorted({r.runtime for r in rows}):
            stats = {r.label: r.stats for r in rows if r.flavour == flavour and r.runtime == runtime and not r.error}
            cells = _block_cells(stats, blocks, heads)
            if cells is None or not set(baselines.values()) <= cells[0].keys():
                continue
            block, head = cells
            cell = {label: stats[label]["median_ms"] for label in block}
            rounds = _round_blocks(stats, heads)
            e2e = {k: head[k] + depth * b for k, b in block.items()}
            for label in cell:
                if label == "dense":
                    continue
                entry = {"flavour": flavour, "runtime": runtime, "variant": label, "head_ms": head[label],
                         "head_reference": heads.get(label, HEAD_ONLY),
                         "block_ms": {"dense": block["dense"], label: block[label]},
                         "measured_speedup": cell["dense"] / cell[label],
                         "blocks_speedup": block["dense"] / block[label] if block[label] > 0 else None,
                         "blocks_round_speedups": round_ratios(rounds["dense"], rounds[label]),
                         f"extrapolated_{depth}_blocks_ms": {"dense": e2e["dense"], label: e2e[label]},
                         "extrapolated_speedup": e2e["dense"] / e2e[label]}
                baseline = baselines.get(label)
                if baseline is not None:
                    entry["vs_baseline"] = {"baseline": baseline,
                                            "blocks_speedup": block[baseline] / block[label] if block[label] > 0
                                            else None,
                                            "blocks_round_speedups": round_ratios(rounds[baseline], rounds[label]),
                                            "measured_speedup": cell[baseline] / cell[label],
                                            "extrapolated_speedup": e2e[baseline] / e2e[label]}
                table.append(entry)
    against = " | decoder blocks vs baseline | extrapolated vs baseline" if baselines else ""
    int8_head = (f" A variant with an int8 LM head is referred to {HEAD_ONLY_INT8} (the same, its head on the int8 "
                 "grid); its head-only ms below is that one's." if HEAD_ONLY_INT8 in heads.values() else "")
    lines = ["## Decomposition", "",
             f"Head-only = the same model with 0 blocks (embedding, final norm, lm_head). Block time = (proxy - "
             f"head-only) / {blocks}. Extrapolated = head-only + {depth} x block time: an estimate for the real "
             f"depth, not a measurement.{int8_head}", "",
             f"| graph | runtime | variant | head-only ms | block ms dense -> variant | decoder blocks speedup | "
             f"measured {blocks}-block speedup | extrapolated {depth}-block speedup{against} |",
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if against else "")]
    for t in table:
        b = list(t["block_ms"].values())
        fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
        line = (f"| {t['flavour']} | {t['runtime']} | {t['variant']} | {t['head_ms']:.2f} | {b[0]:.2f} -> {b[1]:.2f} | "
                f"{fmt(t['blocks_speedup'])}{round_spread(t['blocks_round_speedups'])} | "
                f"{t['measured_speedup']:.2f}x | {t['extrapolated_speedup']:.2f}x |")
        if against:
            vs = t.get("vs_baseline")
            line += (f" {fmt(vs['blocks_speedup'])}{round_spread(vs['blocks_round_speedups'])} (vs {vs['baseline']}) | "
                     f"{fmt(vs['extrapolated_speedup'])} |" if vs
                     else " - | - |")
        lines.append(line)
    return table, "\n".join(lines)


def fastest_dense_blocks(rows: list[BenchRow], blocks: int, baselines: tuple[str, ...] = DENSE_BASELINES,
                         heads: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Per-block time of every (variant, runtime) against the dense block of the fastest of
    ``baselines``, per flavour: the headline comparison (a sparse kernel counts only if it beats
    the best dense one; with ``INT8_BASELINES``, the best dense int8 one). ``heads``: as in
    ``decomposition``."""
    heads = heads or {}
    table = []
    for flavour in sorted({r.flavour for r in rows}):
        by_runtime: dict[str, dict[str, dict[str, Any]]] = {}
        for r in rows:
            if r.flavour == flavour and not r.error:
                by_runtime.setdefault(r.runtime, {})[r.label] = r.stats
        block = {rt: cells[0] for rt, st in by_runtime.items()
                 if (cells := _block_cells(st, blocks, heads)) is not None}
        if not block:
            continue
        candidates = [rt for rt in block if rt in baselines]
        if not candidates:
            continue
        base_rt = min(candidates, key=lambda rt: block[rt]["dense"])
        base_rounds = _round_blocks(by_runtime[base_rt], heads)["dense"]
        for rt, cells in block.items():
            rounds = _round_blocks(by_runtime[rt], heads)
            for label, ms in cells.items():
                if (rt, label) == (base_rt, "dense") or ms <= 0:
                    continue
                table.append({"flavour": flavour, "runtime": rt, "variant": label, "baseline_runtime": base_rt,
                              "baseline_block_ms": block[base_rt]["dense"], "block_ms": ms,
                              "blocks_speedup": block[base_rt]["dense"] / ms,
                              "blocks_round_speedups": round_ratios(base_rounds, rounds[label])})
    what = "dense int8 runtime" if baselines == INT8_BASELINES else "dense runtime"
    lines = [f"## Decoder blocks against the fastest {what}", "",
             f"Per decoder block (as above), every variant in every runtime against the dense block in the runtime "
             f"(of {', '.join(baselines)}) whose dense block is fastest in this run.", "",
             "| graph | runtime | variant | block ms | fastest dense block ms (runtime) | speedup |", "|---|---|---|---|---|---|"]
    lines += [f"| {t['flavour']} | {t['runtime']} | {t['variant']} | {t['block_ms']:.2f} | {t['baseline_block_ms']:.2f} "
              f"({t['baseline_runtime']}) | {t['blocks_speedup']:.2f}x{round_spread(t['blocks_round_speedups'])} |"
              for t in table]
    return table, "\n".join(lines)


def _round_blocks(stats: dict[str, dict[str, Any]], heads: dict[str, str]) -> dict[str, list[float]]:
    """Per-round block times, each round's head-only time (the label's reference) subtracted
    from the same round's."""
    return {label: [v - h for v, h in zip(st.get("round_medians_ms", []),
                                          stats[heads.get(label, HEAD_ONLY)].get("round_medians_ms", []))]
            for label, st in stats.items() if label not in (HEAD_ONLY, HEAD_ONLY_INT8)}


def artifact_sizes(artifacts: dict[str, Path]) -> tuple[dict[str, Any], str]:
    """Stored parameters (and their non-zeros) of the decoder blocks, from the manifest, and
    bytes on disk of the decode graph with its weights: what slicing (OSSCAR) shrinks and
    unstructured zeros (stored dense in ONNX) do not."""
    sizes = {}
    for label, artifact in artifacts.items():
        weights = read_manifest(artifact)["weights"]
        blocks = [w for name, w in weights.items() if block_index(name) is not None]
        decode_bytes = sum(f.stat().st_size for f in artifact.iterdir() if f.is_file() and f.name.startswith("model.onnx"))
        sizes[label] = {"block_params": sum(int(math.prod(w["shape"])) for w in blocks),
                        "block_nonzeros": sum(w["nonzeros"] for w in blocks), "decode_graph_bytes": decode_bytes}
    dense = sizes["dense"]
    lines = ["## Parameters and size", "", "| artifact | decoder-block params | vs dense | non-zeros | decode graph on disk "
             "| vs dense |", "|---|---|---|---|---|---|"]
    for label, z in sizes.items():
        lines.append(f"| {label} | {z['block_params'] / 1e6:.1f}M | {z['block_params'] / max(dense['block_params'], 1):.2f} | "
                     f"{z['block_nonzeros'] / 1e6:.1f}M | {z['decode_graph_bytes'] / 2**30:.2f} GiB | "
                     f"{z['decode_graph_bytes'] / dense['decode_graph_bytes']:.2f} |")
    return sizes, "\n".join(lines)


def _apply_recipe(args: argparse.Namespace, data: dict[str, Any]) -> None:
    allowed = {"proxy", "blocks", "variants", "compare", "runtimes", "out", "calibration"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SparseDeployError(f"proxy recipe key '{unknown[0]}' is not known; allowed: {', '.join(sorted(allowed))}")
    if data.get("proxy") not in PROXIES:
        raise SparseDeployError(f"proxy recipe key 'proxy': expected one of {', '.join(PROXIES)}")
    args.proxy = data["proxy"]
    args.blocks = int(data.get("blocks", args.blocks))
    args.variant = [Variant.parse(v) for v in data.get("variants", [])] or None
    args.compare = list(data.get("compare", []))
    args.runtime = ",".join(data["runtimes"]) if "runtimes" in data else args.runtime
    args.out = Path(data["out"]) if "out" in data else args.out
    calibration = data.get("calibration", {})
    args.calib_samples = int(calibration.get("samples", args.calib_samples))
    args.calib_seq_len = int(calibration.get("seq_len", args.calib_seq_len))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", choices=sorted(PROXIES), default="llama7b")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--variant", action="append", type=Variant.parse, metavar="LABEL=METHOD:SPARSITY[:owl][:K=V]",
                        help="a pruned twin (repeatable; default: pruned=wanda:0.7:owl)")
    parser.add_argument("--compare", action="append", default=[], metavar="VARIANT=BASELINE",
                        help="also compare VARIANT with the variant BASELINE (repeatable), e.g. oats-50=wanda-50")
    parser.add_argument("--keep-models", action="store_true", help="keep pruned HF directories after export")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--past", type=int, default=127)
    parser.add_argument("--repetitions", type=int, default=10, help="timed runs per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all artifacts")
    parser.add_argument("--runtime", default=",".join(DEFAULT_RUNTIMES),
                        help=f"comma-separated, from {', '.join(RUNTIMES)} (default: %(default)s)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--recipe", type=Path, help="a proxy recipe (recipes/proxies/*.yaml): proxy, blocks, "
                        "variants, compare, runtimes, calibration, out; command-line flags given explicitly are overridden by it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.recipe:
        _apply_recipe(args, yaml.safe_load(args.recipe.read_text()))

    depth = PROXIES[args.proxy][1]
    dense_dir = build_proxy(args.proxy, args.blocks)
    head_dir = build_proxy(args.proxy, 0)
    variants = args.variant or [Variant.parse("pruned=wanda:0.7:owl")]
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels) or {"dense", HEAD_ONLY, HEAD_ONLY_INT8} & set(labels):
        raise SparseDeployError(f"variant labels must be unique and not 'dense', '{HEAD_ONLY}' or '{HEAD_ONLY_INT8}'")
    baselines = dict(pair.split("=", 1) for pair in args.compare if "=" in pair)
    if len(baselines) != len(args.compare) or not set(baselines) | set(baselines.values()) <= set(labels):
        raise SparseDeployError(f"--compare takes VARIANT=BASELINE pairs of variant labels ({', '.join(labels)})")
    pruned = [variant_artifact(dense_dir, v, args.calib_samples, args.calib_seq_len, args.keep_models)
              for v in variants]
    heads = {v.label: v.head_reference for v in variants}
    references = {HEAD_ONLY: artifact_for(head_dir)}
    if HEAD_ONLY_INT8 in heads.values():
        references[HEAD_ONLY_INT8] = artifact_for(int8_head_proxy(head_dir))
    artifacts = [artifact_for(dense_dir), *pruned, *references.values()]
    all_labels = ["dense", *labels, *references]
    settings = BenchSettings(seq_len=args.seq_len, past=args.past, repetitions=args.repetitions, rounds=args.rounds,
                             runtimes=tuple(args.runtime.split(",")))
    rows = measure(artifacts, settings, labels=all_labels)
    table, section = decomposition(rows, args.blocks, depth, baselines, heads)
    fastest, fastest_section = fastest_dense_blocks(rows, args.blocks, heads=heads)
    fastest_int8, fastest_int8_section = fastest_dense_blocks(rows, args.blocks, INT8_BASELINES, heads)
    sizes, size_section = artifact_sizes(dict(zip(all_labels, artifacts)))
    recipes = "; ".join(f"{v.label}: {v.describe()}" for v in variants)
    out = args.out or RESULTS / f"latency_{args.proxy}_proxy"
    report = write_report(rows, settings, out, title=f"Latency: {args.proxy} geometry proxy ({args.blocks} blocks, "
                          f"random weights), dense vs {recipes}",
                          extra={"head_references": heads, "decomposition": table, "fastest_dense_blocks": fastest,
                                 "fastest_int8_dense_blocks": fastest_int8, "artifacts": sizes,
                                 "sections": [section, fastest_section, *([fastest_int8_section] if fastest_int8 else []),
                                              size_section]})
    log.info("wrote %s", out / "latency.md")
    log.info("the proxy cache %s now holds %.1f GB (`make clean-cache` empties it)", dense_dir.parent,
             tree_gb(dense_dir.parent))
    return 1 if report["sparse_not_faster_in_deepsparse"] else 0


if __name__ == "__main__":
    sys.exit(main())
