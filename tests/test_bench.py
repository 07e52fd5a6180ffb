"""The latency benchmark's bookkeeping (deterministic) and one real run on tiny artifacts."""

import json
import os

import pytest

from runtime.bench import INT8_BASELINES, RUNTIMES, BenchRow, BenchSettings, block_sparsity, sparse_not_faster, speedups, summarize
from benchmarks.cache import tree_gb
from benchmarks.proxies import decomposition
from export.artifact import export_artifact
from pipeline.app.cli import main
from pipeline.errors import SparseDeployError


def _row(label, sparsity, ms, flavour="decode", runtime="deepsparse"):
    return BenchRow("x", label, sparsity, flavour, runtime, stats={"median_ms": ms})


def test_summary_statistics():
    s = summarize([0.001, 0.002, 0.003, 0.004, 0.100])
    assert s["median_ms"] == pytest.approx(3.0) and s["n"] == 5
    assert s["p10_ms"] < s["median_ms"] < s["p90_ms"]


def test_speedups_are_against_the_densest_and_slow_sparse_is_flagged():
    rows = [_row("head-only", None, 1.0), _row("dense", 0.0, 10.0), _row("s50", 0.5, 8.0), _row("s70", 0.7, 12.0),
            _row("dense", 0.0, 10.0, runtime="onnxruntime"), _row("s70", 0.7, 11.0, runtime="onnxruntime")]
    table = {(t["runtime"], t["artifact"]): t["speedup"] for t in speedups(rows)}
    assert table[("deepsparse", "s50")] == pytest.approx(1.25)
    assert ("deepsparse", "head-only") not in table and ("deepsparse", "dense") not in table
    assert table[("deepsparse", "s70")] == pytest.approx(10 / 12)
    flagged = sparse_not_faster(speedups(rows))
    assert [(t["artifact"], t["runtime"]) for t in flagged] == [("s70", "deepsparse")]  # ORT is not judged


def test_a_sliced_artifact_is_not_taken_for_the_dense_one():
    """Random dense weights hold a few exact zeros; a sliced artifact holds fewer, and half the weights."""
    dense = BenchRow("x", "dense", 5.2e-8, "decode", "deepsparse", stats={"median_ms": 20.0}, nonzeros=400)
    sliced = BenchRow("x", "osscar", 4.9e-8, "decode", "deepsparse", stats={"median_ms": 10.0}, nonzeros=200)
    (t,) = speedups([sliced, dense])
    assert (t["artifact"], t["baseline"], t["speedup"]) == ("osscar", "dense", pytest.approx(2.0))


def test_decomposition_separates_head_and_blocks():
    rows = [_row("dense", 0.0, 21.0), _row("pruned", 0.7, 11.0), _row("head-only", 0.0, 1.0)]
    (t,), _text = decomposition(rows, blocks=2, depth=32)
    assert t["block_ms"] == {"dense": 10.0, "pruned": 5.0}
    assert t["blocks_speedup"] == pytest.approx(2.0)
    assert t["extrapolated_speedup"] == pytest.approx((1 + 320) / (1 + 160))


def test_a_variant_with_an_int8_head_is_referred_to_the_int8_head_only_row():
    """Its int8 head (1 ms instead of 5) must not be credited to its blocks: (9 - 1) / 2, not
    (9 - 5) / 2; the fastest-dense table subtracts the same reference."""
    from benchmarks.proxies import HEAD_ONLY_INT8, fastest_dense_blocks

    rows = [_row("dense", 0.0, 21.0), _row("q", 0.7, 9.0), _row("head-only", 0.0, 5.0), _row(HEAD_ONLY_INT8, 0.0, 1.0)]
    heads = {"q": HEAD_ONLY_INT8}
    (t,), text = decomposition(rows, blocks=2, depth=32, heads=heads)
    assert t["block_ms"] == {"dense": 8.0, "q": 4.0} and t["head_ms"] == 1.0 and HEAD_ONLY_INT8 in text
    assert t["extrapolated_speedup"] == pytest.approx((5 + 32 * 8) / (1 + 32 * 4))
    (f,), _ = fastest_dense_blocks(rows, blocks=2, baselines=("deepsparse",), heads=heads)
    assert f["blocks_speedup"] == pytest.approx(2.0)
    (t,), _ = decomposition(rows, blocks=2, depth=32)  # without the map: the f32 head-only row
    assert t["block_ms"]["q"] == 2.0


