"""benchmarks/headline.py: the figures come out of the proxy report as the README says (per
block, against the fastest dense runtime of the run), and the README table is regenerated in
place between its markers."""

from __future__ import annotations

import pytest

from benchmarks import headline as hl
from runtime.bench import BenchRow

# (label, runtime, flavour) -> 2-block time in ms; head-only 10 ms everywhere
TIMES = {("dense", "onnxruntime"): 50.0, ("dense", "openvino"): 40.0, ("dense", "openvino-sparse"): 40.0,
         ("dense", "deepsparse"): 60.0, ("owl-wanda-70", "openvino-sparse"): 20.0, ("owl-wanda-70", "deepsparse"): 45.0,
         ("wanda-50", "openvino-sparse"): 30.0, ("oats-50", "openvino-sparse"): 34.0, ("osscar-50", "onnxruntime"): 25.0,
         ("osscar-50", "openvino"): 26.0}


def _rows() -> list[BenchRow]:
    rows = []
    for flavour in ("decode", "prefill"):
        for runtime in hl.SPARSE_RUNTIME, "onnxruntime", "openvino", "deepsparse":
            for label in ("dense", "owl-wanda-70", "wanda-50", "oats-50", "osscar-50", "head-only"):
                ms = 10.0 if label == "head-only" else TIMES.get((label, runtime), 55.0)
                rows.append(BenchRow("a", label, 0.0 if label == "dense" else 0.5, flavour, runtime,
                                     stats={"median_ms": ms, "round_medians_ms": [ms, ms * 1.1]}))
    return rows


def _report() -> dict:
    return {"rows": [r.__dict__ for r in _rows()], "measured": "2026-12-01 20:00",
            "environment": {"cpu": "test cpu", "cores": 2, "isa": "avx512", "packages": {}},
            "settings": {"batch": 1, "seq_len": 128, "past": 127, "rounds": 2, "repetitions": 10, "warmup": 3}}


def test_figures_are_per_block_against_the_fastest_dense_runtime(tmp_path):
    h = hl.headline(_report(), tmp_path / "latency.json")
    assert h["baseline_runtime"] == "openvino"  # dense block (40 - 10) / 2 = 15 ms, the fastest (openvino-sparse
    # ties on the dense model but is no baseline: there it is OpenVINO's own kernels)
    assert h["decode_speedup_owl_wanda_70"] == pytest.approx(15 / 5, abs=1e-3)  # (20 - 10) / 2
    assert h["deepsparse_decode_speedup_owl_wanda_70"] == pytest.approx(15 / 17.5, abs=1e-3)  # against the same baseline
    assert h["oats_vs_wanda_decode_50"] == pytest.approx(10 / 12, abs=1e-3)  # wanda block 10 ms, OATS 12 ms
    assert h["osscar_50_decode_speedup"] == pytest.approx(15 / 7.5, abs=1e-3) and h["osscar_50_runtime"] == "onnxruntime"
    assert h["depth"] == "per decoder block" and h["isa"] == "avx512"


def test_the_readme_table_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline:start -->\nold\n<!-- headline:end -->\nrest\n")
    hl.update_readme(hl.readme_table(hl.headline(_report(), tmp_path / "latency.json")), readme)
    text = readme.read_text()
    assert "old" not in text and "**3.00x**" in text and text.endswith("<!-- headline:end -->\nrest\n")
    with pytest.raises(SystemExit):
        hl.update_readme("x", _no_markers(tmp_path))


def _no_markers(tmp_path):
    path = tmp_path / "plain.md"
    path.write_text("no markers here\n")
    return path


