"""The headline figures, from one proxy run (all variants and runtimes measured together).

Reads the LLaMA-7B geometry proxy report written by

    .venv/bin/python -m benchmarks.proxies --recipe recipes/proxies/llama7b-headline.yaml

and writes ``benchmarks/results/headline.json`` and the README's headline table (between the
``headline`` markers). Every speedup is per decoder block (``(T(2 blocks) - T(head-only)) / 2``)
against the **fastest dense runtime of the same run** for that graph, with the range of the
per-round ratios; DeepSparse is held to the same baseline as our kernels.

The sparse + int8 figures come from a second proxy run where it exists (its hardware and date
are kept with them, under ``int8_run``), against the fastest **dense int8** runtime of that run:

    .venv/bin/python -m benchmarks.proxies --recipe recipes/proxies/llama7b-int8.yaml

The four OWL+Wanda 70% figures (ours and DeepSparse's, decode and prefill) come from the run
that times those cells call by call, all held at once, where it exists (its hardware, date and
protocol at the top level; the proxy run's figures for the same keys kept under
``proxy_run``), because the proxy run times runtimes tens of seconds apart while this VM's
bandwidth drifts within seconds (benchmarks/headline_paired.py):

    .venv/bin/python -m benchmarks.headline_paired

The full-depth runs (benchmarks/scale.py, recipes/proxies/*-full-*.yaml: 32 blocks, no
extrapolation) go under ``full_depth``, each with its own hardware and date:

    .venv/bin/python -m benchmarks.headline [--report ...headline/latency.json] [--paired-report ...] [--int8-report ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.proxies import PROXIES, decomposition, fastest_dense_blocks
from runtime.bench import INT8_BASELINES, BenchRow

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
REPORT = RESULTS / "latency_llama7b_headline" / "latency.json"
PAIRED_REPORT = RESULTS / "headline_paired.json"  # benchmarks/headline_paired.py
INT8_REPORT = RESULTS / "latency_llama7b_int8" / "latency.json"  # recipes/proxies/llama7b-int8.yaml
INT8_VARIANT = "owl-wanda-70-int8"
README = Path(__file__).resolve().parents[1] / "README.md"
FULL_DEPTH = (RESULTS / "scale_llama7b.json", RESULTS / "scale_phi3_mini.json")  # benchmarks/scale.py's reports
SPARSE_RUNTIME = "openvino-sparse"
BLOCKS, DEPTH = 2, 32  # the proxy's blocks (recipes/proxies/llama7b-headline.yaml) and LLaMA-7B's depth


def _cell(entries: list[dict[str, Any]], flavour: str, runtime: str, variant: str) -> dict[str, Any]:
    for e in entries:
        if (e["flavour"], e["runtime"], e["variant"]) == (flavour, runtime, variant):
            return e
    raise KeyError(f"the report has no {flavour} / {runtime} / {variant} cell")


def _figure(entry: dict[str, Any], key: str = "blocks_speedup", rounds: str = "blocks_round_speedups") -> dict[str, Any]:
    return {"speedup": round(entry[key], 3), "rounds": [round(r, 3) for r in entry.get(rounds, [])]}


def int8_figures(report: dict[str, Any], source: Path) -> dict[str, Any]:
    """Sparse + int8 against dense int8 and dense f32, per decoder block, from the int8 proxy run
    (recipes/proxies/llama7b-int8.yaml: its own run, so its own hardware and date)."""
    rows = [BenchRow(**r) for r in report["rows"]]
    heads = report.get("head_references", {})  # absent before int8 heads: every variant on head-only
    vs_int8, _ = fastest_dense_blocks(rows, BLOCKS, INT8_BASELINES, heads)
    vs_fp32, _ = fastest_dense_blocks(rows, BLOCKS, heads=heads)
    env = report["environment"]
    figures = {
        "decode_speedup_sparse_int8_70_vs_int8_dense": _figure(_cell(vs_int8, "decode", SPARSE_RUNTIME, INT8_VARIANT)),
        "decode_speedup_sparse_int8_70_vs_fp32": _figure(_cell(vs_fp32, "decode", SPARSE_RUNTIME, INT8_VARIANT)),
        "prefill_speedup_sparse_int8_70_vs_int8_dense": _figure(_cell(vs_int8, "prefill", SPARSE_RUNTIME, INT8_VARIANT)),
    }
    run = {**_run_header(env, report["measured"]), "variant": INT8_VARIANT, "source": _relative(source),
           "baseline_runtime_int8": next(e["baseline_runtime"] for e in vs_int8 if e["flavour"] == "decode"),
           "baseline_runtime_fp32": next(e["baseline_runtime"] for e in vs_fp32 if e["flavour"] == "decode")}
    return {"figures": figures, "run": run}


PAIRED_KEYS = {  # headline key -> (flavour, runtime) in the call-by-call run
    "decode_speedup_owl_wanda_70": ("decode", SPARSE_RUNTIME),
    "prefill_speedup_owl_wanda_70": ("prefill", SPARSE_RUNTIME),
    "deepsparse_decode_speedup_owl_wanda_70": ("decode", "deepsparse"),
    "deepsparse_prefill_speedup_owl_wanda_70": ("prefill", "deepsparse"),
}


def _run_header(env: dict[str, Any], measured: str) -> dict[str, str]:
    return {"hardware": f"{env['cpu']}, {env['cores']} cores", "isa": env.get("isa", "n/a"), "measured": measured}


def apply_paired(out: dict[str, Any], paired: dict[str, Any], source: Path) -> None:
    """The four OWL+Wanda 70% figures from the call-by-call run (benchmarks/headline_paired.py),
    with its hardware, date and protocol at the top level; what the proxy run gave for the same
    keys, and its own header, move under ``proxy_run`` (the OATS and OSSCAR figures are its)."""
    flavours = paired["flavours"]
    if not all(f in flavours for f, _ in PAIRED_KEYS.values()):
        log.warning("%s lacks decode or prefill: the OWL+Wanda 70%% figures stay the proxy run's", source)
        return
    proxy_keys = ("hardware", "isa", "measured", "baseline_runtime", "baseline_runtime_prefill", "protocol", "source")
    out["proxy_run"] = {k: out[k] for k in proxy_keys} | {key: out[key] for key in PAIRED_KEYS} | {
        "rounds": {key: out["rounds"][key] for key in PAIRED_KEYS}}
    out.update(_run_header(paired["environment"], paired["measured"]))
    out["baseline_runtime"] = flavours["decode"]["baseline_runtime"]
    out["baseline_runtime_prefill"] = flavours["prefill"]["baseline_runtime"]
    out["protocol"] = {**{k: paired["settings"][k] for k in ("batch", "seq_len", "past", "warmup", "segments")},
                       "call_by_call": True, "cycles": {f: v["cycles"] for f, v in flavours.items()}}
    out["source"] = _relative(source)
    for key, (flavour, runtime) in PAIRED_KEYS.items():
        figure = flavours[flavour]["speedups"][runtime]
        out[key] = round(figure["speedup"], 3)
        out["rounds"][key] = [round(r, 3) for r in figure["segments"]]


def _geometry(proxy: str) -> str:
    c = PROXIES[proxy][0](0)
    return (f"{proxy} (hidden {c.hidden_size}, MLP {c.intermediate_size}, {c.num_attention_heads} heads, "
            f"vocabulary {c.vocab_size})")


def full_depth_figures(report: dict[str, Any], source: Path) -> dict[str, Any]:
    """What a full-depth run measured (benchmarks/scale.py): per runtime, the dense and pruned
    medians at full depth; the pruned artifact against the fastest dense runtime measured in that
    run; where no dense artifact fits (LLaMA-7B), against the dense model extrapolated from its
    blocks, labelled as such."""
    env = report["environment"]
    medians = {rt: {artifact: {f: round(v["median_ms"], 2) for f, v in graphs.items()}
                    for artifact, graphs in artifacts.items()} for rt, artifacts in report["latency"].items()}
    entry: dict[str, Any] = {
        "geometry": _geometry(report["recipe"]["proxy"]), "blocks": report["blocks"],
        "variant": report["recipe"]["variant"], **_run_header(env, report["measured"]),
        "source": _relative(source), "median_ms": medians,
        "vs_fastest_dense": {f: {"baseline_runtime": v["baseline_runtime"],
                                 **{rt: round(x["vs_fastest_dense"], 3) for rt, x in v["pruned"].items()}}
                             for f, v in report["speedups"].items()}}
    extrapolated = report.get("extrapolated") or {}
    if extrapolated.get("same_cpu") and not report["speedups"]:
        entry["vs_dense_extrapolated_from_blocks"] = {
            f: {"baseline_runtime": v["baseline_runtime"], "dense_ms": round(v["dense_extrapolated_ms"], 2),
                **{rt: round(x, 3) for rt, x in v["pruned"].items()}}
            for f, v in extrapolated["pruned_vs_extrapolated_dense"].items()}
    return entry


def _relative(source: Path) -> str:
    return str(source.relative_to(README.parent)) if source.is_relative_to(README.parent) else str(source)


def headline(report: dict[str, Any], source: Path, int8: dict[str, Any] | None = None,
             full_depth: list[dict[str, Any]] | None = None,
             paired: tuple[dict[str, Any], Path] | None = None) -> dict[str, Any]:
    """The figures, recomputed from the report's rows with the current decomposition code;
    ``int8``: ``int8_figures`` of the int8 proxy run, where there is one; ``full_depth``:
    ``full_depth_figures`` of each full-depth run; ``paired``: the call-by-call run and its
    path (``apply_paired``)."""
    rows = [BenchRow(**r) for r in report["rows"]]
    fastest, _ = fastest_dense_blocks(rows, BLOCKS)
    decomposition_table, _ = decomposition(rows, BLOCKS, DEPTH, {"oats-50": "wanda-50"})
    env = report["environment"]

    def vs_fastest(flavour: str, runtime: str, variant: str) -> dict[str, Any]:
        return _figure(_cell(fastest, flavour, runtime, variant))

    osscar = max((e for e in fastest if e["flavour"] == "decode" and e["variant"] == "osscar-50"),
                 key=lambda e: e["blocks_speedup"])
    oats = _cell(decomposition_table, "decode", SPARSE_RUNTIME, "oats-50")["vs_baseline"]
    baseline = {f: next(e["baseline_runtime"] for e in fastest if e["flavour"] == f) for f in ("decode", "prefill")}
    figures = {
        "decode_speedup_owl_wanda_70": vs_fastest("decode", SPARSE_RUNTIME, "owl-wanda-70"),
        "prefill_speedup_owl_wanda_70": vs_fastest("prefill", SPARSE_RUNTIME, "owl-wanda-70"),
        "deepsparse_decode_speedup_owl_wanda_70": vs_fastest("decode", "deepsparse", "owl-wanda-70"),
        "deepsparse_prefill_speedup_owl_wanda_70": vs_fastest("prefill", "deepsparse", "owl-wanda-70"),
        "oats_vs_wanda_decode_50": _figure(oats),
        "osscar_50_decode_speedup": {**_figure(osscar), "runtime": osscar["runtime"]},
    }
    out: dict[str, Any] = {
        **_run_header(env, report["measured"]), "depth": "per decoder block",
        "geometry": "LLaMA-7B (hidden 4096, MLP 11008, 32 heads), 2 blocks, random weights",
        "baseline_runtime": baseline["decode"], "baseline_runtime_prefill": baseline["prefill"],
        "protocol": {k: report["settings"][k] for k in ("batch", "seq_len", "past", "rounds", "repetitions", "warmup")},
        "source": _relative(source),
        "versions": {k: env["packages"].get(k) for k in ("onnxruntime", "openvino", "torch")},
    }
    for key, fig in figures.items():
        out[key] = fig["speedup"]
        out.setdefault("rounds", {})[key] = fig["rounds"]
    out["osscar_50_runtime"] = figures["osscar_50_decode_speedup"]["runtime"]
    out["oats_vs_wanda_runtime"] = SPARSE_RUNTIME
    if paired:
        apply_paired(out, *paired)
    if int8:
        for key, fig in int8["figures"].items():
            out[key] = fig["speedup"]
            out["rounds"][key] = fig["rounds"]
        out["int8_run"] = int8["run"]
    if full_depth:
        out["full_depth"] = full_depth
    return out


ROWS = (  # README row label, key
    ("OWL+Wanda 70%, decode (1 token after 127), openvino-sparse", "decode_speedup_owl_wanda_70"),
    ("OWL+Wanda 70%, prefill (128 tokens), openvino-sparse", "prefill_speedup_owl_wanda_70"),
    ("OWL+Wanda 70%, decode, DeepSparse 1.8.0", "deepsparse_decode_speedup_owl_wanda_70"),
    ("OWL+Wanda 70%, prefill, DeepSparse 1.8.0", "deepsparse_prefill_speedup_owl_wanda_70"),
    ("OATS 50% vs Wanda 50% (not vs dense), decode, openvino-sparse", "oats_vs_wanda_decode_50"),
    ("OSSCAR 50% of neurons and heads sliced, decode", "osscar_50_decode_speedup"),
)
INT8_ROWS = (
    ("OWL+Wanda 70% + int8 vs dense int8, decode, openvino-sparse", "decode_speedup_sparse_int8_70_vs_int8_dense"),
    ("OWL+Wanda 70% + int8 vs dense f32, decode, openvino-sparse", "decode_speedup_sparse_int8_70_vs_fp32"),
    ("OWL+Wanda 70% + int8 vs dense int8, prefill, openvino-sparse", "prefill_speedup_sparse_int8_70_vs_int8_dense"),
)


def readme_table(h: dict[str, Any]) -> str:
    def spread(key: str, figures: dict[str, Any] = h) -> str:
        r = figures["rounds"].get(key) or []
        return f" ({min(r):.2f}-{max(r):.2f})" if len(r) > 1 else ""

    proxy = h.get("proxy_run", h)  # the run of the OATS and OSSCAR rows (of all rows without a paired run)
    report = f"{Path(proxy['source']).parent}/latency.md"
    lines = [f"Per decoder block of the LLaMA-7B geometry, batch 1, against the fastest dense runtime of the same run "
             f"(decode: {h['baseline_runtime']}, prefill: {h['baseline_runtime_prefill']}), {h['hardware']} "
             f"({h['isa']}), measured {h['measured']}. Source: "
             f"[`benchmarks/results/headline.json`](benchmarks/results/headline.json)."]
    if "proxy_run" in h:
        paired = h["source"].removesuffix(".json") + ".md"
        lines += ["", f"The OWL+Wanda 70% rows: every graph they compare held at once and timed call by call "
                  f"([`{paired}`]({paired}); range over {h['protocol']['segments']} segments of the cycles in "
                  f"brackets). The other rows, and the last column: the proxy run, each runtime's runs back to back in "
                  f"{proxy['protocol']['rounds']} interleaved rounds ({proxy['hardware']}, measured {proxy['measured']}, "
                  f"decode baseline {proxy['baseline_runtime']}; [`{report}`]({report}); range over the rounds)."]
    else:
        lines += ["", f"Range over {h['protocol']['rounds']} interleaved rounds in brackets; from [`{report}`]({report})."]
    two_runs = proxy is not h
    lines += ["", "| what | speedup | paper |" + (" proxy run |" if two_runs else ""),
              "|---|---|---|" + ("---|" if two_runs else "")]
    paper = {"decode_speedup_owl_wanda_70": "2.6x (OWL, DeepSparse, 16+ cores)",
             "oats_vs_wanda_decode_50": "1.37x (OATS, DeepSparse)", "osscar_50_decode_speedup": ">= 1.8x target"}
    for label, key in ROWS:
        extra = f", {h['osscar_50_runtime']}" if key == "osscar_50_decode_speedup" else ""
        rounds = f" {proxy[key]:.2f}x{spread(key, proxy)} |" if key in PAIRED_KEYS else " |"
        lines.append(f"| {label}{extra} | **{h[key]:.2f}x**{spread(key)} | {paper.get(key, '')} |"
                     + (rounds if two_runs else ""))
    run = h.get("int8_run")
    if run:
        lines += ["", f"Sparse + int8 (its own run: {run['hardware']} ({run['isa']}), measured {run['measured']}; "
                  f"dense int8 = the fastest of ONNX Runtime's quantize_dynamic and OpenVINO's int8 weight compression, "
                  f"here {run['baseline_runtime_int8']}; dense f32 here {run['baseline_runtime_fp32']}; from "
                  f"[`{Path(run['source']).parent}/latency.md`]({Path(run['source']).parent}/latency.md)):", "",
                  "| what | speedup | target |", "|---|---|---|"]
        target = {"decode_speedup_sparse_int8_70_vs_int8_dense": ">= 1.5x (issue 20)"}
        lines += [f"| {label} | **{h[key]:.2f}x**{spread(key)} | {target.get(key, '')} |" for label, key in INT8_ROWS]
    lines += _full_depth_lines(h.get("full_depth", []))
    return "\n".join(lines)


def _full_depth_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per full-depth run: the pruned artifact against dense at the model's real depth."""
    if not runs:
        return []
    lines = ["", "At full depth (no extrapolation; each run its own hardware and date):", ""]
    for run in runs:
        figures = []
        for flavour, v in run["vs_fastest_dense"].items():
            figures.append(f"{flavour} **{v.get(SPARSE_RUNTIME, 0):.2f}x** vs {v['baseline_runtime']}")
        for flavour, v in run.get("vs_dense_extrapolated_from_blocks", {}).items():
            figures.append(f"{flavour} {run['median_ms'][SPARSE_RUNTIME]['pruned'][flavour]:.0f} ms, "
                           f"{v[SPARSE_RUNTIME]:.2f}x vs dense {v['baseline_runtime']} *extrapolated from its blocks* "
                           f"({v['dense_ms']:.0f} ms)")
        if not figures:
            figures = [f"{f} {ms:.0f} ms" for f, ms in run["median_ms"][SPARSE_RUNTIME]["pruned"].items()]
        source = run["source"].removesuffix(".json") + ".md"
        lines.append(f"- {run['geometry'].split(' (')[0]}, {run['blocks']} blocks, {run['variant']}, "
                     f"{SPARSE_RUNTIME}: {'; '.join(figures)} ({run['hardware']}, {run['isa']}, {run['measured']}; "
                     f"[`{source}`]({source}))")
    return lines


