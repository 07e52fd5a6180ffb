"""A newcomer's first run, timed: a fresh clone of this checkout, empty sparse-deploy caches,
``make install`` then ``make demo``, both outside a terminal (as in CI or ``docker run``
without ``-t``). Writes ``benchmarks/results/first_run.{json,md}``.

    python -m benchmarks.first_run            # ~15 minutes on 2 cores

pip's own wheel cache is not emptied (the packages come from the registries or local wheel
directories either way); the sparse-deploy cache (materialized models, traced graphs) is.
The Docker image cannot be built here (no Docker engine): ``image_rehearsal_ok`` is the outcome
of the offline rehearsal (``sudo python3 scripts/rehearse_image.py``, its own results file
``image_rehearsal.json``), false when none has been run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.output import write_results
from pipeline.environment import describe

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "first_run"
REHEARSAL = ROOT / "benchmarks" / "results" / "image_rehearsal.json"
TARGET_S = 600  # the goal for install + demo
COMMAND = "python -m benchmarks.first_run"

log = logging.getLogger(__name__)


def _timed(step: str, command: list[str], cwd: Path, env: dict[str, str], log_file: Path) -> float:
    log.info("%s: %s (log: %s)", step, " ".join(command), log_file)
    start = time.perf_counter()
    with open(log_file, "w") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{step} failed (exit {done.returncode}); see {log_file}")
    return seconds


def _summary(demo_log: Path) -> list[str]:
    """The demo's closing lines (where things are, quality, latency, manifest)."""
    lines = demo_log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("artifact: ")), len(lines))
    return lines[start:]


def _stage_seconds(stages: Path) -> dict[str, float]:
    """Seconds per stage of the demo run (each stage records its own in stage.json)."""
    return {p.parent.name: round(json.loads(p.read_text())["seconds"], 1) for p in sorted(stages.glob("*/stage.json"))}


def _rehearsal() -> dict:
    """The latest image rehearsal's outcome (``scripts/rehearse_image.py``), or none."""
    if not REHEARSAL.is_file():
        return {"ok": False, "why": "no rehearsal run (sudo python3 scripts/rehearse_image.py)"}
    found = json.loads(REHEARSAL.read_text())
    return {k: found.get(k) for k in ("ok", "error", "commit", "measured", "total_s")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone and its logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="sparse-deploy-first-run-"))
    clone, cache = work / "clone", work / "cache"
    env = {**os.environ, "SPARSE_DEPLOY_CACHE": str(cache)}
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
        install_s = _timed("install", ["make", "install"], clone, env, work / "install.log")
        demo_s = _timed("demo", ["make", "demo"], clone, env, work / "demo.log")
        summary = _summary(work / "demo.log")
        stages = _stage_seconds(clone / "out" / "demo" / "stages")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"install_s": round(install_s, 1), "demo_s": round(demo_s, 1), "total_s": round(install_s + demo_s, 1),
              "target_s": TARGET_S, "hardware": describe(), "measured": time.strftime("%Y-%m-%d %H:%M"),
              "commit": commit, "command": COMMAND, "demo_stages_s": stages, "demo_summary": summary}
    rehearsal = _rehearsal()
    result.update({"image_rehearsal_ok": bool(rehearsal["ok"]), "image_rehearsal": rehearsal})
    env_ = result["hardware"]
    markdown = "\n".join([
        "# First run: fresh clone, empty caches, `make install` + `make demo`", "",
        f"Measured {result['measured']} on {env_['cpu']}, {env_['cores']} cores ({env_.get('isa')}), commit "
        f"`{commit[:10]}`, by `{COMMAND}` (outside a terminal).", "",
        "| step | seconds |", "|---|---|",
        f"| make install | {install_s:.0f} |", f"| make demo | {demo_s:.0f} |",
        f"| total | {install_s + demo_s:.0f} (target {TARGET_S}) |", "",
        "The demo's stages (seconds; the rest of `make demo` is loading, the report and the hand-off):", "",
        "| stage | seconds |", "|---|---|", *(f"| {name} | {s:.0f} |" for name, s in stages.items()), "",
        "The demo's closing lines:", "", "```", *summary, "```", "",
        f"Docker image: no Docker engine here; offline rehearsal ({REHEARSAL.name}): "
        + (f"passed ({rehearsal['measured']}, commit `{str(rehearsal['commit'])[:10]}`)" if rehearsal["ok"]
           else f"not passed ({rehearsal.get('error') or rehearsal.get('why')})") + ".", ""])
    write_results(RESULTS, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
