"""OpenVINO, in the main venv, with or without the project's sparse MatMul extension.

Two runtimes for ``bench``: ``openvino`` (OpenVINO's own CPU plugin, dense) and
``openvino-sparse`` (the same graph read with ``runtime/kernels``'s extension loaded: every
MatMul whose constant weight has at least ``min_sparsity`` zeros runs on our bitmap-16 kernel,
packed once when the model is read; see ``runtime/kernels/ov_extension.cpp``). The artifact is
the same standard ONNX file that ONNX Runtime and DeepSparse load.

Threads are explicit (``INFERENCE_NUM_THREADS``), latency hint, no model cache: nothing is
written or fetched. OpenVINO's telemetry is only used by its command-line tools; the Python
runtime API does not send any (checked by the test that runs this under ``unshare -n``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.errors import SparseDeployError, first_line

log = logging.getLogger(__name__)

KERNELS = Path(__file__).resolve().parent / "kernels"
LIBRARY = KERNELS / "build" / "libsparse_deploy_ov.so"
BUILD_COMMAND = "bash scripts/install.sh kernels"
ISAS = ("scalar", "avx2", "avx512")  # index = the C API's Isa value
VALUE_BYTES = {"f32": 4, "int8": 1}  # how the packed form stores the non-zeros (the C API's Values)
Q8_PATHS = ("scalar", "avx512_vnni", "avx2")  # int8 x int8 matmul paths; index = the C API's Q8Path value
# The share of zeros from which a weight runs on the sparse op, by how many rows of x a call of
# the graph multiplies; declared here once and handed to the extension (whose own fallback, for
# other hosts, is MIN_SPARSITY). Chosen from the kernel sweep
# (benchmarks/results/openvino_sparse_kernels.md, 2026-12-07, Zen 5): with one row (decode, one
# token per sequence) the op is bound by the bytes it streams, 0.125 + 4 (1 - s) per weight
# instead of 4, and at 40% already gains 1.59x, its bandwidth ceiling. With many rows it must
# out-compute a dense GEMM: 128 rows 1.15x at 40% and 1.32x at 50% at LLaMA-7B widths, but on
# SmolLM2-135M's 576/1536-wide layers the demo's prefill lost at both (throwaway A/B against
# plain OpenVINO: 0.90x with the 50% threshold, 0.83x with 40%), so prefill and encoders keep
# 50%. Batches of 16 rows lose below 80% (0.59x at 50%) either way.
MIN_SPARSITY = 0.5  # prefill and encoder graphs
MIN_SPARSITY_DECODE = 0.4  # decode graphs


def min_sparsity_for(flavour: str | None) -> float:
    """The threshold for a graph of ``flavour`` (the artifact's graph names; None: MIN_SPARSITY)."""
    return MIN_SPARSITY_DECODE if flavour == "decode" else MIN_SPARSITY


def library() -> Path:
    """The built extension, or a one-line error that says how to build it."""
    if not LIBRARY.is_file():
        raise SparseDeployError(f"sparse kernel extension not built ({LIBRARY} missing): run `{BUILD_COMMAND}`")
    return LIBRARY


@lru_cache(maxsize=1)
def _c_api() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(library()))
    except OSError as exc:
        raise SparseDeployError(f"sparse kernel extension {LIBRARY} does not load ({exc}): run `{BUILD_COMMAND}`") from None
    lib.sd_pack.restype = ctypes.POINTER(ctypes.c_uint8)
    lib.sd_pack.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                            ctypes.POINTER(ctypes.c_size_t)]
    lib.sd_int8_grid.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
    lib.sd_free.argtypes = [ctypes.c_void_p]
    lib.sd_matmul.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                              ctypes.c_int, ctypes.c_int]
    lib.sd_matmul_q8.argtypes = lib.sd_matmul.argtypes
    lib.sd_stream_read.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_uint64)]
    lib.sd_last_error.restype = ctypes.c_char_p
    return lib


def on_int8_grid(weight: np.ndarray) -> bool:
    """Whether every row of W (N x K) is scale * q with q integer, |q| <= 127, scale = max |row| / 127."""
    w = np.ascontiguousarray(weight, dtype=np.float32)
    return bool(_c_api().sd_int8_grid(w.ctypes.data, w.shape[0], w.shape[1], 0))


def isa_supported(isa: str) -> bool:
    return bool(_c_api().sd_isa_supported(ISAS.index(isa)))


def q8_supported(path: str) -> bool:
    return bool(_c_api().sd_q8_supported(Q8_PATHS.index(path)))


def best_isa() -> str:
    return ISAS[_c_api().sd_best_isa()]


