"""Timing several graphs call by call, in alternation, so that every one sees the same machine.

Why: this VM's memory bandwidth drifts by ~1.5x within seconds (docs/kernels.md, "Noise"), and
batch-1 decode is bound by it. ``bench.measure``'s rounds run each cell's repetitions back to
back, so cells of different runtimes are timed tens of seconds apart, and a ratio between two
runtimes carries whatever the machine did in between. Here every graph is compiled once and
held; each cycle runs each graph once, in an order reversed every other cycle
(``bench.interleaved``), so cells compared with each other are timed within one cycle (a
fraction of a second at decode). A short pause before each call lets the previous runtime's
worker threads go idle, so that no runtime's pool competes with the next one's call.

In-process runtimes (ONNX Runtime, OpenVINO, openvino-sparse) are timed around their own
inference call; DeepSparse runs in its serving worker (``deepsparse_runner.served_deepsparse``),
timed there around ``engine.run``. The int8 runtimes convert graphs first and are not offered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from export.ort_session import run as ort_run, session
from pipeline.errors import SparseDeployError
from pipeline.progress import progress
from runtime import deepsparse_runner, openvino_runner
from runtime.bench import BenchSettings, interleaved

K = TypeVar("K")
PAUSE_S = 0.005  # before each call: longer than a thread pool's spin after a run, short against the drift
PAIRED_RUNTIMES = ("deepsparse", "onnxruntime", "openvino", "openvino-sparse")


def _timed(call: Callable[[], Any]) -> Callable[[], float]:
    def once() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start
    return once


@contextmanager
def call_timer(runtime: str, graph: Path, feeds: dict[str, np.ndarray], s: BenchSettings,
               flavour: str | None = None) -> Iterator[tuple[Callable[[], float], dict[str, Any]]]:
    """One graph compiled and warmed up in ``runtime`` (``s.warmup`` runs, ``s.threads``):
    yields a function that runs it once and returns the seconds it took, and what the runtime
    says about the graph (``bench.time_cell``'s: the sparse-op counts of openvino-sparse)."""
    if runtime not in PAIRED_RUNTIMES:
        raise SparseDeployError(f"runtime {runtime} cannot be timed call by call; choose from {', '.join(PAIRED_RUNTIMES)}")
    if runtime == "deepsparse":
        with deepsparse_runner.served_deepsparse(graph, feeds, num_cores=s.threads, warmup=s.warmup) as once:
            yield once, {}
        return
    if runtime == "onnxruntime":
        sess = session(graph, threads=s.threads)
        once, info = _timed(lambda: ort_run(sess, feeds)), {}
    else:
        compiled, ops = openvino_runner.compile_model(graph, sparse=runtime == "openvino-sparse", threads=s.threads,
                                                      min_sparsity=s.sparse_threshold(flavour))
        once = _timed(openvino_runner.infer_call(compiled, feeds))
        info = {"sparse_ops": ops.as_dict()} if runtime == "openvino-sparse" else {}
    for _ in range(s.warmup):
        once()
    yield once, info


def alternate(timers: Mapping[K, Callable[[], float]], cycles: int, pause_s: float = PAUSE_S,
              desc: str = "paired cycles") -> dict[K, list[float]]:
    """Each timer's seconds over ``cycles`` cycles; per cycle every timer runs once, in an order
    reversed every other cycle, after a pause of ``pause_s``."""
    keys = list(timers)
    times: dict[K, list[float]] = {k: [] for k in keys}
    for c in progress(range(cycles), desc, "cycles"):
        for k in interleaved(keys, c):
            time.sleep(pause_s)
            times[k].append(timers[k]())
    return times
