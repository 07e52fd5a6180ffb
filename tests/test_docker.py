"""The Dockerfile: linted (hadolint from PyPI), built from the same install script as `make`.

No Docker engine exists on these machines, so the image itself is not built here; these
checks pin what can be checked without one.
"""

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
