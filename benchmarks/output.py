"""Where a benchmark's results go: ``OUT.json`` (everything measured) and ``OUT.md`` (the report
rendered from it), side by side under ``benchmarks/results/``."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.environment import describe

log = logging.getLogger(__name__)


def write_results(out: Path, result: dict[str, Any], markdown: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    log.info("wrote %s.{json,md}", out)


def kernel_sweep_main(out: Path, description: str, rows: tuple[int, ...], settings: Any,
                      measure_rows: Callable[[int, Path], list[dict[str, Any]]],
                      derive: Callable[[list[dict[str, Any]]], None], render: Callable[[dict[str, Any]], str],
                      argv: list[str] | None = None) -> int:
    """The command line of a kernel sweep (one group of cells per number of rows): time
    ``--rows`` (graphs in a temporary directory), or ``--render`` the committed JSON again
    (re-derived, no timing); write ``out``.{json,md}, or ``--out``'s (a second machine's sweep next
    to the committed one, e.g. another ISA)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, nargs="*", default=list(rows))
    parser.add_argument("--render", action="store_true", help="re-derive and re-render the committed JSON, no timing")
    parser.add_argument("--out", type=Path, default=out, help=f"results path without suffix (default {out.name})")
    args = parser.parse_args(argv)
    out = args.out
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.render:
        data = json.loads(out.with_suffix(".json").read_text())
        derive(data["cells"])
    else:
        cells: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.rows:
                cells += measure_rows(n, Path(tmp))
        data = {"measured": time.strftime("%Y-%m-%d %H:%M"), "environment": describe(), "cells": cells,
                "settings": {k: v for k, v in settings.__dict__.items() if k != "runtimes"}}
    write_results(out, data, render(data))
    return 0
