"""``sparse-deploy``: a thin command line over the Python API.

Every check that can fail on user input runs before any compute; a failure prints one
line (``sparse-deploy: error: ...``) and exits with status 2, leaving no output behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from pipeline.atomic import check_destination
from pipeline.errors import SparseDeployError

log = logging.getLogger("pipeline")


def _at_least(least: int) -> Callable[[str], int]:
    """An argparse type for counts: a bad value is a usage error naming the flag, not a
    traceback (or an IndexError after a minute of export)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return parse


COUNT, POSITIVE, TOKENS = _at_least(0), _at_least(1), _at_least(2)  # tokens: a window predicts >= 1 token


# Defaults are read from the dataclasses and constants that the API uses (declared once there);
# "%(default)s" shows them in --help.
def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    from pipeline.prune import CalibrationConfig

    c = CalibrationConfig()
    g = p.add_argument_group("calibration")
    g.add_argument("--calib-source", default=c.source,
                   help="packaged text name or a .txt/.jsonl file (default: %(default)s); 'fashion-mnist' for vision")
    g.add_argument("--calib-samples", type=POSITIVE, default=c.samples, help="token windows (default: %(default)s)")
    g.add_argument("--calib-seq-len", type=TOKENS, default=c.seq_len, help="tokens per window (default: %(default)s)")
    g.add_argument("--seed", type=COUNT, default=c.seed, help="seed of the window offsets (default: %(default)s)")
    g.add_argument("--calib-image-size", type=POSITIVE, default=c.image_size,
                   help="vision: input size in pixels (default: %(default)s)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    from pipeline.evaluate import EVAL_SEQ_LEN, EVAL_SOURCE, EVAL_WINDOWS

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-source", default=EVAL_SOURCE, help="held-out text (default: %(default)s)")
    g.add_argument("--eval-windows", type=POSITIVE, default=EVAL_WINDOWS,
                   help="non-overlapping windows (default: %(default)s)")
    g.add_argument("--eval-seq-len", type=TOKENS, default=EVAL_SEQ_LEN, help="tokens per window (default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    from export.parity import PARITY_SEQ_LEN, PARITY_WINDOWS
    from pipeline.owl import OWLConfig
    from pipeline.pruners import PRUNERS
    from runtime.bench import FLAVOURS, RUNTIMES, BenchSettings

    owl, bench = OWLConfig(), BenchSettings()

    parser = argparse.ArgumentParser(prog="sparse-deploy", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model and write an HF-format directory plus a JSON record")
    p.add_argument("--model", required=True, help="named model, local directory or Hugging Face id")
    p.add_argument("--method", required=True, choices=sorted(PRUNERS))
    p.add_argument("--sparsity", type=float, help="target sparsity in [0, 1) (implied by --pattern N:M)")
    p.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M such as 2:4")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter, e.g. --param rank_ratio=0.3 --param iterations=80 (OATS); repeatable")
    p.add_argument("--owl", action="store_true", help="OWL per-block sparsities (computed on the dense model)")
    p.add_argument("--owl-m", type=float, default=owl.m, help="OWL outlier threshold M (default: %(default)s)")
    p.add_argument("--owl-lambda", type=float, default=owl.lam, help="OWL half-spread lambda (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output directory (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--stream", action="store_true",
                   help="one decoder block in memory at a time, read from the checkpoint's shards and written to the "
                        "output's as pruned: for models larger than memory (docs/streaming.md)")
    _add_calibration_args(p)

    e = sub.add_parser("eval", help="held-out perplexity of a causal LM")
    e.add_argument("--model", required=True, help="named model, local directory or Hugging Face id")
    e.add_argument("--json", action="store_true", help="print the full result as JSON")
    _add_eval_args(e)

    d = sub.add_parser("demo", help="run recipes/demo.yaml: smollm2-135m, OWL+Wanda 50%%, end to end")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="run directory (finished stages are reused)")

    x = sub.add_parser("export", help="export a (pruned) model to an ONNX artifact with sparsity metadata")
    x.add_argument("--model", required=True, help="pruned model directory, named model or Hugging Face id")
    x.add_argument("--out", required=True, type=Path, help="artifact directory (must be empty or absent)")
    x.add_argument("--overwrite", action="store_true")
    x.add_argument("--parity-windows", type=POSITIVE, default=PARITY_WINDOWS,
                   help="held-out windows for perplexity parity (default: %(default)s)")
    x.add_argument("--parity-seq-len", type=TOKENS, default=PARITY_SEQ_LEN, help="(default: %(default)s)")
    x.add_argument("--stream", action="store_true",
                   help="one decoder block in memory at a time: the graph traced with fake weights, the weights "
                        "written as external data tensor by tensor from the model's shards, for models larger than "
                        "memory (docs/streaming.md)")

    b = sub.add_parser("bench", help="CPU latency of artifacts in DeepSparse, ONNX Runtime and OpenVINO")
    b.add_argument("artifacts", nargs="+", type=Path)
    b.add_argument("--runtime", default=",".join(bench.runtimes),
                   help=f"comma-separated, from {', '.join(RUNTIMES)} (default: %(default)s)")
    b.add_argument("--flavours", default=",".join(bench.flavours),
                   help=f"graphs to time where an artifact has them, comma-separated, from {', '.join(FLAVOURS)} "
                        "(default: all)")
    b.add_argument("--seq-len", type=POSITIVE, default=bench.seq_len, help="prefill tokens (default: %(default)s)")
    b.add_argument("--past", type=COUNT, default=bench.past,
                   help="cached tokens before the decoded one (default: %(default)s)")
    b.add_argument("--batch", type=POSITIVE, default=bench.batch, help="(default: %(default)s)")
    b.add_argument("--threads", type=POSITIVE, default=bench.threads, help="cores per runtime (default: all)")
    b.add_argument("--warmup", type=COUNT, default=bench.warmup, help="(default: %(default)s)")
    b.add_argument("--repetitions", type=POSITIVE, default=bench.repetitions,
                   help="timed runs per cell and round (default: %(default)s)")
    b.add_argument("--rounds", type=POSITIVE, default=bench.rounds,
                   help="interleaved rounds over all artifacts, order reversed every other round, so that the "
                        "machine's drift does not favour one artifact (default: %(default)s)")
    b.add_argument("--out", type=Path, default=Path("out/bench"), help="report directory")
    b.add_argument("--allow-slower", action="store_true",
                   help="do not fail when a sparse artifact is not faster than dense in DeepSparse")

    v = sub.add_parser("verify", help="re-check an artifact's file hashes and its graphs' parity (exit 1 on mismatch)")
    v.add_argument("artifact", type=Path)
    v.add_argument("--manifest-sha256", metavar="HEX",
                   help="the manifest's sha256 as handed over (printed by `run` and `verify`): fail if it differs, "
                        "which catches a manifest rewritten together with the files it lists")

    r = sub.add_parser("run", help="run a recipe: prune -> evaluate -> export -> benchmark -> report, resumable")
    r.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    r.add_argument("--out", required=True, type=Path, help="run directory (stages are cached there)")

    m = sub.add_parser("models", help="list the named offline models")
    m.add_argument("--materialize", action="store_true", help="build every named model into the cache now "
                   "(dequantize / convert once; the Docker image bakes them in)")
    return parser


def _join_ranks() -> int:
    """This process's rank; under torchrun (WORLD_SIZE > 1) after joining the gloo process group,
    so that the ranks share the calibration (pipeline/sequential.py) and rank 0 writes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank()


def _cmd_prune(args: argparse.Namespace) -> None:
    from pipeline.models import load_model, load_streamed
    from pipeline.owl import OWLConfig
    from pipeline.prune import (
        CalibrationConfig,
        build_record,
        check_sparsity,
        prune_model,
        save_pruned,
    )
    from pipeline.pruners import build_pruner, parse_params

    check_destination(args.out, args.overwrite)
    pruner = build_pruner(args.method, **({"pattern": args.pattern} if args.pattern != "unstructured" else {}),
                          **parse_params(args.param))
    check_sparsity(args.sparsity, pruner)
    owl = OWLConfig(m=args.owl_m, lam=args.owl_lambda) if args.owl else None
    calibration = CalibrationConfig(args.calib_source, args.calib_samples, args.calib_seq_len, args.seed,
                                    image_size=args.calib_image_size)
    rank = _join_ranks()
    loaded = (load_streamed if args.stream else load_model)(args.model)
    result = prune_model(loaded, pruner, args.sparsity, calibration, owl=owl)
    if rank != 0:  # the ranks hold the same weights; one writes
        if loaded.streamed:
            loaded.streamed.close()
        return
    record = build_record(loaded, result)
    save_pruned(loaded, record, args.out, overwrite=args.overwrite)
    achieved = record["achieved"]["blocks_linear"]["sparsity"]
    log.info("wrote %s (blocks' Linear sparsity %.4f, %.1f s)", args.out, achieved, result.timings_s["total_s"])


def _cmd_eval(args: argparse.Namespace) -> None:
    from pipeline.evaluate import perplexity
    from pipeline.models import load_model

    loaded = load_model(args.model)
    result = perplexity(loaded.model, loaded.tokenizer, args.eval_source, args.eval_windows, args.eval_seq_len)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        p = result.protocol
        print(f"perplexity {result.perplexity:.3f}  ({p.source}, {p.windows} x {p.seq_len} tokens)")


def _cmd_demo(args: argparse.Namespace) -> None:
    from pipeline.app.run import DEMO_RECIPE, run_recipe

    report = run_recipe(DEMO_RECIPE, args.out)
    print("\n".join(report["summary"]))


def _cmd_export(args: argparse.Namespace) -> None:
    from export.artifact import export_artifact

    manifest = export_artifact(args.model, args.out, args.overwrite, parity_windows=args.parity_windows,
                               parity_seq_len=args.parity_seq_len, stream=args.stream)
    parity = manifest["parity"]
    ppl = parity.get("perplexity")
    log.info("wrote %s (%s); logits max abs error %s%s", args.out, ", ".join(manifest["flavours"]),
             ", ".join(f"{k} {v['max_abs_error']:.2e}" for k, v in parity.items() if "max_abs_error" in v),
             f"; perplexity torch {ppl['torch']:.3f} vs onnx {ppl['onnx']:.3f}" if ppl else "")


def _cmd_bench(args: argparse.Namespace) -> None:
    from runtime.bench import BenchSettings, bench

    runtimes, flavours = (tuple(r.strip() for r in value.split(",") if r.strip())
                          for value in (args.runtime, args.flavours))
    settings = BenchSettings(seq_len=args.seq_len, past=args.past, batch=args.batch, threads=args.threads,
                             warmup=args.warmup, repetitions=args.repetitions, rounds=args.rounds, runtimes=runtimes,
                             flavours=flavours)
    bench(args.artifacts, settings, args.out, allow_slower=args.allow_slower)
    log.info("report: %s", args.out / "latency.md")


def _cmd_verify(args: argparse.Namespace) -> None:
    from export.verify import verify_artifact

    result = verify_artifact(args.artifact, manifest_sha256=args.manifest_sha256)
    log.info("manifest sha256 %s%s", result.manifest_sha256, " (matches the pinned value)" if args.manifest_sha256
             and result.ok else "")
    for flavour, check in result.parity.items():
        log.info("%s: max abs error %.3g vs stored torch outputs", flavour, check["max_abs_error"])
    if not result.ok:
        raise VerificationFailed("; ".join(result.problems))
    log.info("%s verified: hashes and parity hold", args.artifact)


def _cmd_run(args: argparse.Namespace) -> None:
    from pipeline.app.run import run_recipe

    report = run_recipe(args.recipe, args.out)
    print("\n".join(report["summary"]))


def _cmd_models(args: argparse.Namespace) -> None:
    from pipeline.models import NAMED_MODELS, resolve_model_dir

    for model in NAMED_MODELS.values():
        where = f"  -> {resolve_model_dir(model.name)}" if args.materialize else ""
        print(f"{model.name:14s} {model.description}{where}")


class VerificationFailed(SparseDeployError):
    """An artifact that does not match its manifest (exit status 1, not a usage error)."""


_COMMANDS = {"prune": _cmd_prune, "eval": _cmd_eval, "export": _cmd_export, "bench": _cmd_bench,
             "demo": _cmd_demo, "models": _cmd_models, "verify": _cmd_verify, "run": _cmd_run}


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("transformers", "urllib3", "huggingface_hub", "onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    _COMMANDS[args.command](args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Everything inside the handlers, the parser too: building it imports the pruners (torch),
    # the seconds in which a Ctrl-C is most likely.
    try:
        return _run(argv)
    except VerificationFailed as exc:
        print(f"sparse-deploy: verification failed: {exc}", file=sys.stderr)
        return 1
    except SparseDeployError as exc:
        print(f"sparse-deploy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparse-deploy: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