def test_decomposition_compares_variants_with_a_baseline_variant():
    rows = [_row("dense", 0.0, 21.0), _row("wanda", 0.5, 17.0), _row("oats", 0.5, 13.0), _row("head-only", 0.0, 1.0)]
    table, text = decomposition(rows, blocks=2, depth=32, baselines={"oats": "wanda"})
    by_variant = {t["variant"]: t for t in table}
    assert by_variant["oats"]["vs_baseline"]["blocks_speedup"] == pytest.approx(8 / 6)
    assert by_variant["oats"]["blocks_speedup"] == pytest.approx(10 / 6)
    assert "vs_baseline" not in by_variant["wanda"] and "(vs wanda)" in text


def test_block_sparsity_counts_low_rank_factors_against_the_dense_weight():
    manifest = {"weights": {"layers.0.q.sparse.weight.T": {"shape": [8, 8], "nonzeros": 24, "pattern": "unstructured"},
                            "layers.0.q.down.weight.T": {"shape": [8, 1], "nonzeros": 8, "pattern": "low-rank"},
                            "layers.0.q.up.weight.T": {"shape": [1, 8], "nonzeros": 8, "pattern": "low-rank"}}}
    assert block_sparsity(manifest) == pytest.approx(1 - 40 / 64)


def test_block_sparsity_reads_the_manifest():
    manifest = {"weights": {"embed_tokens.weight": {"shape": [10, 4], "nonzeros": 40},
                            "layers.0.mlp.up_proj.weight.T": {"shape": [4, 8], "nonzeros": 8},
                            "layers.1.mlp.up_proj.weight.T": {"shape": [4, 8], "nonzeros": 24}}}
    assert block_sparsity(manifest) == pytest.approx(0.5)


def test_bad_settings_are_clear_errors():
    with pytest.raises(SparseDeployError, match="unknown runtime"):
        BenchSettings(runtimes=("tensorrt",))
    with pytest.raises(SparseDeployError):
        BenchSettings(repetitions=0)


def test_bench_writes_json_markdown_and_plot(tmp_path):
    art = tmp_path / "dense"
    export_artifact("tiny-llama", art, parity_windows=1, parity_seq_len=32)
    out = tmp_path / "report"
    assert main(["bench", str(art), "--out", str(out), "--repetitions", "3", "--warmup", "1", "--seq-len", "16",
                 "--past", "8", "--rounds", "2", "--allow-slower", "--runtime", ",".join(RUNTIMES)]) == 0
    report = json.loads((out / "latency.json").read_text())
    cells = {(r["flavour"], r["runtime"]) for r in report["rows"] if not r["error"]}
    expected = {(f, r) for f in ("decode", "prefill") for r in RUNTIMES}
    assert cells == expected
    assert all(r["stats"]["n"] == 6 and len(r["stats"]["round_medians_ms"]) == 2 for r in report["rows"])
    assert report["environment"]["cores"] >= 1
    assert (out / "latency.png").stat().st_size > 10_000
    assert "| dense | 0.00 | decode | deepsparse |" in (out / "latency.md").read_text()
    assert "## Speedup over the fastest dense int8 runtime" in (out / "latency.md").read_text()
    assert {t["baseline_runtime"] for t in report["fastest_int8_dense"]} <= set(INT8_BASELINES)
    assert "onnxruntime-int8" not in BenchSettings().runtimes  # opt-in: they convert every graph


