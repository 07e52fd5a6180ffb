"""The parent side of DeepSparse: run the worker in .venv-deepsparse, turn crashes into errors.

A C++ assertion in DeepSparse's compiler kills the worker; the pipeline reports it in one
line (with the assertion's location) instead of dying with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from pipeline.errors import SparseDeployError

WORKER = Path(__file__).with_name("deepsparse_worker.py")


def deepsparse_python() -> Path:
    """The interpreter of the DeepSparse venv (``$SPARSE_DEPLOY_DEEPSPARSE_PYTHON`` overrides)."""
    override = os.environ.get("SPARSE_DEPLOY_DEEPSPARSE_PYTHON")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / ".venv-deepsparse" / "bin" / "python"


def available() -> bool:
    return deepsparse_python().is_file()


@dataclass
class DeepSparseResult:
    compile_s: float
    times_s: list[float]
    fraction_of_supported_ops: float
    num_cores: int
    versions: dict[str, str]
    timed_major_faults: int = 0  # page faults that read from disk during the timed runs
    outputs: list[np.ndarray] | None = None


def _crash_message(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    cause = next((line for line in lines if "Assertion" in line or "Error" in line), lines[-1] if lines else "")
    code = proc.returncode
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return f"{how}: {cause[:300]}"


def _private_copy(model: Path, work: str) -> Path:
    """The graph in the work directory, its external-data files linked beside it. DeepSparse's
    ``Engine(..., input_shapes=...)`` rewrites the ONNX file it is given with fixed input shapes,
    in place: compiling an artifact's own file would change it (its sha256 and its dynamic axes)
    behind the manifest's back. It rewrites the graph alone (the weights stay external, unread), so
    the data files are symlinked, not copied: a 7B artifact's 15-27 GB need no second copy on disk."""
    target = Path(work, "graph")
    target.mkdir()
    for f in model.parent.iterdir():
        if f.is_file() and f.name.startswith(model.name):  # model.onnx, model.onnx.data
            if f.name == model.name:
                shutil.copy2(f, target / f.name)
            else:
                (target / f.name).symlink_to(f.resolve())
    return target / model.name


def _worker_env() -> dict[str, str]:
    return {**os.environ, "NM_DISABLE_ANALYTICS": "1"}


def _prepare(model: str | Path, feeds: Mapping[str, np.ndarray], work: str, **request: Any) -> Path:
    """The worker's python, its request and inputs written into ``work``."""
    python = deepsparse_python()
    if not python.is_file():
        raise SparseDeployError(f"DeepSparse venv not found at {python} (run `make install`)")
    request = {"model": str(_private_copy(Path(model).resolve(), work)), **request}
    Path(work, "request.json").write_text(json.dumps(request))
    np.savez(Path(work, "inputs.npz"), *feeds.values())
    return python


def run_deepsparse(model: str | Path, feeds: Mapping[str, np.ndarray], *, num_cores: int | None = None,
                   warmup: int = 0, repetitions: int = 0, want_outputs: bool = False,
                   timeout_s: float = 1800) -> DeepSparseResult:
    """Compile ``model`` for the feeds' shapes in a child process; time and/or run it."""
    with tempfile.TemporaryDirectory(prefix="deepsparse-") as work:
        python = _prepare(model, feeds, work, num_cores=num_cores, warmup=warmup, repetitions=repetitions,
                          outputs=want_outputs)
        try:
            proc = subprocess.run([str(python), str(WORKER), work], capture_output=True, text=True, env=_worker_env(),
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise SparseDeployError(f"DeepSparse did not finish {model} within {timeout_s:.0f} s") from None
        response = Path(work, "response.json")
        if proc.returncode != 0 or not response.is_file():
            raise SparseDeployError(f"DeepSparse failed on {model} ({_crash_message(proc)})")
        data = json.loads(response.read_text())
        outputs = None
        if want_outputs:
            with np.load(Path(work, "outputs.npz")) as out:
                outputs = [out[f"arr_{i}"] for i in range(len(out.files))]
    return DeepSparseResult(outputs=outputs, **data)


SERVED = "SERVED"  # deepsparse_worker.SERVED: the prefix of the serving worker's answer lines


@contextmanager
def served_deepsparse(model: str | Path, feeds: Mapping[str, np.ndarray], *, num_cores: int | None = None,
                      warmup: int = 0) -> Iterator[Callable[[], float]]:
    """``model`` compiled once in a worker that stays up: yields a function that runs it once and
    returns that run's wall time (seconds, measured in the worker around ``engine.run``), so that
    DeepSparse can be timed call by call between other runtimes' calls (runtime/paired.py)."""
    with tempfile.TemporaryDirectory(prefix="deepsparse-") as work:
        python = _prepare(model, feeds, work, num_cores=num_cores, warmup=warmup, repetitions=0, serve=True)
        with open(Path(work, "stderr.txt"), "w+", encoding="utf-8") as err:
            proc = subprocess.Popen([str(python), str(WORKER), work], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True, env=_worker_env())

            def answer() -> str:
                for line in proc.stdout:
                    if line.startswith(SERVED + " "):
                        return line[len(SERVED) + 1:].strip()
                proc.wait()
                err.seek(0)
                raise SparseDeployError(f"DeepSparse failed on {model} "
                                        f"({_crash_message(subprocess.CompletedProcess([], proc.returncode, '', err.read()))})")

            def once() -> float:
                try:
                    proc.stdin.write("run\n")
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # the worker is gone: answer() says why
                return float(answer())

            try:
                answer()  # "ready": compiled and warmed up
                yield once
            finally:
                if proc.poll() is None:
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
