"""Bad input and hostile artifacts: no code from model directories, failures that fail, one
line instead of a traceback, outputs others can read, and a `verify` that stays inside the
artifact and can be pinned. Fast: hand-made broken files, fake artifacts, tiny models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import runtime.bench as bench_module
from export.artifact import export_artifact, hashed_files, sha256
from pipeline.app.cli import main
from pipeline.app.recipe import RecipeError, parse_recipe
from pipeline.atomic import atomic_directory
from pipeline.errors import SparseDeployError
from pipeline.models import load_model, resolve_model_dir
from pipeline.pruners import build_pruner

FAST_CALIB = ["--calib-samples", "2", "--calib-seq-len", "32"]
CUSTOM_CODE = 'open({marker!r}, "w").write("ran")\nfrom transformers import PretrainedConfig\n' \
              'class EvilConfig(PretrainedConfig):\n    model_type = "evil"\n'


def _one_error_line(capsys, startswith: str = "sparse-deploy: error:") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(startswith), err
    assert "Traceback" not in err[0]
    return err[0]


def _tiny_copy(tmp_path: Path, name: str = "tiny-llama") -> Path:
    copy = tmp_path / name
    shutil.copytree(resolve_model_dir(name), copy)
    return copy


def _with_custom_code(directory: Path, model_type: str, marker: Path) -> None:
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    config.update(model_type=model_type, auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                   "AutoModelForCausalLM": "configuration_evil.EvilConfig"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_evil.py").write_text(CUSTOM_CODE.format(marker=str(marker)))


# 1. -- no code from model directories ---------------------------------------------------------
def test_a_model_directory_with_its_own_code_is_refused_and_nothing_runs(tmp_path, capsys, monkeypatch):
    evil, marker = tmp_path / "evil", tmp_path / "ran.txt"
    evil.mkdir()
    _with_custom_code(evil, "evil", marker)
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # transformers used to ask [y/N] here
    assert main(["eval", "--model", str(evil)]) == 2
    assert "never runs code from a model directory" in _one_error_line(capsys)
    assert not marker.exists()


def test_a_known_architecture_with_an_auto_map_loads_transformers_own_classes(tmp_path):
    """Hub configs such as Phi-3's carry an auto_map next to a model_type transformers knows."""
    model_dir, marker = _tiny_copy(tmp_path), tmp_path / "ran.txt"
    _with_custom_code(model_dir, "llama", marker)
    loaded = load_model(str(model_dir))
    assert type(loaded.model).__module__.startswith("transformers.")
    assert not marker.exists()


# 2. -- a failed measurement fails the command -------------------------------------------------
def _fake_artifact(root: Path, name: str, flavour: str = "decode", graph: bytes = b"") -> Path:
    art = root / name
    art.mkdir()
    (art / "model.onnx").write_bytes(graph)
    weights = {"layers.0.w": {"shape": [2, 4], "nonzeros": 4}}
    (art / "manifest.json").write_text(json.dumps({"weights": weights, "flavours": {flavour: {"file": "model.onnx"}}}))
    return art


def test_a_runtime_that_aborts_on_every_cell_fails_bench_with_a_report(tmp_path, capsys, monkeypatch):
    def aborting(runtime, graph, feeds, s, flavour):
        raise SparseDeployError("DeepSparse failed (killed by SIGABRT)")

    monkeypatch.setattr(bench_module, "time_cell", aborting)
    monkeypatch.setattr(bench_module, "_feeds", lambda *a: {})
    monkeypatch.setattr(bench_module.deepsparse_runner, "available", lambda: True)
    art, out = _fake_artifact(tmp_path, "a"), tmp_path / "report"
    assert main(["bench", str(art), "--runtime", "deepsparse", "--out", str(out), "--repetitions", "1"]) == 2
    line = _one_error_line(capsys)
    assert "1 of 1 measurements failed" in line and "SIGABRT" in line
    assert "failed: DeepSparse failed" in (out / "latency.md").read_text()
    assert {p.name for p in out.iterdir()} == {"latency.json", "latency.md", "latency.png"}


def test_a_truncated_graph_is_a_failed_cell_not_a_traceback(tmp_path, capsys):
    art = _fake_artifact(tmp_path, "truncated", flavour="encoder", graph=b"\x08\x07\x12\x04trun")
    shutil.copy(Path(resolve_model_dir("tiny-vit")) / "config.json", art / "config.json")  # inputs are fine, the graph not
    assert main(["bench", str(art), "--runtime", "onnxruntime", "--out", str(tmp_path / "r"),
                 "--repetitions", "1", "--warmup", "0"]) == 2
    line = _one_error_line(capsys)
    assert "measurements failed" in line and "/ onnxruntime: " in line and "protobuf" in line.lower(), line


# 3. -- one line, no traceback -----------------------------------------------------------------
def _prune(tmp_path: Path, *extra: str, method: str = "oats") -> int:
    return main(["prune", "--model", "tiny-llama", "--method", method, "--sparsity", "0.5",
                 "--out", str(tmp_path / "out"), *FAST_CALIB, *extra])