def test_int8_baselines_time_the_densest_artifact_and_the_head_only(tmp_path, monkeypatch):
    """Dense int8 is a baseline: converted once per graph and timed on the dense and head-only
    artifacts only (a pruned graph would run as fast in them, its zeros stored as int8 zeros)."""
    import runtime.bench as latency

    arts = []
    for name, weights in (("dense", {"layers.0.w": {"shape": [2, 4], "nonzeros": 8}}),
                          ("pruned", {"layers.0.w": {"shape": [2, 4], "nonzeros": 3}}), ("head", {})):
        art = tmp_path / name
        art.mkdir()
        (art / "manifest.json").write_text(json.dumps({"weights": weights, "flavours": {"decode": {"file": "m.onnx"}}}))
        arts.append(art)
    converted, timed = [], []

    def convert(src, dst):
        converted.append(src.parent.name)
        return dst

    monkeypatch.setitem(latency.INT8_CONVERTERS, "onnxruntime-int8", convert)
    monkeypatch.setattr(latency, "time_cell", lambda runtime, graph, feeds, s, flavour: (
        timed.append((runtime, graph.name)), ([0.001], {}))[1])
    monkeypatch.setattr(latency, "_feeds", lambda *a: {})
    rows = latency.measure(arts, BenchSettings(repetitions=1, rounds=2, runtimes=("onnxruntime", "onnxruntime-int8")))
    assert {(r.label, r.runtime) for r in rows} == {("dense", "onnxruntime"), ("pruned", "onnxruntime"),
                                                    ("head", "onnxruntime"), ("dense", "onnxruntime-int8"),
                                                    ("head", "onnxruntime-int8")}
    assert sorted(converted) == ["dense", "head"]  # once each, over two rounds
    assert sum(runtime == "onnxruntime-int8" for runtime, _ in timed) == 4


def test_rounds_interleave_artifacts_so_drift_favours_none(tmp_path, monkeypatch):
    """Two identical graphs on a machine that gets 1 ms faster at every call: measured one after
    the other, the later one would look faster; interleaved in reversed order, they tie."""
    import runtime.bench as latency

    arts = []
    for name, nonzeros in (("a", 8), ("b", 4)):
        art = tmp_path / name
        art.mkdir()
        weights = {"layers.0.w": {"shape": [2, 4], "nonzeros": nonzeros}}
        (art / "manifest.json").write_text(json.dumps({"weights": weights, "flavours": {"decode": {"file": "m.onnx"}}}))
        arts.append(art)
    calls = []

    def fake_time(runtime, graph, feeds, s, flavour):
        calls.append(graph.parent.name)
        return [(100 - len(calls)) / 1000], {}

    monkeypatch.setattr(latency, "time_cell", fake_time)
    monkeypatch.setattr(latency, "_feeds", lambda *a: {})
    settings = BenchSettings(repetitions=1, rounds=2, runtimes=("onnxruntime",))
    rows = latency.measure(arts, settings, labels=["a", "b"])
    assert calls == ["a", "b", "b", "a"]
    a, b = (r.stats for r in rows)
    assert a["round_medians_ms"] == pytest.approx([99, 96]) and b["round_medians_ms"] == pytest.approx([98, 97])
    assert a["median_ms"] == pytest.approx(b["median_ms"])  # sequential: 99 vs 98, a 1% "speedup" from drift alone
    (t,) = latency.speedups(rows)
    assert t["speedup"] == pytest.approx(1.0) and t["round_speedups"] == pytest.approx([99 / 98, 96 / 97])


def test_flavours_choose_the_graphs_timed(tmp_path, monkeypatch):
    """A first-run demo times decode only: the prefill graph is neither compiled nor timed."""
    import runtime.bench as latency

    art = tmp_path / "a"
    art.mkdir()
    flavours = {"decode": {"file": "model.onnx"}, "prefill": {"file": "prefill/model.onnx"}}
    weights = {"layers.0.w": {"shape": [2, 4], "nonzeros": 4}}
    (art / "manifest.json").write_text(json.dumps({"weights": weights, "flavours": flavours}))
    timed = []
    monkeypatch.setattr(latency, "time_cell",
                        lambda runtime, graph, feeds, s, flavour: (timed.append(graph.name), ([0.001], {}))[1])
    monkeypatch.setattr(latency, "_feeds", lambda *a: {})
    rows = latency.measure([art], BenchSettings(repetitions=1, runtimes=("onnxruntime",), flavours=("decode",)))
    assert [r.flavour for r in rows] == ["decode"] and timed == ["model.onnx", "model.onnx"]
    with pytest.raises(SparseDeployError, match="the artifacts hold decode, prefill, the bench asks for encoder"):
        latency.measure([art], BenchSettings(repetitions=1, runtimes=("onnxruntime",), flavours=("encoder",)))
    with pytest.raises(SparseDeployError, match="flavours must be some of"):
        BenchSettings(flavours=("decoder",))


def test_bench_on_a_non_artifact_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is not an artifact" in capsys.readouterr().err


