"""The Dockerfile: linted (hadolint from PyPI), built from the same install script as `make`.

No Docker engine exists on these machines, so the image itself is not built here; these
checks pin what can be checked without one.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint missing: it comes with the dev extras (`make install`)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_uses_the_install_script_runs_offline_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11" in text
    assert "bash scripts/install.sh main" in text and "bash scripts/install.sh deepsparse" in text
    assert "sparse-deploy models --materialize" in text and "HF_HUB_OFFLINE=1" in text
    assert "\nUSER sparse" in text and 'ENTRYPOINT ["sparse-deploy"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", ".venv-deepsparse/", ".git/"} <= set(ignored)
    assert "scripts/install.sh" in (ROOT / "Makefile").read_text()


def _rehearsal():
    """scripts/rehearse_image.py as a module (scripts/ is not a package: it runs on the host's Python)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("rehearse_image", ROOT / "scripts" / "rehearse_image.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("rehearse_image", module)
    spec.loader.exec_module(module)
    return module


def test_the_rehearsal_performs_every_instruction_of_the_real_dockerfile():
    """The rehearsal interprets the Dockerfile itself: an instruction it cannot perform fails here."""
    rehearsal = _rehearsal()
    instructions = rehearsal.parse_dockerfile((ROOT / "Dockerfile").read_text())
    keywords = [i.keyword for i in instructions]
    assert keywords[0] == "FROM" and "ENTRYPOINT" in keywords
    assert set(keywords) <= set(rehearsal.KNOWN)
    runs = [i.argument for i in instructions if i.keyword == "RUN"]
    assert any("scripts/install.sh main" in r for r in runs) and any("models --materialize" in r for r in runs)
    with pytest.raises(rehearsal.RehearsalError, match="line 3: the rehearsal does not perform HEALTHCHECK"):
        rehearsal.parse_dockerfile("FROM x\n# c\nHEALTHCHECK CMD true\n")


def test_the_rehearsal_builds_the_dockerfiles_environment_user_and_files(tmp_path):
    rehearsal = _rehearsal()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    uid, gid = os.getuid(), os.getgid()
    (root / "etc" / "passwd").write_text(f"sparse:x:{uid}:{gid}::/home/sparse:/bin/sh\n")
    (root / "etc" / "group").write_text(f"sparse:x:{gid}:\n")
    image = rehearsal.Image(root=root, context=ROOT, build_args={"TORCH_INDEX": "file:///wheels"})
    for ins in rehearsal.parse_dockerfile((ROOT / "Dockerfile").read_text()):
        if ins.keyword in ("ARG", "ENV", "WORKDIR", "USER", "ENTRYPOINT"):
            image.perform(ins)
    assert image.env["PIP_EXTRA_INDEX_URL"] == "file:///wheels"  # a build-arg overrides the ARG's default
    assert image.env["PATH"] == "/opt/sparse-deploy/.venv/bin:" + rehearsal.BASE_ENV["PATH"]
    assert image.env["HF_HUB_OFFLINE"] == "1" and image.user == "sparse" and image.workdir == "/opt/sparse-deploy"
    assert image.entrypoint == ["sparse-deploy"]
    command = image.command(["sparse-deploy", "run", "recipes/demo.yaml"])
    assert command[:6] == ["chroot", str(root), "setpriv", "--reuid=sparse", f"--regid={gid}", "--init-groups"]
    assert "HOME=/home/sparse" in command
    # COPY applies .dockerignore: no results, caches or builds in the image
    context = tmp_path / "context"
    for rel in ("benchmarks/paired.py", "benchmarks/results/x.json", "benchmarks/__pycache__/p.pyc",
                "runtime/kernels/build/lib.so", "runtime/kernels/a.cpp"):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        (context / rel).write_text("x")
    (context / ".dockerignore").write_text((ROOT / ".dockerignore").read_text())
    image.context = context
    image.perform(rehearsal.Instruction("COPY", "--chown=sparse:sparse benchmarks/ benchmarks/", 1))
    image.perform(rehearsal.Instruction("COPY", "runtime/ runtime/", 2))
    copied = sorted(p.relative_to(root / "opt/sparse-deploy").as_posix()
                    for p in (root / "opt/sparse-deploy").rglob("*") if p.is_file())
    assert copied == ["benchmarks/paired.py", "runtime/kernels/a.cpp"]


def test_the_rehearsal_never_removes_across_a_mount(tmp_path):
    rehearsal = _rehearsal()
    work = tmp_path / "work"
    (work / "root" / "dev").mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"devtmpfs {work}/root/dev devtmpfs rw 0 0\n")
    assert not rehearsal.remove_tree(work, mounts) and work.exists()
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert rehearsal.remove_tree(work, mounts) and not work.exists()