def stream_read(words: np.ndarray, tasks: int = 64, threaded: bool = True) -> int:
    """The sum (mod 2^64) of ``words`` (uint64), read once on the kernels' thread pool: how fast
    this machine streams memory to a loop that does nothing else (the kernel sweep's reference)."""
    w = np.ascontiguousarray(words, dtype=np.uint64)
    total = ctypes.c_uint64()
    lib = _c_api()
    if lib.sd_stream_read(w.ctypes.data, w.size, tasks, int(threaded), ctypes.byref(total)):
        raise SparseDeployError(lib.sd_last_error().decode())
    return total.value


class PackedWeight:
    """A weight packed by the C API (for tests and kernel sweeps outside a graph)."""

    def __init__(self, weight: np.ndarray, transposed: bool = False, values: str = "f32") -> None:
        """``weight``: W (N x K), or Wᵀ (K x N, as an ONNX MatMul stores it) with ``transposed``;
        ``values``: "f32", or "int8" (per row, symmetric: exact for a weight on that grid,
        round-to-nearest otherwise)."""
        if values not in VALUE_BYTES:
            raise SparseDeployError(f"values must be one of {', '.join(VALUE_BYTES)}, got {values!r}")
        w = np.ascontiguousarray(weight, dtype=np.float32)
        self.n, self.k = (w.shape[1], w.shape[0]) if transposed else w.shape
        size = ctypes.c_size_t()
        lib = _c_api()
        self._ptr = lib.sd_pack(w.ctypes.data, self.n, self.k, int(transposed), VALUE_BYTES[values], ctypes.byref(size))
        if not self._ptr:
            raise SparseDeployError(f"packing failed: {lib.sd_last_error().decode()}")
        self.nbytes = size.value

    def matmul(self, x: np.ndarray, isa: str, threaded: bool = True) -> np.ndarray:
        """x (M x K) · Wᵀ on one ISA path."""
        return self._call(_c_api().sd_matmul, x, ISAS.index(isa), threaded)

    def matmul_q8(self, x: np.ndarray, path: str, threaded: bool = True) -> np.ndarray:
        """x (M x K) · Wᵀ with x quantized per row to 8 bits, integer dot products (int8 values
        only; runtime/kernels/sparse_format.hpp: matmul_q8)."""
        return self._call(_c_api().sd_matmul_q8, x, Q8_PATHS.index(path), threaded)

    def _call(self, function: Any, x: np.ndarray, path: int, threaded: bool) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.k:
            raise SparseDeployError(f"x must be M x {self.k}, got {x.shape}")
        y = np.empty((x.shape[0], self.n), np.float32)
        if function(ctypes.cast(self._ptr, ctypes.c_void_p), self.nbytes, x.ctypes.data, x.shape[0], y.ctypes.data,
                    path, int(threaded)):
            raise SparseDeployError(_c_api().sd_last_error().decode())
        return y

    def __del__(self) -> None:
        if getattr(self, "_ptr", None):
            _c_api().sd_free(ctypes.cast(self._ptr, ctypes.c_void_p))
            self._ptr = None


@dataclass
class SparseOps:
    """What the extension did to one graph: MatMuls with a constant weight on the sparse op and
    left dense (too few zeros), the ISA paths used, and how the packed weights store their
    non-zeros (f32, or int8 for weights on a per-row int8 grid) with, for int8 ones, the
    matmul_q8 path that small batches run on (x quantized per row, integer dot products);
    ``dense_int8``: weights on their int8 grid but too dense for the sparse op, left to OpenVINO's
    own int8 weight compression (counted apart from ``dense``, the f32 ones)."""

    sparse: int = 0
    dense: int = 0
    dense_int8: int = 0
    isa: dict[str, int] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    q8: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sparse_matmuls": self.sparse, "dense_constant_matmuls": self.dense,
                "dense_int8_matmuls": self.dense_int8, "isa": self.isa,
                "values": self.values, "q8": self.q8}


def _core(sparse: bool, isa: str | None, min_sparsity: float) -> Any:
    import openvino as ov

    core = ov.Core()
    if sparse:
        os.environ["SPARSE_DEPLOY_OV_MIN_SPARSITY"] = repr(min_sparsity)
        os.environ["SPARSE_DEPLOY_OV_ISA"] = isa or "auto"
        core.add_extension(str(library()))
    return core


def read_model(path: str | Path, sparse: bool, isa: str | None = None,
               min_sparsity: float = MIN_SPARSITY) -> tuple[Any, Any, SparseOps]:
    """``(core, model, ops)``: the graph as OpenVINO reads it (with the extension when
    ``sparse``), and what went on the sparse op."""
    if isa is not None and isa not in ISAS:
        raise SparseDeployError(f"unknown ISA {isa!r}; choose from {', '.join(ISAS)}")
    if sparse and isa is None and best_isa() == "scalar":
        log.warning("this CPU has no AVX2: the sparse op runs its scalar path (slow)")
    core = _core(sparse, isa, min_sparsity)
    try:
        model = core.read_model(str(path))
    except RuntimeError as exc:
        raise SparseDeployError(f"OpenVINO cannot read {path}: {first_line(exc)}") from None
    return core, model, count_ops(model)