def test_proxy_recipes_parse(tmp_path):
    import argparse
    from pathlib import Path

    import yaml

    from benchmarks.proxies import _apply_recipe
    from benchmarks.scale import ScaleRecipe

    recipes = sorted((Path(__file__).parent.parent / "recipes" / "proxies").glob("*.yaml"))
    assert len(recipes) >= 4
    for recipe in recipes:
        if "-full-" in recipe.stem:  # a full-depth run (benchmarks/scale.py)
            full = ScaleRecipe.load(recipe)
            BenchSettings(runtimes=full.runtimes)
            assert full.stages[-len(full.runtimes):] == tuple(f"bench-{r}" for r in full.runtimes)
            if full.extrapolate:  # the 2-block run it is checked against has the same configuration
                proxy = argparse.Namespace(blocks=2, runtime="onnxruntime", calib_samples=16, calib_seq_len=256)
                _apply_recipe(proxy, yaml.safe_load(full.extrapolate.read_text()))
                assert (proxy.proxy, proxy.calib_samples, proxy.calib_seq_len) == (full.proxy, full.samples,
                                                                                 full.seq_len)
                assert full.variant in proxy.variant
            continue
        args = argparse.Namespace(proxy="llama7b", blocks=2, variant=None, compare=[], runtime="onnxruntime", out=None,
                                  calib_samples=16, calib_seq_len=256)
        _apply_recipe(args, yaml.safe_load(recipe.read_text()))
        labels = {v.label for v in args.variant}
        assert all(pair.split("=")[0] in labels and pair.split("=")[1] in labels for pair in args.compare)
        BenchSettings(runtimes=tuple(args.runtime.split(",")))
        if recipe.stem == "llama7b-int8":
            quantize = {v.label: v.quantize for v in args.variant}["owl-wanda-70-int8"]
            assert quantize.method == "rtn" and quantize.head  # the LM head int8 too, as in the baselines
            assert set(INT8_BASELINES) <= set(args.runtime.split(","))
    with pytest.raises(SparseDeployError, match="'variantz'"):
        _apply_recipe(argparse.Namespace(), {"proxy": "llama7b", "variantz": []})
    with pytest.raises(SparseDeployError, match="quantize: method 'gtpq'"):
        _apply_recipe(argparse.Namespace(blocks=2), {"proxy": "llama7b", "variants": ["x=wanda:0.5:quantize=gtpq"]})
    with pytest.raises(SparseDeployError, match="head quantizes the LM head, so it needs quantize"):
        _apply_recipe(argparse.Namespace(blocks=2), {"proxy": "llama7b", "variants": ["x=wanda:0.5:head"]})
    bad = tmp_path / "full.yaml"
    bad.write_text("proxy: llama7b\nvariant: x=wanda:0.7\nblockz: 3\n")
    with pytest.raises(SparseDeployError, match="a full-depth recipe has keys"):
        ScaleRecipe.load(bad)


def test_benchmark_caches_are_keyed_on_the_code(tmp_path, monkeypatch):
    """A changed pruner or exporter must not be answered from a cache its old version filled."""
    from benchmarks.cache import code_keyed, drop_stale
    from pipeline.environment import source_digest

    package = tmp_path / "src" / "fakepkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    before = source_digest("fakepkg")
    (package / "__init__.py").write_text("x = 2\n")
    assert source_digest("fakepkg") != before
    assert code_keyed(tmp_path / "m").name == f"m@{source_digest('pipeline', 'export')}"
    for name in ("m@old", "m@new", "m-wanda@old"):
        (tmp_path / name).mkdir()
    drop_stale(tmp_path / "m@new")
    assert sorted(p.name for p in tmp_path.iterdir() if "@" in p.name) == ["m-wanda@old", "m@new"]


def test_claims_compare_paired_windows():
    from benchmarks.quality import _paired

    def row(nll):
        return {"eval": {"window_nll": nll}}

    base = [2.0, 3.0, 2.5, 4.0, 3.5, 2.2]
    assert "beyond 2 SE" in _paired(row([x - 0.05 for x in base]), row(base))  # lower on every window
    noisy = [x + d for x, d in zip(base, [0.1, -0.1, 0.1, -0.1, 0.1, -0.09])]
    assert "within 2 SE" in _paired(row(noisy), row(base))  # same mean, window to window noise
    assert _paired({"eval": {}}, row(base)) == ""  # a row from before per-window scores


