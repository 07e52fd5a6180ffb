"""ONNX Runtime, in the main venv: timing and int8 conversion over the session that the
export layer checks its graphs in (``export.ort_session``: one session for both)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from export.ort_session import run


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
