"""The sparse MatMul kernels (runtime/kernels): every ISA path this CPU runs held to the scalar
reference and to numpy, on shapes chosen to hit every edge of the format and the tiling; the
library checked for instruction-set leaks; bad input.

Shapes: K not a multiple of the 16-column chunk, N not a multiple of the 4-row or 64-row tiles,
all-zero and fully dense rows, one row (decode) and many rows (prefill, across the 64/128-row
blocks of the AVX2/AVX-512 paths). Tolerance: 1e-5 relative to the scale of |x|·|W| per
output (float32 sums in a different order), and exactly 0 where a row of W is all zeros.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.errors import SparseDeployError
from runtime import openvino_runner
from runtime.openvino_runner import ISAS, Q8_PATHS, PackedWeight, isa_supported, on_int8_grid, q8_supported

PATHS = [isa for isa in ISAS if isa_supported(isa)]
Q8 = [path for path in Q8_PATHS if q8_supported(path)]
SHAPES = [  # (N, K, M, sparsity)
    (19, 37, 1, 0.7), (4, 16, 1, 0.0), (67, 100, 1, 0.5), (130, 529, 1, 0.9), (9, 33, 2, 0.7),
    (65, 100, 17, 0.5), (130, 600, 129, 0.9), (8, 33, 200, 1.0), (70, 47, 3, 0.3), (33, 1000, 65, 0.8), (9, 130, 4, 0.7),
]


def _weight(n: int, k: int, sparsity: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[rng.random((n, k)) < sparsity] = 0
    w[n // 2] = 0  # an all-zero row
    if n > 2:
        w[1] = rng.standard_normal(k)  # a fully dense row
    return w


def _bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)) + 1e-6


def _int8_grid(w: np.ndarray) -> np.ndarray:
    """W moved onto its per-row symmetric int8 grid (what a weight quantized per row and stored
    dequantized looks like)."""
    scale = np.abs(w).max(axis=1, keepdims=True) / 127
    safe = np.where(scale > 0, scale, 1)
    return (np.round(w / safe) * scale).astype(np.float32)


@pytest.mark.parametrize("values", ["f32", "int8"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-K{}-M{}-s{}".format(*s))
def test_every_path_matches_the_scalar_reference_and_numpy(shape, values):
    """int8 values: W on its int8 grid, so packing is exact and numpy sees the same weight."""
    n, k, m, sparsity = shape
    w = _weight(n, k, sparsity, seed=n * k + m)
    if values == "int8":
        w = _int8_grid(w)
        assert on_int8_grid(w)
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    for transposed in (False, True):  # W as torch stores it, and Wᵀ as an ONNX MatMul does
        packed = PackedWeight(np.ascontiguousarray(w.T) if transposed else w, transposed=transposed, values=values)
        reference = packed.matmul(x, "scalar", threaded=False)
        assert np.all(np.abs(reference - exact) <= _bound(x, w))
        for isa in PATHS:
            for threaded in (False, True):
                y = packed.matmul(x, isa, threaded=threaded)
                assert np.all(np.abs(y - reference) <= _bound(x, w)), (isa, threaded)
                assert np.all(y[:, n // 2] == 0)


def test_int8_rounds_a_weight_off_its_grid_to_nearest_and_knows_it():
    """Off the grid, int8 packing is round-to-nearest per row: each weight moves by at most half
    a step (max |row| / 254), so each output by at most that times sum |x|; and the grid check
    says the weight was not on it (the extension packs int8 only for weights that are)."""
    n, k = 37, 300
    w = _weight(n, k, 0.7, seed=5)
    assert not on_int8_grid(w)
    x = np.random.default_rng(1).standard_normal((4, k)).astype(np.float32)
    half_step = np.abs(w).max(axis=1) / 254
    bound = np.abs(x).sum(axis=1, keepdims=True) * half_step[None, :] * (1 + 1e-3) + _bound(x, w)
    packed = PackedWeight(w, values="int8")
    for isa in PATHS:
        for rows in (x[:1], x):
            y = packed.matmul(rows, isa, threaded=False)
            assert np.all(np.abs(y - rows.astype(np.float64) @ w.T.astype(np.float64)) <= bound[: len(rows)]), isa
    assert packed.nbytes < PackedWeight(w).nbytes / 2.5  # 1 byte per non-zero instead of 4


def _q8_expected(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """matmul_q8 in numpy: x per row to u8 (scale max |x_i| / 127, zero point 128), W's int8 grid."""
    sx = np.abs(x).max(axis=1, keepdims=True) / 127
    sx = np.where(sx > 0, sx, 1).astype(np.float32)
    xq = np.clip(np.round(x / sx), -127, 127).astype(np.int64)
    sw = np.abs(w).max(axis=1) / 127
    wq = np.round(w / np.where(sw > 0, sw, 1)[:, None]).astype(np.int64)
    return (xq @ wq.T).astype(np.float64) * sx.astype(np.float64) * sw[None, :].astype(np.float64)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-K{}-M{}-s{}".format(*s))
def test_q8_paths_match_their_reference_and_numpys_integer_sums(shape):
    """Integer sums are exact, so every path agrees with the reference and with numpy's int64
    sums to float rounding; and with the f32 product to within the activations' rounding (half
    a step of x per weight: 0.5 scale_x sum |W[n, :]|)."""
    n, k, m, sparsity = shape
    w = _int8_grid(_weight(n, k, sparsity, seed=n + k + m))
    x = np.random.default_rng(m + 7).standard_normal((m, k)).astype(np.float32)
    packed = PackedWeight(w, values="int8")
    reference = packed.matmul_q8(x, "scalar", threaded=False)
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.T.astype(np.float64)) * 1e-6 + 1e-6
    assert np.all(np.abs(reference - _q8_expected(x, w)) <= scale)
    sx = np.abs(x).max(axis=1, keepdims=True) / 127
    rounding = 0.5 * sx * np.abs(w).sum(axis=1)[None, :] * (1 + 1e-3) + scale
    assert np.all(np.abs(reference - x.astype(np.float64) @ w.T.astype(np.float64)) <= rounding)
    for path in Q8:
        for threaded in (False, True):
            assert np.all(np.abs(packed.matmul_q8(x, path, threaded=threaded) - reference) <= scale), (path, threaded)