def _int8_compressed(node: Any) -> bool:
    """Whether ``node`` is OpenVINO's int8 weight compression: Multiply(Convert(i8 Constant), scale)."""
    if node.get_type_name() != "Multiply":
        return False
    convert = node.input_value(0).get_node()
    if convert.get_type_name() != "Convert":
        return False
    source = convert.input_value(0).get_node()
    return source.get_type_name() == "Constant" and source.get_element_type().get_type_name() == "i8"


def count_ops(model: Any) -> SparseOps:
    ops = SparseOps()
    isas: Counter[str] = Counter()
    values: Counter[str] = Counter()
    q8: Counter[str] = Counter()
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind == "SparseMatMul":
            ops.sparse += 1
            attributes = node.get_attributes()
            isas[attributes["isa"]] += 1
            values[attributes["values"]] += 1
            if attributes["q8"]:
                q8[attributes["q8"]] += 1
        elif kind == "MatMul":
            weight = node.input_value(1).get_node()
            if weight.get_type_name() == "Constant":
                ops.dense += 1
            elif _int8_compressed(weight):
                ops.dense_int8 += 1
    ops.isa = dict(isas)
    ops.values = dict(values)
    ops.q8 = dict(q8)
    return ops


def compile_model(path: str | Path, sparse: bool, threads: int | None = None, isa: str | None = None,
                  min_sparsity: float = MIN_SPARSITY) -> tuple[Any, SparseOps]:
    """A compiled model for the CPU plugin, and the sparse-op counts of its graph."""
    core, model, ops = read_model(path, sparse, isa, min_sparsity)
    # f32 like the artifact: on CPUs with AVX512_BF16 OpenVINO would otherwise run MatMuls in bf16
    # (faster here), which is a different model, not a faster runtime.
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(model, "CPU", config)
    except RuntimeError as exc:
        raise SparseDeployError(f"OpenVINO cannot compile {path}: {first_line(exc)}") from None
    return compiled, ops


def model_inputs(compiled: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {name for port in compiled.inputs for name in port.get_names()}
    return {k: v for k, v in feeds.items() if k in names}


def run(compiled: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """One inference; the outputs in the graph's order (feeds the graph lacks are left out)."""
    result = compiled.create_infer_request().infer(model_inputs(compiled, feeds))
    return [result[port] for port in compiled.outputs]


def infer_call(compiled: Any, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
    """One infer request of ``compiled`` bound to ``feeds``: a call that runs it once, zero-copy.

    Why zero-copy: OpenVINO's Python ``infer(inputs)`` copies every input into the request and
    every output out of it, and at decode those are the past and present KV cache of each block
    (8 MB per LLaMA-7B block per step, both ways). That is a cost of the Python binding, not of
    the runtime, that a serving loop keeping its tensors in the request never pays: on the demo's
    SmolLM2-135M decode step (Zen 5, 2 threads) it was ~3 ms of ~19 (a throwaway A/B, the same
    for the dense and the pruned graph). ``share_inputs`` reads the numpy feeds in place;
    ``share_outputs`` leaves the results in the request's own memory (the timing loops drop them).
    """
    request = compiled.create_infer_request()
    inputs = model_inputs(compiled, feeds)
    return lambda: request.infer(inputs, share_inputs=True, share_outputs=True)


def time_runs(compiled: Any, feeds: Mapping[str, np.ndarray], warmup: int, repetitions: int) -> list[float]:
    """Wall time of each of ``repetitions`` runs (seconds) of one infer request, after ``warmup``."""
    once = infer_call(compiled, feeds)
    for _ in range(warmup):
        once()
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


def compress_weights_int8(src: str | Path, dst: Path) -> Path:
    """``dst`` (an OpenVINO IR .xml) = the graph at ``src`` with every constant MatMul weight as
    OpenVINO's own int8 weight compression holds it: an i8 constant -> Convert -> Multiply by a
    per-output-channel f32 scale (symmetric, max |w| / 127), the pattern its CPU plugin runs as a
    compressed FullyConnected. What a user who quantizes instead of pruning gets from OpenVINO
    (``bench --runtime openvino-int8``); embeddings stay f32 as in OpenVINO's default."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(str(src))
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul" or node.input_value(1).get_node().get_type_name() != "Constant":
            continue
        weight = node.input_value(1).get_node().get_data()
        if weight.ndim != 2 or weight.dtype != np.float32:
            continue
        channel_axis = 0 if node.get_attributes().get("transpose_b") else 1  # the output channels' axis
        scale = np.abs(weight).max(axis=1 - channel_axis, keepdims=True) / 127
        scale = np.where(scale > 0, scale, 1).astype(np.float32)
        q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        compressed = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
        node.input(1).replace_source_output(compressed.output(0))
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return dst
