"""Recipes and `sparse-deploy run`: validation before compute, stage skipping, the hand-off
artifact, `verify` on good and tampered copies."""

import json
from pathlib import Path
import shutil

import pytest
import yaml

from export.artifact import sha256
from pipeline.app.cli import main
from pipeline.app.recipe import RecipeError, load_recipe, parse_recipe
from pipeline.app.run import run_recipe

TINY = {
    "name": "tiny",
    "model": "tiny-llama",
    "calibration": {"samples": 4, "seq_len": 32},
    "prune": [{"method": "osscar", "sparsity": 0.25, "params": {"structures": "mlp"}},
              {"method": "oats", "sparsity": 0.5, "params": {"iterations": 3}}],
    "evaluate": {"windows": 2, "seq_len": 64},
    "export": {"parity_windows": 1, "parity_seq_len": 32},
    "benchmark": {"runtimes": ["onnxruntime"], "repetitions": 2, "warmup": 1, "seq_len": 16, "past": 15,
                  "allow_slower": True},
}


def _with(path, value):
    """TINY with one key (dotted path, list indices as ints) replaced."""
    data = json.loads(json.dumps(TINY))
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    (("modle",), "x", "'modle': not a known key; allowed: name, model"),
    (("prune", 0, "method"), "prunax", r"'prune\[0\].method': expected one of"),
    (("prune", 1, "sparsity"), 1.5, r"'prune\[1\].sparsity': expected a number in \[0, 1\)"),
    (("prune", 1, "params"), {"rank_ratio": 2}, r"'prune\[1\].params': bad parameters for 'oats'"),
    (("prune", 0, "params"), {"structures": "layers"}, r"'prune\[0\].params'.*structures"),
    (("calibration", "samples"), 0, "'calibration.samples': expected an integer >= 1"),
    (("benchmark", "runtimes"), ["tensorrt"], "'benchmark.runtimes': expected a list of runtimes"),
    (("benchmark", "flavours"), ["decoder"], "'benchmark.flavours': expected a list of flavours from decode, prefill"),
    (("evaluate", "windowz"), 3, "'evaluate.windowz': not a known key"),
    (("prune",), [], "'prune': expected a non-empty list"),
    (("stream",), "yes", "'stream': expected true or false"),
])
def test_bad_recipes_name_the_key(path, value, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(_with(path, value))


def test_a_streamed_recipe_refuses_what_does_not_stream_yet():
    parse_recipe({**TINY, "stream": True})
    with pytest.raises(RecipeError, match="'quantize': int8 quantization does not stream yet"):
        parse_recipe({**TINY, "stream": True, "quantize": {"method": "rtn"}})


def test_bad_recipe_fails_before_any_compute(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(_with(("prune", 0, "sparsity"), "half")))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "prune[0].sparsity" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert any(r.name == "demo.yaml" for r in recipes)
    for recipe in recipes:
        load_recipe(recipe)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    first = run_recipe(recipe, root / "out")
    return recipe, root / "out", first


def test_run_produces_the_hand_off_artifact(finished_run):
    _, out, report = finished_run
    artifact = out / "artifact"
    for name in ("model.onnx", "prefill/model.onnx", "manifest.json", "report.md", "report.json", "latency.png",
                 "quality.png", "MODEL_CARD.md", "recipe.yaml", "tokenizer.json", "config.json"):
        assert (artifact / name).is_file(), name
    assert [s["recipe"]["method"] for s in report["steps"]] == ["osscar", "oats"]
    assert report["quality"]["metric"] == "perplexity" and report["quality"]["pruned"] > 0
    assert report["latency"]["decode"]["onnxruntime"]["speedup"] > 0
    card = (artifact / "MODEL_CARD.md").read_text()
    assert "ORTModelForCausalLM" in card and "deepsparse import Engine" in card and "Known limits" in card
    assert len(report["summary"]) == 4 and "perplexity: dense" in report["summary"][1]


def test_second_run_skips_finished_stages_and_a_change_redoes_only_its_dependents(finished_run, caplog):
    recipe, out, _ = finished_run
    caplog.set_level("INFO")
    run_recipe(recipe, out)
    skipped = [r.getMessage() for r in caplog.records if "up to date" in r.getMessage()]
    assert len(skipped) == 8  # prune-0, prune-1, evaluate-dense, evaluate, export-dense, export, benchmark, artifact
    caplog.clear()
    recipe.write_text(yaml.safe_dump(_with(("evaluate", "windows"), 1)))
    run_recipe(recipe, out)
    ran = {r.getMessage().split()[1].rstrip(":") for r in caplog.records if r.getMessage().endswith(": running")}
    assert ran == {"evaluate-dense", "evaluate"}


def _stale_stages(recipe, out, monkeypatch) -> list[str]:
    """The stages whose stored fingerprint no longer matches (compared, nothing run)."""
    import pipeline.app.run as run

    stale = []

    def spy(out_, name, print_, produce):
        marker = json.loads((out_ / "stages" / name / run.STAGE_FILE).read_text())
        if marker["fingerprint"] != print_:
            stale.append(name)
        return {**marker["info"], "dir": str(out_ / "stages" / name), "skipped": True}

    with monkeypatch.context() as patch:
        patch.setattr(run, "run_stage", spy)
        run.run_recipe(recipe, out)
    return stale


def test_a_code_change_makes_every_stage_stale(finished_run, monkeypatch):
    """A new sparse-deploy version must not be answered from stages its old version wrote."""
    import pipeline.app.run as run

    recipe, out, _ = finished_run
    assert _stale_stages(recipe, out, monkeypatch) == []
    monkeypatch.setattr(run, "source_digest", lambda *packages: "another-version")
    assert sorted(_stale_stages(recipe, out, monkeypatch)) == ["benchmark", "evaluate", "evaluate-dense", "export",
                                                               "export-dense", "prune-0", "prune-1"]


@pytest.mark.parametrize("module", ["runtime.bench", "runtime.openvino_runner"])
def test_a_change_to_the_bench_or_kernel_code_reruns_the_benchmark(finished_run, monkeypatch, module):
    """The real digest (not a fake): the code the benchmark stage runs lives in runtime/ (the
    bench, the runners, the C++ kernels), and a change there must make the stage stale."""
    import importlib

    recipe, out, _ = finished_run
    changed = Path(importlib.import_module(module).__file__).resolve()
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real(self) + (b"\n# changed" if self.resolve() == changed else b""))
    assert "benchmark" in _stale_stages(recipe, out, monkeypatch)


