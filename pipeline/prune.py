"""The Python API behind ``sparse-deploy prune``: calibrate, allocate, prune, record, save.

    loaded = load_model("smollm2-135m")
    result = prune_model(loaded, build_pruner("wanda"), 0.7, CalibrationConfig(), owl=OWLConfig())
    save_pruned(loaded, result, Path("out/wanda70"))
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.architectures import ModelKind, block_linear_layers, transformer_blocks
from pipeline.atomic import atomic_directory
from pipeline.data import TextProtocol, calibration_samples, text_source_path, token_batches
from pipeline.environment import describe, peak_rss_mb
from pipeline.images import fashion_mnist, pixel_batches
from pipeline.errors import SparseDeployError
from pipeline.models import LoadedModel
from pipeline.owl import OWLConfig, measure_outlier_ratios, owl_sparsities
from pipeline.pruners import Pruner
from pipeline.sequential import BlockContext, calibrate_sequentially
from pipeline.sparsity_report import sparsity_report

log = logging.getLogger(__name__)

RECORD_FILE = "prune_record.json"
IMAGE_SOURCE = "fashion-mnist"


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration windows drawn from ``source``. The papers use 128 x 2048 tokens of C4;
    our default (64 x 512 = 32k tokens) keeps a 2-core prune of a 135M model within
    minutes, and ``c4.utf8`` holds only ~78k tokens. Vision models calibrate on
    ``samples`` Fashion-MNIST training images at ``image_size`` pixels."""

    source: str = "c4"
    samples: int = 64
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 8
    image_size: int = 224

    def __post_init__(self) -> None:
        if self.samples < 1 or self.seq_len < 2 or self.batch_size < 1 or self.image_size < 1:
            raise SparseDeployError(
                f"calibration needs samples >= 1, seq_len >= 2, batch_size >= 1, image_size >= 1 (got {self.samples}, "
                f"{self.seq_len}, {self.batch_size}, {self.image_size})"
            )

    def protocol(self) -> TextProtocol:
        return TextProtocol(self.source, self.samples, self.seq_len, sampling="random", seed=self.seed)

    def describe(self, kind: ModelKind) -> dict[str, Any]:
        """What was calibrated on, for the record."""
        if kind is ModelKind.VISION:
            return {"source": self.source, "images": self.samples, "image_size": self.image_size, "seed": self.seed,
                    "sampling": "random"}
        return self.protocol().to_dict()


@dataclass
class PruneResult:
    method: dict[str, Any]
    target_sparsity: float
    block_sparsity: list[float]
    calibration: dict[str, Any]
    owl: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # per block, what the method reported


def check_sparsity(sparsity: float | None, pruner: Pruner) -> float:
    """The target sparsity, validated; N:M pruners imply theirs."""
    implied = pruner.implied_sparsity()
    if implied is not None:
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise SparseDeployError(f"sparsity {sparsity} contradicts the N:M pattern {pruner.pattern} ({implied:g})")
        return implied
    if sparsity is None:
        raise SparseDeployError("give a target sparsity (or an N:M pattern)")
    if not 0 <= sparsity < 1:
        raise SparseDeployError(f"sparsity must lie in [0, 1), got {sparsity}")
    return sparsity


def check_calibration_source(kind: ModelKind, source: str) -> None:
    """Images for vision models, an existing text source for the others (before any compute)."""
    if kind is ModelKind.VISION:
        if source != IMAGE_SOURCE:
            raise SparseDeployError(f"vision models calibrate on images: use the calibration source '{IMAGE_SOURCE}' "
                                    f"(got '{source}')")
    else:
        text_source_path(source)


def calibration_batches(loaded: LoadedModel, calibration: CalibrationConfig) -> list[dict[str, Any]]:
    check_calibration_source(loaded.spec.kind, calibration.source)
    if loaded.spec.kind is ModelKind.VISION:
        images = fashion_mnist("train", calibration.samples, calibration.seed).images
        return pixel_batches(images, calibration.image_size, calibration.batch_size)
    ids = calibration_samples(loaded.tokenizer, calibration.source, calibration.samples, calibration.seq_len,
                              calibration.seed)
    return token_batches(ids, calibration.batch_size, causal_lm=loaded.spec.kind is ModelKind.CAUSAL_LM)