def test_q8_needs_int8_values():
    with pytest.raises(SparseDeployError, match="int8 values"):
        PackedWeight(_weight(8, 32, 0.5, seed=3)).matmul_q8(np.ones((1, 32), np.float32), "scalar")


def test_bad_value_types_and_int8_of_inf_are_refused():
    w = _weight(8, 32, 0.5, seed=2)
    with pytest.raises(SparseDeployError, match="values must be one of"):
        PackedWeight(w, values="int4")
    w[0, 1] = np.inf
    with pytest.raises(SparseDeployError, match="inf or nan"):
        PackedWeight(w, values="int8")


def test_no_lane_past_a_rows_values_is_multiplied():
    """A SIMD path loads 16 values at a time; past a row's last value of a group lie the next
    rows' values and then the next group record's bitmaps, which read as floats can be NaN or
    Inf (columns 23-30 of a group all non-zero set a word's exponent bits). Those lanes must
    never reach an accumulator, not even multiplied by zero: 0 * Inf is NaN."""
    n, k = 8, 128  # one tile, two groups
    w = np.zeros((n, k), np.float32)
    w[:, 64 + 23:64 + 31] = 1.0  # group 1's bitmap words read as Inf/NaN
    w[:, 0] = 0.5  # one value per row in group 0: row 7's loads run into group 1's record
    x = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)
    packed = PackedWeight(w)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    for isa in PATHS:
        for m in (1, 3):
            xm = np.repeat(x, m, axis=0)
            y = packed.matmul(xm, isa, threaded=False)
            assert np.all(np.isfinite(y)) and np.allclose(y, exact, rtol=1e-5, atol=1e-5), (isa, m)


def test_the_cpu_runs_the_wide_paths_it_reports():
    from pipeline.environment import cpu_isa

    assert openvino_runner.best_isa() == cpu_isa()
    assert "scalar" in PATHS


@pytest.mark.parametrize("values", ["f32", "int8"])
def test_bytes_per_weight_are_the_formats(values):
    """0.125 (bitmap) + 4 (1 - s) per logical weight for f32 values, 0.125 + (1 - s) for int8
    ones (+ a scale per row), plus the header, tile pointers and padding."""
    n, k = 256, 1024
    w = _weight(n, k, 0.7, seed=1)
    nnz = int(np.count_nonzero(w))
    packed = PackedWeight(w, values=values)
    expected = n * k / 8 + (4 if values == "f32" else 1) * nnz + (4 * n if values == "int8" else 0)
    assert expected <= packed.nbytes <= expected + 8 * (n + 1) + 4 * 16 + 4 * 64


@pytest.mark.parametrize("n, tasks", [(0, 1), (7, 3), (1001, 64), (64, 64)])
def test_the_streaming_read_reference_reads_every_word_once(n, tasks):
    """The kernel sweep's read loop (sd_stream_read): its sum is numpy's (mod 2^64), so every
    word is read exactly once whatever the split into slices."""
    words = np.random.default_rng(n).integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    expected = int(words.sum(dtype=np.uint64)) if n else 0
    assert openvino_runner.stream_read(words, tasks) == expected
    assert openvino_runner.stream_read(words, tasks, threaded=False) == expected
    with pytest.raises(SparseDeployError, match="tasks"):
        openvino_runner.stream_read(words, 0)


def test_no_wide_instructions_leak_outside_their_paths():
    """Each ISA file is compiled with its own flags. An inline helper compiled in the AVX-512 file
    and merged by the linker into the scalar path would crash a Zen 3 machine (no AVX-512) with
    SIGILL; this checks the library's machine code: zmm registers only in functions of the
    avx512 path, ymm only in the avx2 / avx512 paths, and none in the code that runs when the
    library loads (static initializers run on every CPU, whichever path it will take)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not installed")
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", str(openvino_runner.library())],
                          capture_output=True, text=True, check=True).stdout
    leaks, function = set(), ""
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif ("%zmm" in line or "%ymm" in line) and function.startswith("_GLOBAL__sub_I"):
            leaks.add(function)
        elif "%zmm" in line and "avx512" not in function:
            leaks.add(function)
        elif "%ymm" in line and "avx2" not in function and "avx512" not in function:
            leaks.add(function)
    assert not leaks, sorted(leaks)[:5]


def test_bad_input_is_a_clear_error(monkeypatch, tmp_path):
    packed = PackedWeight(_weight(8, 32, 0.5, seed=0))
    with pytest.raises(SparseDeployError, match="x must be M x 32"):
        packed.matmul(np.zeros((1, 31), np.float32), "scalar")
    missing = [isa for isa in ISAS if not isa_supported(isa)]
    for isa in missing:  # a path this CPU lacks is refused, not run
        with pytest.raises(SparseDeployError, match="cannot run"):
            packed.matmul(np.zeros((1, 32), np.float32), isa)
    monkeypatch.setattr(openvino_runner, "LIBRARY", tmp_path / "absent.so")
    with pytest.raises(SparseDeployError, match="bash scripts/install.sh kernels"):
        openvino_runner.library()
