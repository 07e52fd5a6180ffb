"""smollm2-135m artifacts in both runtimes: dense vs OWL+Wanda 50% and 70%.

Prunes with the default calibration, exports with parity, then runs ``bench`` on the three
artifacts side by side (``--allow-slower``: on these narrow layers DeepSparse is not
expected to gain, and the report says so). Work files go to ``$SPARSE_DEPLOY_CACHE/smollm2``,
keyed on the code (``benchmarks.cache``).

    python -m benchmarks.latency_smollm2
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from benchmarks.cache import code_keyed, drop_stale, tree_gb
from benchmarks.latency import BenchSettings, bench
from export.artifact import export_artifact
from pipeline.models import DEFAULT_MODEL, cache_dir, load_model
from pipeline.owl import OWLConfig
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner

RESULTS = Path(__file__).parent / "results" / "latency_smollm2"
log = logging.getLogger(__name__)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    work = cache_dir() / "smollm2"
    sources = {"dense": DEFAULT_MODEL}
    for sparsity in (0.5, 0.7):
        name = f"owl-wanda-{int(sparsity * 100)}"
        pruned = code_keyed(work / "pruned" / name)
        if not (pruned / "config.json").is_file():
            drop_stale(pruned)
            loaded = load_model(DEFAULT_MODEL)
            result = prune_model(loaded, build_pruner("wanda"), sparsity, CalibrationConfig(), owl=OWLConfig())
            save_pruned(loaded, build_record(loaded, result), pruned, overwrite=True)
        sources[name] = str(pruned)
    artifacts = []
    for name, source in sources.items():
        art = code_keyed(work / "artifacts" / name)
        if not (art / "manifest.json").is_file():
            drop_stale(art)
            export_artifact(source, art, overwrite=True, parity_windows=8)
        artifacts.append(art)
    bench(artifacts, BenchSettings(), RESULTS, allow_slower=True, labels=list(sources))
    log.info("the work cache %s now holds %.1f GB (`make clean-cache` empties it)", work, tree_gb(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
