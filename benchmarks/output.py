"""Where a benchmark's results go: ``OUT.json`` (everything measured) and ``OUT.md`` (the report
rendered from it), side by side under ``benchmarks/results/``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_results(out: Path, result: dict[str, Any], markdown: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    log.info("wrote %s.{json,md}", out)
