"""``sparse-deploy run RECIPE --out DIR``: the whole pipeline, stage by stage, resumable.

    DIR/stages/prune-0 .. prune-N   pruned HF directories (each step starts from the previous one)
    DIR/stages/quantize             int8 weights on the pruned model (when the recipe asks)
    DIR/stages/evaluate-dense, evaluate
    DIR/stages/export-dense, export ONNX artifacts (parity-checked)
    DIR/stages/benchmark            latency.{json,md,png}, dense vs pruned, every runtime
    DIR/artifact                    the hand-off: the pruned artifact + report + MODEL_CARD.md + recipe.yaml

Each stage is fingerprinted by its own settings and its inputs' fingerprints (the model and
the code of pipeline/, export/ and runtime/ at the root), and written atomically with the
fingerprint in ``stage.json``. A repeated run skips every stage whose fingerprint still
matches; a changed recipe redoes exactly the stages that depend on the change, a changed code
all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.app.recipe import Recipe, check_inputs, load_recipe
from pipeline.architectures import ModelKind
from pipeline.atomic import atomic_directory, check_directory_path
from pipeline.environment import source_digest
from pipeline.models import LoadedModel, load_model, load_streamed

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
DEMO_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(out: Path, name: str, print_: str, produce: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run ``produce(tmp_dir) -> info`` unless ``out/stages/name`` already holds this
    fingerprint; returns the stage's info (with its directory)."""
    directory = out / "stages" / name
    marker = directory / STAGE_FILE
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == print_:
            log.info("stage %s: up to date, skipped", name)
            return {**done["info"], "dir": str(directory), "skipped": True}
    log.info("stage %s: running", name)
    started = time.perf_counter()
    with atomic_directory(directory, overwrite=True) as tmp:
        info = produce(tmp)
        seconds = time.perf_counter() - started
        (tmp / STAGE_FILE).write_text(json.dumps({"fingerprint": print_, "seconds": seconds,
                                                  "info": info}, indent=2) + "\n")
    log.info("stage %s: done in %.0f s", name, seconds)
    return {**info, "dir": str(directory), "skipped": False}


# -- the stages -----------------------------------------------------------------------------
def _load(source: str, recipe: Recipe) -> LoadedModel:
    """The model as the recipe wants it: whole, or streamed (its blocks read one at a time)."""
    return load_streamed(source) if recipe.stream else load_model(source)


def _prune(source: str, step: Any, recipe: Recipe) -> Callable[[Path], dict[str, Any]]:
    def produce(tmp: Path) -> dict[str, Any]:
        from pipeline.prune import build_record, prune_model, save_pruned
        from pipeline.pruners import build_pruner

        loaded = _load(source, recipe)
        result = prune_model(loaded, build_pruner(step.method, **step.params), step.sparsity, recipe.calibration,
                             owl=step.owl)
        record = build_record(loaded, result)
        save_pruned(loaded, record, tmp / "model")
        return {"recipe": record["recipe"], "achieved": {k: record["achieved"][k] for k in ("blocks_linear", "model")},
                "timings_s": result.timings_s}

    return produce


def _quantize(source: str, recipe: Recipe) -> Callable[[Path], dict[str, Any]]:
    def produce(tmp: Path) -> dict[str, Any]:
        from pipeline.prune import RECORD_FILE, calibration_batches, save_pruned
        from pipeline.quantize import quantize_model, worst_layer

        loaded = load_model(source)
        q = recipe.quantize
        batches = calibration_batches(loaded, recipe.calibration) if q.needs_calibration else None
        entry = quantize_model(loaded, q, batches)
        record = json.loads((Path(source) / RECORD_FILE).read_text())
        record["recipe"]["quantization"] = entry
        save_pruned(loaded, record, tmp / "model")
        return {"quantization": {k: v for k, v in entry.items() if k != "layers"}, "worst_layer": worst_layer(entry)}

    return produce


def _evaluate(model_dir: str, recipe: Recipe) -> Callable[[Path], dict[str, Any]]:
    def produce(_tmp: Path) -> dict[str, Any]:
        loaded = _load(model_dir, recipe)
        e = recipe.evaluate
        if loaded.spec.kind is ModelKind.VISION:
            from pipeline.images import fashion_mnist
            from pipeline.knn import knn_accuracy

            train, test = fashion_mnist("train", e.train_images, seed=1), fashion_mnist("test", e.test_images, seed=2)
            with loaded.forward_ready():
                result = knn_accuracy(loaded.model, train.images, train.labels, test.images, test.labels,
                                      e.image_size)
            return {"metric": "knn_top1", "value": result.top1, "details": result.to_dict()}
        if loaded.spec.kind is ModelKind.CAUSAL_LM:
            from pipeline.evaluate import perplexity

            with loaded.forward_ready():
                result = perplexity(loaded.model, loaded.tokenizer, e.source, e.windows, e.seq_len)
            return {"metric": "perplexity", "value": result.perplexity, "details": result.to_dict()}
        return {"metric": None, "value": None, "details": "no quality metric for text encoders"}

    return produce