def test_merged_quality_rows_keep_the_header_and_say_where_they_ran():
    from benchmarks.quality import merge_report

    zen3, zen4 = {"cpu": "zen3", "isa": "avx2"}, {"cpu": "zen4", "isa": "avx512"}
    previous = {"measured": "d1", "environment": zen3, "notes": ["n"],
                "rows": [{"name": "a", "ppl": 1}, {"name": "c", "ppl": 3}]}
    rows, env, measured, notes = merge_report(previous, [{"name": "b", "ppl": 2}, {"name": "a", "ppl": 9}], zen4, "d2",
                                              [], ["a", "b", "c"])
    assert [(r["name"], r["ppl"]) for r in rows] == [("a", 9), ("b", 2), ("c", 3)]
    assert (env, measured) == (zen3, "d1") and notes == ["n", "Rows b, a measured on zen4 (avx512), d2."]
    assert merge_report(previous, [], zen3, "d2", [], [])[3] == ["n"]  # same machine: nothing to say


@pytest.mark.parametrize("suite", ["baselines", "oats", "osscar"])
def test_quality_suites_build_their_pruners(suite):
    """A misconfigured suite would otherwise fail only after the dense evaluation, minutes in."""
    from benchmarks.quality import CLAIMS, SUITES, config_pruner
    from pipeline.prune import CalibrationConfig

    names = {c["name"] for c in SUITES[suite]}
    for config in SUITES[suite]:
        if config.get("method"):
            assert config_pruner(config).name == config["method"]
            CalibrationConfig(**config.get("calibration", {}))  # a misspelt key or bad size raises here
    assert any(better in names and worse in names for better, worse, _ in CLAIMS)


def test_drift_report_renders_both_protocols():
    from benchmarks.drift import markdown

    result = {"measured": "t", "environment": {"cpu": "cpu", "cores": 2, "packages": {"onnxruntime": "1"}},
              "settings": {"proxy": "p", "sparse": "wanda 60%", "graph": "decode", "pairs": 2, "block": 5,
                           "sequential_runs": 20},
              "sequential_speedup": {"dense_first": 0.83, "sparse_first": 0.89},
              "interleaved_ms": {"dense": [50.0, 60.0], "sparse": [51.0, 59.0]}, "interleaved_speedup": 1.0,
              "pair_speedups": [50 / 51, 60 / 59]}
    text = markdown(result)
    assert "| sequential, dense first (20 runs each) | 0.83x |" in text
    assert "| interleaved (2 pairs of 5-run blocks, medians of all) | 1.00x |" in text
    assert "range 50.0-60.0 ms" in text