@pytest.mark.parametrize("method, param, message", [
    ("oats", "iterations=2.5", "parameter 'iterations' of 'oats' expects an integer, got 2.5"),
    ("oats", "oversample=1.5", "parameter 'oversample' of 'oats' expects an integer"),
    ("oats", "rank_ratio=abc", "parameter 'rank_ratio' of 'oats' expects a number, got 'abc'"),
    ("oats", "rnk_ratio=0.2", "'oats' has no parameter 'rnk_ratio'; its parameters: rank_ratio, iterations"),
    ("oats", "solver=qr", "parameter 'solver' of 'oats' expects one of subspace, svd"),
    ("osscar", "mlp_step=2.5", "parameter 'mlp_step' of 'osscar' expects an integer"),
    ("osscar", "iterations=true", "parameter 'iterations' of 'osscar' expects an integer, got True"),
])
def test_method_parameters_are_type_checked_by_name(tmp_path, capsys, method, param, message):
    assert _prune(tmp_path, "--param", param, method=method) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_pattern_with_a_structured_method_names_the_parameter(tmp_path, capsys):
    assert _prune(tmp_path, "--pattern", "2:4", method="osscar") == 2
    assert "'osscar' has no parameter 'pattern'" in _one_error_line(capsys)


def test_recipe_parameters_are_type_checked():
    data = {"model": "tiny-llama", "prune": [{"method": "oats", "sparsity": 0.5, "params": {"iterations": 2.5}}]}
    with pytest.raises(RecipeError, match=r"'prune\[0\].params'.*'iterations' of 'oats' expects an integer"):
        parse_recipe(data)


def test_typed_parameters_reach_the_pruner():
    pruner = build_pruner("oats", rank_ratio=0, solver="svd")
    assert isinstance(pruner.rank_ratio, float) and pruner.solver.value == "svd"


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary", "is not UTF-8 text"),
    (b"\n".join([b'{"text": "a line of text"}'] * 149 + [b'{"txt": "oops"}'] + [b'{"text": "more"}'] * 50),
     "line 150: not a JSON object with a 'text' field"),
])
def test_a_bad_calibration_file_is_one_line(tmp_path, capsys, content, message):
    source = tmp_path / ("calib.jsonl" if b"text" in content else "calib.txt")
    source.write_bytes(content)
    assert _prune(tmp_path, "--calib-source", str(source), method="wanda") == 2
    assert message in _one_error_line(capsys)


def test_an_unreadable_calibration_file_is_one_line(tmp_path, capsys, monkeypatch):
    source = tmp_path / "calib.txt"
    source.write_text("text")
    source.chmod(0)
    real = Path.read_text

    def as_a_user(self, *args, **kwargs):  # root (CI) reads files whatever their mode
        if self == source:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", as_a_user)
    assert _prune(tmp_path, "--calib-source", str(source), method="wanda") == 2
    assert "cannot read text source" in _one_error_line(capsys)


def _without_weights(tmp_path: Path) -> Path:
    model_dir = _tiny_copy(tmp_path)
    for f in model_dir.glob("*.safetensors"):
        f.unlink()
    return model_dir


def _truncated_weights(tmp_path: Path) -> Path:
    model_dir = _tiny_copy(tmp_path)
    weights = next(model_dir.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:5000])
    return model_dir


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "emptydir").mkdir()  # transformers took the 'mpt' in its name for a model type
    return tmp_path / "emptydir"


def _no_model_type(tmp_path: Path) -> Path:
    model_dir = _tiny_copy(tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    del config["model_type"]
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("broken, message", [
    (_without_weights, "cannot load"), (_truncated_weights, "cannot load"), (_empty, "has no config.json"),
    (_no_model_type, "has no 'model_type'"),
])
def test_a_broken_model_directory_is_one_short_line(tmp_path, capsys, command, broken, message):
    model_dir = broken(tmp_path)
    args = ["--out", str(tmp_path / "art")] if command == "export" else []
    assert main([command, "--model", str(model_dir), *args]) == 2
    line = _one_error_line(capsys)
    assert message in line and len(line) < 500 and "architecture" not in line, line
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("args", [
    ["export", "--model", "tiny-llama", "--out", "ART", "--parity-windows", "0"],
    ["eval", "--model", "tiny-llama", "--eval-windows", "0"],
    ["eval", "--model", "tiny-llama", "--eval-seq-len", "-5"],
    ["bench", "ART", "--repetitions", "0"],
])
def test_bad_counts_are_usage_errors_before_any_work(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("ART", str(tmp_path / "art")) for a in args])
    assert exit_.value.code == 2
    assert "must be >= " in capsys.readouterr().err


def test_the_library_checks_parity_windows_before_loading(tmp_path):
    with pytest.raises(SparseDeployError, match="windows >= 1"):
        export_artifact("no-such-model", tmp_path / "art", parity_windows=0)


def test_bench_without_a_runtime_writes_no_half_report(tmp_path, capsys):
    art, out = _fake_artifact(tmp_path, "a"), tmp_path / "report"
    assert main(["bench", str(art), "--runtime", ",", "--out", str(out)]) == 2
    assert "no runtime given" in _one_error_line(capsys)
    assert not out.exists()