def _export(model_dir: str, recipe: Recipe) -> Callable[[Path], dict[str, Any]]:
    def produce(tmp: Path) -> dict[str, Any]:
        from export.artifact import export_artifact

        manifest = export_artifact(model_dir, tmp / "artifact", parity_windows=recipe.export.parity_windows,
                                   parity_seq_len=recipe.export.parity_seq_len, stream=recipe.stream)
        return {"parity": manifest["parity"], "flavours": list(manifest["flavours"])}

    return produce


def _benchmark(dense: Path, pruned: Path, recipe: Recipe) -> Callable[[Path], dict[str, Any]]:
    def produce(tmp: Path) -> dict[str, Any]:
        from runtime.bench import bench

        b = recipe.benchmark  # a BenchSettings with allow_slower
        report = bench([dense, pruned], b, tmp, allow_slower=b.allow_slower, labels=["dense", "pruned"],
                       title=f"Latency: {recipe.name}, dense vs pruned")
        return {"rows": [{k: r[k] for k in ("label", "flavour", "runtime", "stats", "error")} for r in report["rows"]],
                "speedups": report["speedups"]}

    return produce


# -- the run --------------------------------------------------------------------------------
def run_recipe(path: Path, out: Path) -> dict[str, Any]:
    """Validate ``path`` (before any compute), run or skip each stage, assemble the artifact."""
    from pipeline.app.report import assemble_artifact, summary_lines

    recipe = load_recipe(path)
    check_directory_path(out)
    check_inputs(recipe)
    resolved = recipe.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict[str, Any]] = {}

    # The code is part of every stage's inputs: a new version of sparse-deploy redoes the stages.
    dense_print = fingerprint("model", recipe.model, source_digest("pipeline", "export", "runtime"))
    source, upstream = recipe.model, dense_print
    for i, step in enumerate(recipe.prune):
        upstream = fingerprint("prune", resolved["prune"][i], resolved["calibration"], upstream)
        stages[f"prune-{i}"] = run_stage(out, f"prune-{i}", upstream, _prune(source, step, recipe))
        source = str(Path(stages[f"prune-{i}"]["dir"]) / "model")
    if recipe.quantize is not None:
        upstream = fingerprint("quantize", resolved["quantize"], resolved["calibration"], upstream)
        stages["quantize"] = run_stage(out, "quantize", upstream, _quantize(source, recipe))
        source = str(Path(stages["quantize"]["dir"]) / "model")
    pruned_print = upstream

    if recipe.evaluate is not None:
        settings = resolved["evaluate"]
        stages["evaluate-dense"] = run_stage(out, "evaluate-dense", fingerprint("evaluate", settings, dense_print),
                                             _evaluate(recipe.model, recipe))
        stages["evaluate"] = run_stage(out, "evaluate", fingerprint("evaluate", settings, pruned_print),
                                       _evaluate(source, recipe))
    export_settings = resolved["export"]
    dense_export_print = fingerprint("export", export_settings, dense_print)
    pruned_export_print = fingerprint("export", export_settings, pruned_print)
    stages["export-dense"] = run_stage(out, "export-dense", dense_export_print, _export(recipe.model, recipe))
    stages["export"] = run_stage(out, "export", pruned_export_print, _export(source, recipe))
    dense_art = Path(stages["export-dense"]["dir"]) / "artifact"
    pruned_art = Path(stages["export"]["dir"]) / "artifact"
    if recipe.benchmark is not None:
        stages["benchmark"] = run_stage(out, "benchmark",
                                        fingerprint("benchmark", resolved["benchmark"], dense_export_print,
                                                    pruned_export_print),
                                        _benchmark(dense_art, pruned_art, recipe))

    artifact = out / "artifact"
    final_print = fingerprint("artifact", resolved, {k: v.get("dir") for k, v in stages.items()},
                              [json.loads((Path(v["dir"]) / STAGE_FILE).read_text())["fingerprint"]
                               for v in stages.values()])
    marker = artifact / "report.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == final_print:
        log.info("artifact up to date: %s", artifact)
        summary = json.loads(marker.read_text())
        summary["summary"] = summary_lines(summary, artifact)
    else:
        summary = assemble_artifact(recipe, stages, pruned_art, artifact, final_print)
    (out / "recipe.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    return summary
