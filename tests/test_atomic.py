import pytest

from pipeline.atomic import atomic_directory
from pipeline.errors import SparseDeployError


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "model.bin").write_text("half")
            raise RuntimeError("killed")
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_complete_directory(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("complete")
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_success_replaces_and_non_empty_is_refused(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(SparseDeployError, match="not empty"):
        with atomic_directory(out):
            pass
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert _leftovers(tmp_path) == []