def test_an_output_path_that_is_a_file_fails_before_any_timing(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(bench_module, "time_cell", lambda *a: calls.append(a))
    taken = tmp_path / "taken"
    taken.write_text("mine")
    art = _fake_artifact(tmp_path, "a")
    assert main(["bench", str(art), "--runtime", "onnxruntime", "--out", str(taken)]) == 2
    assert "exists and is not a directory" in _one_error_line(capsys) and not calls
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny-llama", "prune": [{"method": "wanda", "sparsity": 0.5}]}))
    assert main(["run", str(recipe), "--out", str(taken)]) == 2
    assert "exists and is not a directory" in _one_error_line(capsys)
    assert taken.read_text() == "mine"


def test_ctrl_c_while_the_parser_imports_is_handled(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.app.cli._parser", interrupted)
    assert main(["models"]) == 130
    assert _one_error_line(capsys, "sparse-deploy: interrupted")


# 5. -- recipes: everything checked before the first stage ------------------------------------
@pytest.mark.parametrize("change, key", [
    ({"model": "no-such-model"}, "model"),
    ({"calibration": {"source": "/no/such/file.txt"}}, "calibration.source"),
    ({"evaluate": {"source": "/no/such/file.txt"}}, "evaluate.source"),
])
def test_recipe_inputs_are_checked_before_any_stage(tmp_path, capsys, change, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny-llama", "prune": [{"method": "wanda", "sparsity": 0.5}],
                                      **change}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert f"recipe key '{key}'" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny-llama\nprune:\n  - method: wanda\n    sparsity: [0.5\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "is not valid YAML (line " in _one_error_line(capsys)


# 6. -- leftovers of a killed run are cleaned up -----------------------------------------------
def test_a_killed_writer_leaves_a_partial_that_the_next_write_removes(tmp_path):
    out = tmp_path / "out"
    child = ("import os, signal, sys\nfrom pathlib import Path\nfrom pipeline.atomic import atomic_directory\n"
             "with atomic_directory(Path(sys.argv[1])) as tmp:\n"
             "    (tmp / 'half').write_text('x')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", child, str(out)], cwd=Path(__file__).parent.parent)
    assert run.returncode == -signal.SIGKILL
    (left,) = tmp_path.glob(".out.partial-*")
    mine = tmp_path / f".out.partial-{os.getpid()}-{left.name.split('-')[2]}-live"  # a writer still running
    mine.mkdir()
    with atomic_directory(out) as tmp:
        (tmp / "done").write_text("x")
    assert not left.exists() and mine.exists()
    assert [p.name for p in out.iterdir()] == ["done"]


# 8. -- outputs get the umask's modes, not mkdtemp's 0700 --------------------------------------
def test_outputs_are_readable_by_whom_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "model.safetensors").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "sub" / "model.safetensors").stat().st_mode & 0o777 == 0o644


# 9. -- verify stays inside the artifact, and can be pinned ------------------------------------
def _verifiable(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    art = tmp_path / "art"
    art.mkdir()
    (art / "weights.bin").write_bytes(b"weights")
    manifest = {"files": files if files is not None else hashed_files(art), "flavours": {},
                "parity": {"tolerance": {"atol": 1e-4, "rtol": 1e-3, "ppl_rtol": 1e-3}}}
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def test_verify_does_not_read_outside_the_artifact(tmp_path, capsys):
    art = _verifiable(tmp_path, {"weights.bin": "0" * 64, "../../../etc/hostname": "0" * 64})
    (art / "link.bin").symlink_to("/etc/hostname")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["link.bin"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(art)]) == 1
    err = capsys.readouterr().err
    assert "path outside the artifact: '../../../etc/hostname'" in err and "outside the artifact: 'link.bin'" in err


def test_a_pinned_manifest_catches_a_rewritten_one(tmp_path, capsys, caplog):
    art = _verifiable(tmp_path)
    pinned = sha256(art / "manifest.json")
    with caplog.at_level("INFO"):
        assert main(["verify", str(art), "--manifest-sha256", pinned]) == 0
    assert f"manifest sha256 {pinned}" in caplog.text
    (art / "weights.bin").write_bytes(b"tampered")  # the file and its hash, rewritten together
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"] = hashed_files(art)
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(art)]) == 0  # what verify cannot see without the pin (SECURITY.md)
    capsys.readouterr()
    assert main(["verify", str(art), "--manifest-sha256", pinned]) == 1
    assert "differs from the pinned" in _one_error_line(capsys, "sparse-deploy: verification failed:")
    assert main(["verify", str(art), "--manifest-sha256", "abc"]) == 2


@pytest.mark.parametrize("manifest, code, message", [
    ('{"files": {"weights.bin": ', 2, "is not valid JSON"),
    ('{"files": {}, "flavours": {}}', 1, "lacks its parity tolerance"),
    ('[1, 2]', 2, "is not a JSON object"),
])
def test_a_damaged_manifest_is_one_line(tmp_path, capsys, manifest, code, message):
    art = _verifiable(tmp_path)
    (art / "manifest.json").write_text(manifest)
    assert main(["verify", str(art)]) == code
    assert message in capsys.readouterr().err
