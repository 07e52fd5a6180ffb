"""What ran a result: package versions and hardware, recorded next to every number."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
from importlib import metadata, util
from pathlib import Path
from typing import Any

_PACKAGES = ("sparse-deploy", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "openvino", "numpy")


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_model() -> str:
    """The CPU's name, with its family and model numbers: a VM may call every EPYC just "AMD
    EPYC", and family 25 (Zen 3 / Zen 4) and 26 (Zen 5) behave very differently here."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def cpu_isa() -> str:
    """The widest SIMD instruction set this CPU reports (machines here differ: Zen 3 has AVX2
    only, Zen 4/5 AVX-512), so that every benchmark says which kernels it could run."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags):
        return "avx512"
    if {"avx2", "fma"} <= set(flags):
        return "avx2"
    return "scalar"


def describe() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": cpu_isa(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
    }


_SOURCE_PATTERNS = ("*.py", "*.cpp", "*.hpp", "CMakeLists.txt")


def source_digest(*packages: str) -> str:
    """A short hash of the sources (paths and contents: Python, and the C++ kernels with their
    CMake file) of ``packages``. Caches of what this code computes are keyed on it, so that a
    changed pruner, exporter or kernel is never answered from a cache its old version filled."""
    digest = hashlib.sha1()
    for package in packages:
        root = Path(util.find_spec(package).origin).parent
        sources = [p for pattern in _SOURCE_PATTERNS for p in root.rglob(pattern) if "build" not in p.relative_to(root).parts]
        for path in sorted(sources):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
