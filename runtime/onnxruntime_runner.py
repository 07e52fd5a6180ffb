"""ONNX Runtime, in the main venv.

Threads are explicit. Spinning is off by default: ORT's idle worker threads otherwise keep
burning the cores for a while after each run, which steals time from whatever runs next
(DeepSparse in an alternating benchmark, or the next repetition's timer).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort


def session(path: str | Path, threads: int | None = None, spinning: bool = False,
            prepack: bool = True) -> ort.InferenceSession:
    """``prepack=False``: MatMul weights are used where they lie (external data is memory-mapped)
    instead of copied into MLAS's packed layout, which holds a second copy of every weight on the
    heap: slower, but what a model larger than memory needs for a check on a few tokens."""
    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def time_runs(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], warmup: int, repetitions: int) -> list[float]:
    """Wall time of each of ``repetitions`` runs, in seconds, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run(sess, feeds)
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        run(sess, feeds)
        times.append(time.perf_counter() - start)
    return times


def quantize_weights_int8(src: str | Path, dst: Path) -> Path:
    """``dst`` = the graph at ``src`` after ONNX Runtime's ``quantize_dynamic(weight_type=QInt8)``
    with its defaults (int8 weights per tensor, activations quantized per call): what a user who
    quantizes instead of pruning gets from ONNX Runtime (``bench --runtime onnxruntime-int8``).
    Weights go to external data, so that graphs past protobuf's 2 GB limit convert too."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=True)
    return dst
