"""Recipes: the whole pipeline as data, validated before anything runs.

    name: demo
    model: smollm2-135m
    calibration: {source: c4, samples: 64, seq_len: 512, seed: 0}
    prune:                          # applied in order (OSSCAR then OATS, ...)
      - {method: wanda, sparsity: 0.5, owl: {m: 5, lam: 0.08}}
    quantize: {bits: 8, granularity: channel, method: rtn, head: false}   # optional, after every prune step
    evaluate: {source: wiki, windows: 16, seq_len: 512}
    export: {parity_windows: 4, parity_seq_len: 256}
    benchmark: {runtimes: [deepsparse, onnxruntime], seq_len: 128, past: 127, repetitions: 10}
    stream: false                   # true: one decoder block in memory at a time (models larger than memory)

Every error names the offending key (``prune[1].sparsity``) and what is allowed; method
parameters are checked by building the pruner. The resolved recipe (defaults filled in) is
what the run fingerprints and saves with the artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from export.parity import PARITY_SEQ_LEN, PARITY_WINDOWS
from pipeline.architectures import ModelKind, spec_for_type
from pipeline.data import text_source_path
from pipeline.errors import SparseDeployError, first_line
from pipeline.evaluate import EVAL_SEQ_LEN, EVAL_SOURCE, EVAL_WINDOWS
from pipeline.models import load_config
from pipeline.owl import OWLConfig
from pipeline.prune import CalibrationConfig, check_calibration_source, check_sparsity
from pipeline.quantize import QuantizeConfig, check_head_config
from pipeline.pruners import PRUNERS, build_pruner
from runtime.bench import FLAVOURS, RUNTIMES, BenchSettings


class RecipeError(SparseDeployError):
    pass


@dataclass(frozen=True)
class PruneStep:
    method: str
    sparsity: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    owl: OWLConfig | None = None


@dataclass(frozen=True)
class Evaluate:
    """Causal LMs: held-out perplexity. Vision: k-NN top-1 on Fashion-MNIST."""

    source: str = EVAL_SOURCE
    windows: int = EVAL_WINDOWS
    seq_len: int = EVAL_SEQ_LEN
    train_images: int = 1000
    test_images: int = 500
    image_size: int = 112


@dataclass(frozen=True)
class Export:
    parity_windows: int = PARITY_WINDOWS
    parity_seq_len: int = PARITY_SEQ_LEN


@dataclass(frozen=True)
class Benchmark(BenchSettings):
    """The latency settings of ``sparse-deploy bench`` (fewer repetitions by default), plus
    whether a sparse artifact slower than dense in DeepSparse fails the run."""

    repetitions: int = 5
    allow_slower: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str
    prune: tuple[PruneStep, ...]
    calibration: CalibrationConfig = CalibrationConfig()
    quantize: QuantizeConfig | None = None
    evaluate: Evaluate | None = Evaluate()
    export: Export = Export()
    benchmark: Benchmark | None = Benchmark()
    stream: bool = False  # prune, evaluate and export one decoder block at a time (docs/streaming.md)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


ZERO_ALLOWED = (".past", ".warmup", ".seed")  # integer keys that may be 0; the others must be >= 1


# -- validation -----------------------------------------------------------------------------
def _fail(key: str, message: str) -> RecipeError:
    return RecipeError(f"recipe key '{key}': {message}")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key, f"expected a mapping, got {type(value).__name__}")
    return value


def _section(cls: type, value: Any, key: str) -> Any:
    """A dataclass from a mapping: unknown keys and wrong types are errors naming the key."""
    data = _mapping(value if value is not None else {}, key)
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _fail(f"{key}.{unknown[0]}", f"not a known key; allowed: {', '.join(allowed)}")
    values = {}
    for name, item in data.items():
        default = allowed[name].default
        values[name] = _typed(item, default, f"{key}.{name}")
    return cls(**values)


def _typed(item: Any, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(item, bool):
            raise _fail(key, f"expected true or false, got {item!r}")
        return item
    if isinstance(default, int) or (default is None and key.endswith("threads")):
        least = 0 if key.endswith(ZERO_ALLOWED) else 1
        if isinstance(item, bool) or not isinstance(item, int) or item < least:
            raise _fail(key, f"expected an integer >= {least}, got {item!r}")
        return item
    if isinstance(default, float):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise _fail(key, f"expected a number, got {item!r}")
        return float(item)
    if isinstance(default, str):
        if not isinstance(item, str):
            raise _fail(key, f"expected a string, got {item!r}")
        return item
    if isinstance(default, tuple):  # runtimes, flavours: a non-empty list of known names
        kind, choices = ("flavours", FLAVOURS) if key.endswith(".flavours") else ("runtimes", RUNTIMES)
        items = [item] if isinstance(item, str) else item
        if not isinstance(items, list) or not items or any(r not in choices for r in items):
            raise _fail(key, f"expected a list of {kind} from {', '.join(choices)}, got {item!r}")
        return tuple(items)
    return item


def _prune_step(value: Any, key: str) -> PruneStep:
    data = dict(_mapping(value, key))
    allowed = ("method", "sparsity", "params", "owl")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _fail(f"{key}.{unknown[0]}", f"not a known key; allowed: {', '.join(allowed)}")
    method = data.get("method")
    if method == "quantize":
        raise _fail(f"{key}.method", "quantize is not a pruning method: give it as the recipe's own "
                                     "'quantize:' section, which applies after every prune step")
    if method not in PRUNERS:
        raise _fail(f"{key}.method", f"expected one of {', '.join(sorted(PRUNERS))}, got {method!r}")
    sparsity = data.get("sparsity")
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                 or not 0 <= sparsity < 1):
        raise _fail(f"{key}.sparsity", f"expected a number in [0, 1), got {sparsity!r}")
    params = _mapping(data.get("params", {}) or {}, f"{key}.params")
    try:
        pruner = build_pruner(method, **params)
    except SparseDeployError as exc:
        raise _fail(f"{key}.params", str(exc)) from None
    try:
        check_sparsity(sparsity, pruner)
    except SparseDeployError as exc:
        raise _fail(f"{key}.sparsity", str(exc)) from None
    owl = data.get("owl")
    if owl is True:
        owl = {}
    return PruneStep(method, None if sparsity is None else float(sparsity), dict(params),
                     None if owl in (None, False) else _section(OWLConfig, owl, f"{key}.owl"))


def _quantize(value: Any) -> QuantizeConfig | None:
    if value is None or value is False:
        return None
    try:
        return _section(QuantizeConfig, {} if value is True else value, "quantize")
    except RecipeError:
        raise
    except SparseDeployError as exc:
        raise _fail("quantize", str(exc).removeprefix("quantize: ")) from None


def parse_recipe(data: Any, name: str = "recipe") -> Recipe:
    data = _mapping(data, "<top>")
    allowed = [f.name for f in fields(Recipe)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _fail(unknown[0], f"not a known key; allowed: {', '.join(allowed)}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model", "expected a named model, a local directory or a Hugging Face id")
    steps = data.get("prune")
    if not isinstance(steps, list) or not steps:
        raise _fail("prune", "expected a non-empty list of steps ({method, sparsity, params, owl})")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _fail("stream", "expected true or false")
    if stream and data.get("quantize") not in (None, False):
        raise _fail("quantize", "int8 quantization does not stream yet: drop quantize or stream")
    return Recipe(
        name=str(data.get("name", name)),
        model=model,
        prune=tuple(_prune_step(step, f"prune[{i}]") for i, step in enumerate(steps)),
        calibration=_section(CalibrationConfig, data.get("calibration"), "calibration"),
        quantize=_quantize(data.get("quantize")),
        evaluate=None if data.get("evaluate", {}) is False else _section(Evaluate, data.get("evaluate"), "evaluate"),
        export=_section(Export, data.get("export"), "export"),
        benchmark=None if data.get("benchmark", {}) is False else _section(Benchmark, data.get("benchmark"),
                                                                            "benchmark"),
        stream=stream,
    )


def check_inputs(recipe: Recipe) -> None:
    """What parsing cannot see: the model resolves to a supported architecture, and the
    calibration and evaluation sources exist for its kind. Run before the first stage, so that a
    bad input leaves no ``stages/`` behind (loads the model's configuration, not its weights)."""
    def checked(key: str, check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except SparseDeployError as exc:
            raise _fail(key, str(exc)) from None

    _, config = checked("model", load_config, recipe.model)
    kind = spec_for_type(config.model_type).kind
    checked("calibration.source", check_calibration_source, kind, recipe.calibration.source)
    if recipe.evaluate is not None and kind is ModelKind.CAUSAL_LM:
        checked("evaluate.source", text_source_path, recipe.evaluate.source)
    if recipe.quantize is not None and recipe.quantize.head:
        checked("quantize.head", check_head_config, kind, config)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and where: ``line 3, column 7: mapping values are not allowed here``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or first_line(exc)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load_recipe(path: Path) -> Recipe:
    if not path.is_file():
        raise RecipeError(f"no recipe at {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML ({_yaml_problem(exc)})") from None
    return parse_recipe(data, path.stem)