def update_readme(table: str, readme: Path = README) -> None:
    text = readme.read_text()
    pattern = re.compile(r"(<!-- headline:start -->\n).*?(\n<!-- headline:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no <!-- headline:start --> ... <!-- headline:end --> section")
    readme.write_text(pattern.sub(lambda m: m.group(1) + table + m.group(2), text))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--paired-report", type=Path, default=PAIRED_REPORT,
                        help="the call-by-call run of the OWL+Wanda 70%% figures (skipped when absent)")
    parser.add_argument("--int8-report", type=Path, default=INT8_REPORT,
                        help="the sparse + int8 proxy run (skipped when absent)")
    parser.add_argument("--out", type=Path, default=RESULTS / "headline.json")
    args = parser.parse_args(argv)
    int8 = (int8_figures(json.loads(args.int8_report.read_text()), args.int8_report.resolve())
            if args.int8_report.is_file() else None)
    full_depth = [full_depth_figures(json.loads(path.read_text()), path.resolve()) for path in FULL_DEPTH
                  if path.is_file()]
    paired = ((json.loads(args.paired_report.read_text()), args.paired_report.resolve())
              if args.paired_report.is_file() else None)
    h = headline(json.loads(args.report.read_text()), args.report.resolve(), int8, full_depth, paired)
    args.out.write_text(json.dumps(h, indent=2) + "\n")
    update_readme(readme_table(h))
    log.info("wrote %s and the README's headline table", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
