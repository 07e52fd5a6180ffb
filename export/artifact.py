"""``sparse-deploy export``: a pruned model directory -> a deployable artifact directory.

    ART/
      model.onnx (+ model.onnx.data)   decode graph with KV cache: ONNX Runtime, optimum and DeepSparse
      prefill/model.onnx (+ data)      whole-sequence graph without cache (LLMs only)
      config.json, tokenizer files     what optimum's ORTModelForCausalLM needs to load ART
      manifest.json                    weights' sparsity, recipe, parity, versions, sha256 of every file
      parity/<flavour>.npz             fixed inputs + torch outputs: `sparse-deploy verify` re-checks the graphs

Encoders and vision models get one ``model.onnx``. The directory is written atomically and
only when parity passes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from export.graphs import IR_VERSION, OPSET, export_graph, make_deepsparse_compatible
from export import templates
from export.metadata import write_metadata
from export.parity import (PARITY_SEQ_LEN, PARITY_WINDOWS, Tolerance, check_reference, perplexity_parity,
                           reference_outputs)
from export.streamed import ExternalData, write_streamed_graph
from export.weights import rename_weight_initializers, weight_report
from pipeline.architectures import ModelKind
from pipeline.atomic import atomic_directory, check_destination
from pipeline.data import check_windows
from pipeline.environment import describe
from pipeline.errors import SparseDeployError
from pipeline.factorized import factor_roles
from pipeline.models import LoadedModel, load_model, load_streamed
from pipeline.progress import heartbeat
from pipeline.prune import RECORD_FILE

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Written after the manifest (it quotes the manifest's sha256), so not among the files the manifest hashes.
MODEL_CARD = "MODEL_CARD.md"
UNHASHED = (MANIFEST, MODEL_CARD)
PARITY_DIR = "parity"  # fixed inputs and torch outputs per flavour, for `sparse-deploy verify`
FORMAT = "sparse-deploy-artifact/1"
EXTERNAL_DATA_ABOVE = 1 << 30  # bytes of initializers; protobuf caps a file at 2 GiB

FLAVOURS: dict[ModelKind, dict[str, str]] = {
    ModelKind.CAUSAL_LM: {
        "decode": "model.onnx",
        "prefill": "prefill/model.onnx",
    },
    ModelKind.TEXT_ENCODER: {"encoder": "model.onnx"},
    ModelKind.VISION: {"encoder": "model.onnx"},
}
_FLAVOUR_NOTES = {
    "decode": "KV cache in optimum's names; dynamic sequence and past lengths, so it also prefills with an empty "
              "past. Loaded by ORTModelForCausalLM and compiled by DeepSparse 1.8.0 (RoPE as table lookups: "
              "DeepSparse aborts on RoPE computed from a position_ids input).",
    "prefill": "whole sequence, no cache: prefill latency and held-out perplexity.",
    "encoder": "last_hidden_state of the whole input.",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hashed_files(root: Path) -> dict[str, str]:
    """sha256 of every file of an artifact directory except the top-level ``UNHASHED`` ones (a
    file linked under two names, such as a data file two graphs share, is read once)."""
    by_inode: dict[tuple[int, int], str] = {}
    hashes = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and str(p.relative_to(root)) not in UNHASHED:
            stat = p.stat()
            key = (stat.st_dev, stat.st_ino)
            if key not in by_inode:
                by_inode[key] = sha256(p)
            hashes[str(p.relative_to(root))] = by_inode[key]
    return hashes


def read_manifest(artifact: Path) -> dict[str, Any]:
    """An artifact's manifest, or a one-line error for a directory that is not one or a manifest
    that is not JSON (truncated in a copy, edited by hand)."""
    path = artifact / MANIFEST
    if not path.is_file():
        raise SparseDeployError(f"'{artifact}' is not an artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparseDeployError(f"{path} is not valid JSON ({exc}): the artifact is damaged") from None
    if not isinstance(manifest, dict):
        raise SparseDeployError(f"{path} is not a JSON object: the artifact is damaged")
    return manifest


def _source_hash(model_dir: Path) -> str | None:
    files = sorted(model_dir.glob("*.safetensors")) if model_dir.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(sha256(f).encode())
    return digest.hexdigest()


def _recipe(model_dir: Path) -> dict[str, Any]:
    record = model_dir / RECORD_FILE
    if record.is_file():
        return json.loads(record.read_text())["recipe"]
    return {"method": "none (dense)"}


def _traced(loaded: LoadedModel, flavour: str, key: str) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, str]]:
    """Trace the graph, give its weights their parameter names, keep it as a template."""
    with tempfile.TemporaryDirectory() as raw_dir:
        raw = Path(raw_dir) / "raw.onnx"
        with heartbeat(f"tracing the {flavour} graph"):
            io = export_graph(loaded.model, flavour, raw)
        proto = onnx.load(str(raw), load_external_data=True)
    weights = rename_weight_initializers(proto.graph, loaded.model)
    if templates.covers(loaded.model, weights):
        templates.save(key, proto, io, weights, loaded.model)
    return proto, io, weights


def _write_graph(loaded: LoadedModel, flavour: str, dest: Path, metadata: dict[str, Any],
                 reuse: bool = True) -> dict[str, Any]:
    """The graph (a template with this model's weights when one fits, else traced), made
    DeepSparse-compatible, with metadata, saved."""
    key = templates.template_key(loaded.model, flavour)
    found = templates.load(key, loaded.model) if reuse else None
    if found:
        log.info("%s graph: reusing the traced structure %s (same architecture, only weights differ)", flavour, key)
    proto, io, names = found or _traced(loaded, flavour, key)
    make_deepsparse_compatible(proto)
    weights = weight_report(proto.graph, names, factor_roles(loaded.model))
    write_metadata(proto, {**metadata, "flavour": {"name": flavour, **io}, "weights": weights})
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = sum(len(i.raw_data) for i in proto.graph.initializer)
    if size > EXTERNAL_DATA_ABOVE:
        onnx.save_model(proto, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dest.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(dest))
    return {"io": io, "weights": weights, "template": key if found else None}


def _copy_serving_files(model_dir: Path, out: Path) -> None:
    for pattern in ("config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
                    "*.model", "chat_template.jinja", "vocab.txt", "preprocessor_config.json"):
        for f in model_dir.glob(pattern):
            if f.is_file():
                shutil.copy2(f, out / f.name)


def export_artifact(model: str, out: Path, overwrite: bool = False, tolerance: Tolerance = Tolerance(),
                    parity_windows: int = PARITY_WINDOWS, parity_seq_len: int = PARITY_SEQ_LEN,
                    stream: bool = False) -> dict[str, Any]:
    """Export ``model`` (a pruned directory, a named model or a Hub id) to the artifact ``out``.
    ``stream``: for a model larger than memory, one decoder block in memory at a time
    (export/streamed.py); the artifact is the same."""
    check_destination(out, overwrite)
    check_windows(parity_windows, parity_seq_len, "perplexity parity")
    loaded = load_streamed(model) if stream else load_model(model)
    model_dir = Path(loaded.path)
    started = time.perf_counter()
    common = {
        "format": FORMAT,
        "source_model": {"name": loaded.source, "model_type": loaded.spec.model_type,
                         "safetensors_sha256": _source_hash(model_dir)},
        "recipe": _recipe(model_dir),
        "export": {"exporter": "torch.onnx (dynamo)", "opset": OPSET, "ir_version": IR_VERSION,
                   "streamed": stream},
    }
    with atomic_directory(out, overwrite=overwrite) as tmp:
        flavours, parity, weights = {}, {}, None
        # streamed: every graph's weights in the first graph's data file (the others link it)
        store = ExternalData(tmp / (next(iter(FLAVOURS[loaded.spec.kind].values())) + ".data"))
        for flavour, rel in FLAVOURS[loaded.spec.kind].items():
            if loaded.streamed is not None:
                written = write_streamed_graph(loaded.model, loaded.streamed.checkpoint, flavour, tmp / rel, common,
                                               store, factor_roles(loaded.model))
            else:
                written = _write_graph(loaded, flavour, tmp / rel, common)
            with loaded.forward_ready():
                reference = reference_outputs(loaded.model, flavour, written["io"]["outputs"])
            parity[flavour] = check_reference(tmp / rel, reference, tolerance)
            if written["template"] and not parity[flavour]["passed"]:  # never ship a template's mistake
                log.warning("%s graph from template %s misses parity: tracing it", flavour, written["template"])
                templates.discard(written["template"])
                written = _write_graph(loaded, flavour, tmp / rel, common, reuse=False)
                parity[flavour] = check_reference(tmp / rel, reference, tolerance)
            reference.save(tmp / PARITY_DIR / f"{flavour}.npz")
            flavours[flavour] = {"file": rel, **written["io"], "note": _FLAVOUR_NOTES[flavour],
                                 "runtimes": ["onnxruntime", "deepsparse"],
                                 "traced": written["template"] is None}  # else: a template with these weights
            weights = weights or written["weights"]  # every flavour holds the same weights
        if "prefill" in flavours and loaded.tokenizer is not None:  # proxies ship no tokenizer
            with heartbeat(f"perplexity parity on {parity_windows} x {parity_seq_len} tokens"), loaded.forward_ready():
                parity["perplexity"] = perplexity_parity(loaded.model, loaded.tokenizer,
                                                         tmp / flavours["prefill"]["file"], tolerance,
                                                         windows=parity_windows, seq_len=parity_seq_len)
        failed = [k for k, v in parity.items() if not v["passed"]]
        if failed:
            raise SparseDeployError(f"parity failed for {', '.join(failed)}: {json.dumps({k: parity[k] for k in failed})}"
                                    "; nothing was written")
        _copy_serving_files(model_dir, tmp)
        manifest = {
            **common,
            "flavours": flavours,
            "weights": weights,
            "parity": {"tolerance": tolerance.__dict__, **parity},
            "environment": describe(),
            "export_seconds": time.perf_counter() - started,
            "files": hashed_files(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
