"""What ran a result: package versions and hardware, recorded next to every number."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
from importlib import metadata, util
from pathlib import Path
from typing import Any

_PACKAGES = ("sparse-deploy", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy")


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
    }


def source_digest(*packages: str) -> str:
    """A short hash of the Python sources (paths and contents) of ``packages``. Caches of what
    this code computes are keyed on it, so that a changed pruner or exporter is never answered
    from a cache its old version filled."""
    digest = hashlib.sha1()
    for package in packages:
        root = Path(util.find_spec(package).origin).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
