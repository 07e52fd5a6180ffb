"""The ONNX Runtime session an exported graph is checked in (parity, ``verify``) and timed in.

It lives here, below ``runtime/``, because the export's own parity check runs the graph it
writes: the export layer must not import the runtime layer above it, and ``runtime/`` takes
the same session from here rather than a second copy.

Threads are explicit. Spinning is off by default: ORT's idle worker threads otherwise keep
burning the cores for a while after each run, which steals time from whatever runs next
(DeepSparse in an alternating benchmark, or the next repetition's timer).
"""

from __future__ import annotations

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
    """The graph's outputs for ``feeds``; feeds the graph does not take are left out (one feed
    set serves the decode and the prefill graph)."""
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})
