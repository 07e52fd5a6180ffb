"""The hand-off a serving team receives: the pruned artifact plus report and model card.

``assemble_artifact`` copies the exported artifact, adds ``report.json`` / ``report.md``
(quality and latency, dense vs pruned, per runtime, with hardware and versions), the plots,
``MODEL_CARD.md`` (what was done, on what data, how to load it in ONNX Runtime and
DeepSparse, known limits) and the resolved ``recipe.yaml``, then re-hashes every file into
the manifest so that ``sparse-deploy verify`` covers them too. Written atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoConfig

from export.artifact import MANIFEST, MODEL_CARD, hashed_files, sha256
from pipeline.app.recipe import Recipe
from pipeline.architectures import ModelKind, spec_for_type
from pipeline.atomic import atomic_directory
from pipeline.environment import describe

log = logging.getLogger(__name__)


def _latency_table(bench: dict[str, Any] | None) -> dict[str, dict[str, dict[str, float]]]:
    """flavour -> runtime -> {dense_ms, pruned_ms, speedup}."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in (bench or {}).get("rows", []):
        if row["error"]:
            continue
        cell = table.setdefault(row["flavour"], {}).setdefault(row["runtime"], {})
        cell[f"{row['label']}_ms"] = row["stats"]["median_ms"]
    for runtimes in table.values():
        for cell in runtimes.values():
            if "dense_ms" in cell and "pruned_ms" in cell:
                cell["speedup"] = cell["dense_ms"] / cell["pruned_ms"]
    return table


def summary_lines(report: dict[str, Any], artifact: Path) -> list[str]:
    """The lines ``make demo`` ends with: where things are, quality, latency, the manifest to pin."""
    lines = [f"artifact: {artifact}   report: {artifact / 'report.md'}   card: {artifact / MODEL_CARD}"]
    q = report.get("quality")
    if q and q["metric"]:
        lines.append(f"{q['metric']}: dense {q['dense']:.4g} -> pruned {q['pruned']:.4g}")
    main = "decode" if "decode" in report["latency"] else next(iter(report["latency"]), None)
    if main:
        cells = [f"{rt} {c['dense_ms']:.2f} -> {c['pruned_ms']:.2f} ms ({c.get('speedup', float('nan')):.2f}x)"
                 for rt, c in report["latency"][main].items() if "dense_ms" in c and "pruned_ms" in c]
        lines.append(f"latency ({main}, median): " + "; ".join(cells))
    if (artifact / MANIFEST).is_file():
        digest = sha256(artifact / MANIFEST)
        lines.append(f"manifest sha256 {digest}: hand it over with the artifact; the receiver runs "
                     f"`sparse-deploy verify {artifact} --manifest-sha256 {digest}`")
    return lines