def test_a_full_depth_run_is_set_beside_the_2_block_extrapolation(tmp_path):
    from benchmarks.proxies import Variant
    from benchmarks.scale import ScaleRecipe, _extrapolation, _speedups, _extrapolation_lines

    def entry(flavour, runtime, head, dense_block, pruned_block):
        return {"flavour": flavour, "runtime": runtime, "variant": "owl-70", "head_ms": head,
                "block_ms": {"dense": dense_block, "owl-70": pruned_block},
                "extrapolated_32_blocks_ms": {"dense": head + 32 * dense_block, "owl-70": head + 32 * pruned_block}}

    report = tmp_path / "proxy" / "latency.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"measured": "today", "environment": {"cpu": "elsewhere"}, "decomposition": [
        entry("decode", "openvino", 10.0, 3.0, 2.9), entry("decode", "openvino-sparse", 10.0, 3.1, 1.5),
        entry("decode", "onnxruntime", 12.0, 4.0, 4.0)]}))
    proxy_recipe = tmp_path / "proxy.yaml"
    proxy_recipe.write_text(f"proxy: llama7b\nout: {report.parent}\n")
    recipe = ScaleRecipe("llama7b", Variant.parse("owl-70=wanda:0.7:owl"), 8, 256, ("openvino-sparse", "openvino"),
                         tmp_path / "out", dense=True, extrapolate=proxy_recipe)
    ms = lambda v: {"decode": {"median_ms": v}}  # noqa: E731
    latency = {"openvino-sparse": {"dense": ms(110.0), "pruned": ms(55.0)}, "openvino": {"dense": ms(100.0),
                                                                                       "pruned": ms(99.0)}}
    speedups = _speedups(latency)["decode"]  # openvino-sparse's dense is OpenVINO's kernels: not a baseline
    assert speedups["baseline_runtime"] == "openvino" and speedups["pruned"]["openvino-sparse"] == {
        "vs_fastest_dense": pytest.approx(100 / 55), "vs_own_dense": pytest.approx(2.0)}
    ex = _extrapolation(recipe, latency, 32)
    assert not ex["same_cpu"] and ex["depth"] == 32
    cell = ex["latency"]["openvino-sparse"]["pruned"]["decode"]
    assert cell["extrapolated_ms"] == pytest.approx(58.0) and cell["error"] == pytest.approx(58 / 55 - 1)
    assert ex["latency"]["onnxruntime"]["dense"]["decode"]["error"] is None  # not measured at full depth
    vs = ex["pruned_vs_extrapolated_dense"]["decode"]  # the fastest dense extrapolation: openvino's 106 ms
    assert vs["baseline_runtime"] == "openvino" and vs["pruned"]["openvino-sparse"] == pytest.approx(106 / 55)
    text = "\n".join(_extrapolation_lines(ex, latency))
    assert "another CPU" in text and "| openvino-sparse | pruned | decode | 10.0 | 1.50 | 58.0 | 55.0 | +5.5% |" in text
    short = _extrapolation(recipe, latency, 2)  # a --blocks 2 run is held to 2 blocks, not to 32
    assert short["depth"] == 2 and short["latency"]["openvino-sparse"]["pruned"]["decode"]["extrapolated_ms"] == \
        pytest.approx(13.0)
    assert _extrapolation(ScaleRecipe("llama7b", recipe.variant, 8, 256, (), tmp_path, extrapolate=None), latency, 32) == {}


def test_disk_use_counts_a_hard_linked_file_once(tmp_path):
    """The prefill flavour hard-links the decode flavour's external data: on disk once."""
    (tmp_path / "decode").mkdir()
    (tmp_path / "prefill").mkdir()
    (tmp_path / "decode" / "model.onnx.data").write_bytes(b"\0" * 1_000_000)
    os.link(tmp_path / "decode" / "model.onnx.data", tmp_path / "prefill" / "model.onnx.data")
    (tmp_path / "prefill" / "model.onnx").write_bytes(b"\0" * 1000)
    assert tree_gb(tmp_path) == pytest.approx(1_001_000 / 1e9)


def test_the_kernel_sweep_reports_cpu_time_per_chunk():
    """Core-ns per chunk: median x cores / (weights / 16 x rows); a cell twice as fast on the same
    cores reads half, and 16 rows divide it by 16 (what shows a kernel bound by work per chunk)."""
    from benchmarks.openvino_sparse_kernels import READ_LOOP, WEIGHTS, core_ns_per_chunk, derive, render

    def cell(runtime, sparsity, rows, ms):
        return {"rows": rows, "runtime": runtime, "sparsity": sparsity, "median_ms": ms, "p10_ms": ms,
                "p90_ms": ms, "round_medians_ms": [ms]}

    cells = [cell("openvino", 0.0, 1, 20.0), cell("openvino-sparse", 0.7, 1, 10.0), cell("openvino", 0.0, 16, 32.0),
             cell(READ_LOOP, 0.0, 1, 5.0)]
    derive(cells)
    assert cells[1]["baseline"] == "openvino"  # the read loop is a reference, never the dense baseline
    assert cells[1]["share_of_read_loop"] == pytest.approx(1.325 * 5.0 / (4 * 10.0))
    per_chunk = 10.0 * 1e6 * 2 / (WEIGHTS / 16)
    assert core_ns_per_chunk(cells[1], 2) == pytest.approx(per_chunk)
    assert core_ns_per_chunk(cells[0], 2) == pytest.approx(2 * per_chunk)
    assert core_ns_per_chunk(cells[2], 2) == pytest.approx(3.2 * per_chunk / 16)
    text = render({"measured": "now", "environment": {"cpu": "x", "cores": 2, "isa": "avx2",
                                                      "packages": {"onnxruntime": "1", "openvino": "2"}},
                   "cells": cells})
    assert f"| 2.00x | 1.325 | {WEIGHTS * 1.325 / 0.010 / 1e9:.1f} | 3.02x | 17% | {per_chunk:.2f} |" in text
