"""``make demo``: the main job on the packaged default model, end to end.

Loads smollm2-135m, measures its held-out perplexity, prunes it with OWL+Wanda to 50%
unstructured sparsity, writes the pruned model with its record, and prints a summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.atomic import check_destination
from pipeline.evaluate import perplexity
from pipeline.models import DEFAULT_MODEL, load_model
from pipeline.owl import OWLConfig
from pipeline.prune import RECORD_FILE, CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner

log = logging.getLogger(__name__)

DEMO_SPARSITY = 0.5


def run_demo(out: Path, overwrite: bool, eval_source: str = "wiki", eval_windows: int = 16,
             eval_seq_len: int = 512) -> dict:
    check_destination(out, overwrite)
    loaded = load_model(DEFAULT_MODEL)
    dense = perplexity(loaded.model, loaded.tokenizer, eval_source, eval_windows, eval_seq_len)
    log.info("dense perplexity %.3f", dense.perplexity)
    result = prune_model(loaded, build_pruner("wanda"), DEMO_SPARSITY, CalibrationConfig(), owl=OWLConfig())
    pruned = perplexity(loaded.model, loaded.tokenizer, eval_source, eval_windows, eval_seq_len)
    record = build_record(loaded, result)
    record["evaluation"] = {"dense": dense.to_dict(), "pruned": pruned.to_dict()}
    save_pruned(loaded, record, out, overwrite=overwrite)
    achieved = record["achieved"]["blocks_linear"]["sparsity"]
    p = dense.protocol
    print(f"\npruned model: {out}   record: {out / RECORD_FILE}")
    print(f"{DEFAULT_MODEL}, OWL+Wanda, blocks' Linear sparsity {achieved:.1%}, pruned in {result.timings_s['total_s']:.0f} s")
    print(f"perplexity ({p.source}, {p.windows} x {p.seq_len} tokens): dense {dense.perplexity:.2f} -> pruned {pruned.perplexity:.2f}")
    print(f"next: sparse-deploy export --model {out} --out {out}-onnx && sparse-deploy bench {out}-onnx")
    return json.loads(json.dumps(record["evaluation"]))