def test_the_kernel_sources_are_part_of_the_digest(monkeypatch):
    from pipeline.environment import source_digest
    from runtime.openvino_runner import KERNELS

    before = source_digest("runtime")
    kernel = (KERNELS / "avx512.cpp").resolve()
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real(self) + (b"// changed" if self.resolve() == kernel else b""))
    assert source_digest("runtime") != before


def test_verify_passes_on_the_artifact_and_fails_on_tampered_copies(finished_run, tmp_path, capsys):
    _, out, _ = finished_run
    artifact = out / "artifact"
    assert main(["verify", str(artifact)]) == 0

    changed = tmp_path / "changed"
    shutil.copytree(artifact, changed)
    data = bytearray((changed / "prefill" / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (changed / "prefill" / "model.onnx").write_bytes(bytes(data))
    assert main(["verify", str(changed)]) == 1
    assert "sha256 mismatch: prefill/model.onnx" in capsys.readouterr().err

    added = tmp_path / "added"
    shutil.copytree(artifact, added)
    (added / "extra.bin").write_bytes(b"x")
    assert main(["verify", str(added)]) == 1
    assert "unlisted file extra.bin" in capsys.readouterr().err


def test_the_hand_off_names_the_manifest_to_pin(finished_run, caplog):
    from pipeline.app.report import summary_lines

    _, out, _ = finished_run
    artifact = out / "artifact"  # as the last test left it (some rerun stages)
    digest = sha256(artifact / "manifest.json")
    assert f"manifest.json sha256: `{digest}`" in (artifact / "MODEL_CARD.md").read_text()
    report = json.loads((artifact / "report.json").read_text())
    assert f"--manifest-sha256 {digest}" in summary_lines(report, artifact)[-1]
    with caplog.at_level("INFO"):
        assert main(["verify", str(artifact), "--manifest-sha256", digest]) == 0
    assert f"manifest sha256 {digest}" in caplog.text