def _quality_plot(report: dict[str, Any], path: Path) -> bool:
    q = report.get("quality")
    if not q or q["metric"] is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.2))
    ax.bar(["dense", "pruned"], [q["dense"], q["pruned"]], color=["#777777", "#2a7ab9"])
    ax.set_ylabel(q["metric"])
    ax.set_title(f"{report['recipe']['name']}: quality")
    for x, v in enumerate((q["dense"], q["pruned"])):
        ax.annotate(f"{v:.4g}", (x, v), ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _steps_text(report: dict[str, Any]) -> list[str]:
    lines = []
    for i, step in enumerate(report["steps"]):
        r = step["recipe"]
        params = {k: v for k, v in r.items() if k not in ("method", "target_sparsity", "allocation", "owl",
                                                          "block_sparsity", "calibration")}
        lines.append(f"{i + 1}. **{r['method']}** to {r['target_sparsity']:.0%} ({r['allocation']} allocation"
                     f"{', OWL M=' + str(r['owl']['m']) + ' lambda=' + str(r['owl']['lam']) if r.get('owl') else ''}), "
                     f"parameters `{json.dumps(params)}`; achieved sparsity of the blocks' weights "
                     f"{step['achieved']['blocks_linear']['sparsity']:.2%}, blocks' stored parameters "
                     f"{step['achieved']['blocks_linear']['params'] / 1e6:.2f}M, pruned in {step['timings_s']['total_s']:.0f} s.")
    q = report.get("quantization")
    if q:
        s = q["settings"]
        head = " and the LM head (round to nearest)" if s.get("head") else " (the LM head stays f32)"
        lines.append(f"{len(lines) + 1}. **int{s['bits']} weights** ({s['method']}, one scale per output channel, "
                     f"symmetric) for the blocks' Linear layers{head}, stored dequantized: ONNX Runtime and "
                     f"DeepSparse read plain f32 on that grid, the OpenVINO extension packs the non-zeros int8 "
                     f"(weights too dense for its sparse op run on OpenVINO's own int8 compression). Largest weight error "
                     f"{q['worst_layer']['weight_error']:.2%} (`{q['worst_layer']['layer']}`); every layer's in "
                     "`manifest.json` (`recipe.quantization.layers`).")
    return lines


def _report_md(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# Report: {report['recipe']['name']}", "",
             f"Model `{report['recipe']['model']}`; produced {report['produced']} on {env['cpu']} ({env['cores']} cores), "
             f"torch {env['packages']['torch']}, onnxruntime {env['packages']['onnxruntime']}.", "", "## Pruning", "",
             *_steps_text(report), ""]
    q = report.get("quality")
    if q and q["metric"]:
        lines += ["## Quality", "", "| | dense | pruned |", "|---|---|---|",
                  f"| {q['metric']} | {q['dense']:.4g} | {q['pruned']:.4g} |", "",
                  f"Protocol: `{json.dumps(q['protocol'])}`.", "", "![quality](quality.png)", ""]
    if report["latency"]:
        lines += ["## Latency (median ms)", "", "| graph | runtime | dense | pruned | speedup |", "|---|---|---|---|---|"]
        for flavour, runtimes in report["latency"].items():
            for runtime, c in runtimes.items():
                lines.append(f"| {flavour} | {runtime} | {c.get('dense_ms', float('nan')):.2f} | "
                             f"{c.get('pruned_ms', float('nan')):.2f} | {c.get('speedup', float('nan')):.2f}x |")
        lines += ["", "Full protocol, spread and DeepSparse's native-op share: `latency.md`.", "",
                  "![latency](latency.png)", ""]
    return "\n".join(lines)


def openvino_snippet(graph: str, feed: str) -> str:
    """How a serving team runs the artifact in OpenVINO with the sparse MatMul extension (the
    model card prints it; a test runs it). ARTIFACT_DIR and SPARSE_DEPLOY_DIR are placeholders."""
    from runtime.openvino_runner import KERNELS, LIBRARY

    library = LIBRARY.relative_to(KERNELS.parents[1])
    return "\n".join([
        "import numpy as np, openvino as ov",
        "core = ov.Core()",
        f'core.add_extension("SPARSE_DEPLOY_DIR/{library}")  # the sparse MatMul op; omit it for plain OpenVINO',
        f'model = core.read_model("ARTIFACT_DIR/{graph}")',
        'print("sparse MatMuls:", sum(op.get_type_name() == "SparseMatMul" for op in model.get_ordered_ops()))',
        'compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})',
        f"print(compiled({feed})[0].shape)"])


def openvino_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``openvino`` entry: how the artifact loads there and which weights go sparse."""
    from runtime.openvino_runner import BUILD_COMMAND, KERNELS, LIBRARY, MIN_SPARSITY, MIN_SPARSITY_DECODE

    weights = manifest.get("weights", {})

    def going_sparse(threshold: float) -> int:
        return sum(len(w["shape"]) == 2 and w["sparsity"] >= threshold for w in weights.values())

    return {"extension": str(LIBRARY.relative_to(KERNELS.parents[1])), "build": BUILD_COMMAND,
            "licence": "OpenVINO: Apache-2.0", "precision": "f32 (INFERENCE_PRECISION_HINT)",
            "min_sparsity": MIN_SPARSITY, "sparse_weights": going_sparse(MIN_SPARSITY),
            "min_sparsity_decode": MIN_SPARSITY_DECODE, "sparse_weights_decode": going_sparse(MIN_SPARSITY_DECODE),
            "weights": len(weights),
            "how": "the extension's ONNX-frontend conversion of MatMul packs every constant weight with at least "
                   "min_sparsity zeros (SPARSE_DEPLOY_OV_MIN_SPARSITY; sparse-deploy sets min_sparsity_decode for "
                   "decode graphs) into the bitmap-16 format when the model is read; the ONNX file is unchanged"}


def _graph_feed(kind: ModelKind, config: Any) -> tuple[str, tuple[int, ...], str]:
    """The graph the snippets run, its input's shape and a numpy expression of that input:
    token ids for decoders' prefill graphs and text encoders, the configured image for vision."""
    graph_input = kind.encoder_input
    shape = graph_input.shape(config, batch=1, seq_len=128)
    graph = "prefill/model.onnx" if kind is ModelKind.CAUSAL_LM else "model.onnx"
    return graph, shape, f"np.zeros({shape}, np.{graph_input.dtype})"


def _model_card(report: dict[str, Any], manifest: dict[str, Any], config: Any) -> str:
    recipe = report["recipe"]
    flavours = manifest["flavours"]
    decode = "decode" in flavours
    calib = recipe["calibration"]
    q = report.get("quality")
    lines = [f"# Model card: {recipe['name']}", "",
             f"A pruned `{recipe['model']}` exported to ONNX by sparse-deploy.", "", "## What was done", "",
             *_steps_text(report), "",
             f"Calibration data: `{calib['source']}`, {calib['samples']} samples"
             f"{' x ' + str(calib['seq_len']) + ' tokens' if decode else ''}, seed {calib['seed']}. "
             "Sparsity and patterns of every weight, read from the file itself, are in `manifest.json`.", ""]
    if q and q["metric"]:
        lines += [f"Quality: {q['metric']} dense {q['dense']:.4g} -> pruned {q['pruned']:.4g} "
                  f"(`{json.dumps(q['protocol'])}`).", ""]
    lines += ["## How to load it", "", "ONNX Runtime (through optimum, with generation):" if decode else "ONNX Runtime:",
              "", "```python"]
    if decode:
        lines += ["from optimum.onnxruntime import ORTModelForCausalLM", "from transformers import AutoTokenizer",
                  'model = ORTModelForCausalLM.from_pretrained("ARTIFACT_DIR")',
                  'tokenizer = AutoTokenizer.from_pretrained("ARTIFACT_DIR")',
                  'ids = tokenizer("The capital of France is", return_tensors="pt")',
                  "print(tokenizer.decode(model.generate(**ids, max_new_tokens=20)[0]))"]
    graph, shape, feed = _graph_feed(spec_for_type(config.model_type).kind, config)
    if not decode:
        lines += ["import numpy as np, onnxruntime as ort",
                  'session = ort.InferenceSession("ARTIFACT_DIR/model.onnx", providers=["CPUExecutionProvider"])',
                  "name = session.get_inputs()[0].name",
                  f"print(session.run(None, {{name: {feed}}})[0].shape)"]
    ov_feed = f"{{0: {feed}}}"
    ov = openvino_manifest(manifest)
    decode_threshold = (f"; for the decode graph, set `SPARSE_DEPLOY_OV_MIN_SPARSITY={ov['min_sparsity_decode']}` "
                        f"before reading it: at one row the op pays from {ov['min_sparsity_decode']:.0%}") if decode else ""
    lines += ["```", "", "OpenVINO (Apache-2.0) with sparse-deploy's sparse MatMul extension, built in a sparse-deploy "
              f"checkout by `bash scripts/install.sh kernels` (weights with at least "
              f"{ov['min_sparsity']:.0%} zeros run on it{decode_threshold}; the rest, and everything without "
              "the extension, on OpenVINO's own kernels):", "", "```python", openvino_snippet(graph, ov_feed)]
    lines += ["```", "", "DeepSparse 1.8.0 (its own environment: numpy<2, onnx<1.15; set `NM_DISABLE_ANALYTICS=1`):", "",
              "```python", "import numpy as np", "from deepsparse import Engine",
              f'engine = Engine("ARTIFACT_DIR/{graph}", batch_size=1, input_shapes={[list(shape)]})',
              f"print(engine([{feed}])[0].shape)", "```", "",
              "## Check what you received", "",
              f"manifest.json sha256: `{report['manifest_sha256']}`", "",
              f"`sparse-deploy verify ARTIFACT_DIR --manifest-sha256 {report['manifest_sha256']}` re-checks every "
              "file's sha256 against the manifest and the graphs against the torch outputs stored at export. Take "
              "the pinned value from the hand-off message, not from this card: whoever can rewrite the files can "
              "rewrite this card too (SECURITY.md says what verify proves).", "", "## Known limits", "",
              "- DeepSparse's licence allows evaluation and development use, not production serving.",
              "- Unstructured zeros speed nothing up in ONNX Runtime or plain OpenVINO; only the sparse MatMul extension "
              "(openvino-sparse) and DeepSparse use them, and on narrow layers they may not pay off (see the latency "
              "table, measured here).",
              "- Perplexity is measured on packaged texts (not WikiText-2); compare dense vs pruned, not with papers.",
              ]
    if decode:
        lines.append("- Positions up to `max_position_embeddings` (RoPE tables baked into the graph); KV cache in "
                     "optimum's input/output names.")
    return "\n".join(lines) + "\n"


def assemble_artifact(recipe: Recipe, stages: dict[str, dict[str, Any]], pruned_art: Path, out: Path,
                      print_: str) -> dict[str, Any]:
    steps = [stages[k] for k in sorted(stages) if k.startswith("prune-")]
    quality = None
    if "evaluate" in stages:
        dense, pruned = stages["evaluate-dense"], stages["evaluate"]
        protocol = pruned["details"].get("protocol") if isinstance(pruned["details"], dict) else None
        quality = {"metric": pruned["metric"], "dense": dense["value"], "pruned": pruned["value"],
                   "protocol": protocol or {k: v for k, v in (pruned["details"] or {}).items() if k != "top1"}}
    bench = stages.get("benchmark")
    report = {"fingerprint": print_, "produced": time.strftime("%Y-%m-%d %H:%M"),
              "recipe": recipe.to_dict(), "steps": [{k: s[k] for k in ("recipe", "achieved", "timings_s")} for s in steps],
              "quantization": ({"settings": stages["quantize"]["quantization"],
                                "worst_layer": stages["quantize"]["worst_layer"]} if "quantize" in stages else None),
              "quality": quality, "latency": _latency_table(bench), "environment": describe()}
    with atomic_directory(out, overwrite=True) as tmp:
        shutil.copytree(pruned_art, tmp, dirs_exist_ok=True)
        if bench:
            for name in ("latency.md", "latency.json", "latency.png"):
                shutil.copy2(Path(bench["dir"]) / name, tmp / name)
        _quality_plot(report, tmp / "quality.png")
        (tmp / "report.md").write_text(_report_md(report))
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        manifest = json.loads((tmp / MANIFEST).read_text())
        manifest["recipe_pipeline"] = report["recipe"]
        manifest["openvino"] = openvino_manifest(manifest)
        manifest["files"] = hashed_files(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        report["manifest_sha256"] = sha256(tmp / MANIFEST)
        config = AutoConfig.from_pretrained(tmp, trust_remote_code=False)  # the artifact's own
        (tmp / MODEL_CARD).write_text(_model_card(report, manifest, config))
    report["summary"] = summary_lines(report, out)
    return report