def test_int8_figures_are_per_block_against_the_fastest_dense_int8_runtime(tmp_path):
    """The int8 run's own rows: sparse + int8 against the fastest int8 baseline's dense block (and
    the fastest f32 one), with that run's hardware kept next to the figures."""
    times = {("dense", "onnxruntime"): 50.0, ("dense", "onnxruntime-int8"): 20.0, ("dense", "openvino-int8"): 24.0,
             ("owl-wanda-70-int8", "openvino-sparse"): 16.0, ("dense", "openvino-sparse"): 50.0}
    rows = [BenchRow("a", label, None if label == "head-only" else 0.0, flavour, runtime,
                     stats={"median_ms": 4.0 if label == "head-only" else times.get((label, runtime), 50.0)})
            for flavour in ("decode", "prefill") for runtime in ("onnxruntime", "openvino-sparse", "onnxruntime-int8",
                                                                 "openvino-int8")
            for label in ("dense", "owl-wanda-70-int8", "head-only")
            if not (runtime.endswith("int8") and label == "owl-wanda-70-int8")]
    report = {**_report(), "rows": [r.__dict__ for r in rows], "environment": {"cpu": "zen3", "cores": 2, "isa": "avx2"}}
    int8 = hl.int8_figures(report, tmp_path / "int8" / "latency.json")
    figures = {k: f["speedup"] for k, f in int8["figures"].items()}
    assert figures["decode_speedup_sparse_int8_70_vs_int8_dense"] == pytest.approx(8 / 6, abs=1e-3)  # (20-4)/2 vs (16-4)/2
    assert figures["decode_speedup_sparse_int8_70_vs_fp32"] == pytest.approx(23 / 6, abs=1e-3)
    assert int8["run"]["baseline_runtime_int8"] == "onnxruntime-int8" and int8["run"]["isa"] == "avx2"
    h = hl.headline(_report(), tmp_path / "latency.json", int8)
    assert h["int8_run"]["hardware"] == "zen3, 2 cores" and h["isa"] == "avx512"
    assert "| OWL+Wanda 70% + int8 vs dense int8, decode, openvino-sparse | **1.33x** |" in hl.readme_table(h)


def test_full_depth_runs_keep_their_own_hardware_and_label_an_extrapolated_dense(tmp_path):
    """A full-depth run with a dense artifact compares with the fastest dense runtime measured at
    full depth; one without (LLaMA-7B: dense fits no runtime) with the dense model extrapolated from
    its blocks, on the same CPU only, and says so."""
    ms = lambda d, p: {"decode": {"median_ms": d}, "prefill": {"median_ms": p}}  # noqa: E731
    phi3 = {"blocks": 32, "recipe": {"proxy": "phi3-mini", "variant": "OWL+wanda 70%"}, "measured": "d1",
            "environment": {"cpu": "zen3", "cores": 2, "isa": "avx2"},
            "latency": {"openvino": {"dense": ms(400.0, 4000.0), "pruned": ms(390.0, 3900.0)},
                        hl.SPARSE_RUNTIME: {"dense": ms(410.0, 4100.0), "pruned": ms(200.0, 2500.0)}},
            "speedups": {"decode": {"baseline_runtime": "openvino", "baseline_ms": 400.0,
                                    "pruned": {hl.SPARSE_RUNTIME: {"vs_fastest_dense": 2.0, "vs_own_dense": 2.05}}}}}
    llama = {**phi3, "recipe": {"proxy": "llama7b", "variant": "OWL+wanda 70%"}, "speedups": {},
             "latency": {hl.SPARSE_RUNTIME: {"pruned": ms(300.0, 3000.0)}},
             "extrapolated": {"same_cpu": True, "pruned_vs_extrapolated_dense": {
                 "decode": {"baseline_runtime": "openvino", "dense_extrapolated_ms": 600.0,
                            "pruned": {hl.SPARSE_RUNTIME: 2.0}}}}}
    runs = [hl.full_depth_figures(phi3, tmp_path / "scale_phi3_mini.json"),
            hl.full_depth_figures(llama, tmp_path / "scale_llama7b.json")]
    assert runs[0]["geometry"].startswith("phi3-mini (hidden 3072, MLP 8192")
    assert runs[0]["vs_fastest_dense"]["decode"] == {"baseline_runtime": "openvino", hl.SPARSE_RUNTIME: 2.0}
    assert "vs_dense_extrapolated_from_blocks" not in runs[0]
    assert runs[1]["vs_dense_extrapolated_from_blocks"]["decode"][hl.SPARSE_RUNTIME] == 2.0
    other_cpu = {**llama, "extrapolated": {**llama["extrapolated"], "same_cpu": False}}
    assert "vs_dense_extrapolated_from_blocks" not in hl.full_depth_figures(other_cpu, tmp_path / "x.json")
    table = hl.readme_table(hl.headline(_report(), tmp_path / "latency.json", full_depth=runs))
    assert "phi3-mini, 32 blocks, OWL+wanda 70%, openvino-sparse: decode **2.00x** vs openvino" in table
    assert "decode 300 ms, 2.00x vs dense openvino *extrapolated from its blocks* (600 ms)" in table