def prune_model(loaded: LoadedModel, pruner: Pruner, sparsity: float | None, calibration: CalibrationConfig,
                owl: OWLConfig | None = None, batches: list[dict[str, Any]] | None = None) -> PruneResult:
    """Prune ``loaded.model`` in place. ``batches`` overrides the text calibration (vision)."""
    target = check_sparsity(sparsity, pruner)
    if owl is not None and pruner.implied_sparsity() is not None:
        raise SparseDeployError("OWL allocates unstructured per-block sparsities; it does not combine with N:M here")
    pruner.check_model(block_linear_layers(loaded.model))
    batches = batches if batches is not None else calibration_batches(loaded, calibration)
    n_blocks = len(transformer_blocks(loaded.model))
    timings: dict[str, float] = {}
    owl_info = None

    start = time.perf_counter()
    if owl is not None:
        ratios = measure_outlier_ratios(loaded.model, batches, owl.m,
                                        residency=loaded.streamed.reading() if loaded.streamed else None)
        sparsities = owl_sparsities(ratios, target, owl.lam)
        owl_info = {**asdict(owl), "outlier_ratios": ratios}
        timings["owl_s"] = time.perf_counter() - start
        log.info("OWL block sparsities: %s", ", ".join(f"{s:.3f}" for s in sparsities))
    else:
        sparsities = [target] * n_blocks

    diagnostics: list[dict[str, Any]] = []

    def prune(ctx: BlockContext) -> bool:
        reported = pruner.prune_block(ctx, sparsities[ctx.index])
        if reported:
            diagnostics.append({"block": ctx.index, **reported})
        return True

    prune_start = time.perf_counter()
    try:
        calibrate_sequentially(loaded.model, batches, pruner.statistics, prune, description=pruner.name,
                               residency=loaded.streamed.keeping() if loaded.streamed else None)
    except BaseException:
        if loaded.streamed:
            loaded.streamed.close()  # the blocks written so far: a spool, not an output
        raise
    pruner.finalize(loaded.model, loaded.spec)
    timings["prune_s"] = time.perf_counter() - prune_start
    timings["total_s"] = time.perf_counter() - start
    return PruneResult(method=pruner.config(), target_sparsity=target, block_sparsity=sparsities,
                       calibration=calibration.describe(loaded.spec.kind), owl=owl_info, timings_s=timings,
                       diagnostics=diagnostics)


def build_record(loaded: LoadedModel, result: PruneResult) -> dict[str, Any]:
    """Everything needed to trust and reproduce a pruned model."""
    return {
        "source_model": {"name": loaded.source, "path": loaded.path, "model_type": loaded.spec.model_type},
        "recipe": {
            **result.method,
            "target_sparsity": result.target_sparsity,
            "allocation": "owl" if result.owl else "uniform",
            "owl": result.owl,
            "block_sparsity": result.block_sparsity,
            "calibration": result.calibration,
        },
        "achieved": sparsity_report(loaded.model, loaded.streamed.kept.counts if loaded.streamed else None),
        "timings_s": result.timings_s,
        **({"diagnostics": result.diagnostics} if result.diagnostics else {}),
        "peak_rss_mb": peak_rss_mb(),
        "environment": describe(),
    }


def save_pruned(loaded: LoadedModel, record: dict[str, Any], out: Path, overwrite: bool = False) -> None:
    """Write the model (HF format), its tokenizer and the record, atomically."""
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if loaded.streamed is None:
            loaded.model.save_pretrained(tmp)
        else:  # its blocks were written as they were pruned; the rest as save_pretrained would
            loaded.model.config.save_pretrained(tmp)
            if getattr(loaded.model, "generation_config", None) is not None:
                loaded.model.generation_config.save_pretrained(tmp)
            loaded.streamed.save(loaded.model, tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
