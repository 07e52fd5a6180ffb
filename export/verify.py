"""``sparse-deploy verify ART``: is this artifact still what its manifest says?

Checks, all from the artifact alone (no torch model): the manifest's own sha256 against a
value pinned by whoever handed the artifact over (``--manifest-sha256``); every file listed in
the manifest exists inside the artifact with its sha256, and no file was added; every graph
reproduces the torch outputs stored at export (``parity/<flavour>.npz``) within the
manifest's tolerance in ONNX Runtime. Without the pin, a tamperer who rewrites a file *and*
its hash in the manifest passes: the pin is what ties the artifact to its hand-off
(SECURITY.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.artifact import MANIFEST, PARITY_DIR, UNHASHED, read_manifest, sha256
from export.parity import Reference, Tolerance, check_reference
from pipeline.errors import SparseDeployError, first_line

log = logging.getLogger(__name__)


@dataclass
class Verification:
    manifest_sha256: str = ""
    problems: list[str] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it stays inside ``root`` (symlinks resolved), else None: a manifest must
    not make verify read ``../../etc/hostname``."""
    path = (root / rel).resolve()
    return path if path.is_relative_to(root.resolve()) and not Path(rel).is_absolute() else None


def _check_files(artifact: Path, listed: Any, result: Verification) -> None:
    if not isinstance(listed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in listed.items()):
        result.problems.append("manifest 'files' is not a mapping of relative paths to sha256 digests")
        return
    for rel, digest in listed.items():
        path = _inside(artifact, rel)
        if path is None:
            result.problems.append(f"manifest lists a path outside the artifact: {rel!r} (not read)")
        elif not path.is_file():
            result.problems.append(f"missing file {rel}")
        elif sha256(path) != digest:
            result.problems.append(f"sha256 mismatch: {rel}")
    present = {str(p.relative_to(artifact)) for p in artifact.rglob("*") if p.is_file()} - set(UNHASHED)
    result.problems += [f"unlisted file {rel}" for rel in sorted(present - listed.keys())]


def _check_parity(artifact: Path, manifest: dict[str, Any], result: Verification) -> None:
    try:
        tolerance = Tolerance(**manifest["parity"]["tolerance"])
        flavours = {name: info["file"] for name, info in manifest["flavours"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        result.problems.append(f"manifest lacks its parity tolerance or flavours ({first_line(exc)}): "
                               "the graphs cannot be checked")
        return
    for flavour, rel in flavours.items():
        reference_path, graph = artifact / PARITY_DIR / f"{flavour}.npz", _inside(artifact, str(rel))
        if graph is None or not reference_path.is_file() or not graph.is_file():
            result.problems.append(f"{flavour}: graph or stored torch outputs missing")
            continue
        try:
            check = check_reference(graph, Reference.load(reference_path), tolerance)
        except Exception as exc:  # a corrupt graph must become a finding, not a traceback
            result.problems.append(f"{flavour}: ONNX Runtime could not run the graph ({first_line(exc)})")
            continue
        result.parity[flavour] = check
        if not check["passed"]:
            result.problems.append(f"{flavour}: outputs differ from the stored torch outputs "
                                   f"(max abs error {check['max_abs_error']:.3g})")


def verify_artifact(artifact: Path, manifest_sha256: str | None = None) -> Verification:
    """Every check above; problems are collected, not raised, so one run reports all of them.
    A directory that is no artifact at all, or a bad pin, is a usage error instead."""
    if manifest_sha256 is not None and (len(manifest_sha256) != 64 or
                                        any(c not in "0123456789abcdef" for c in manifest_sha256.lower())):
        raise SparseDeployError(f"--manifest-sha256 expects 64 hex digits, got {manifest_sha256!r}")
    manifest = read_manifest(artifact)
    result = Verification(manifest_sha256=sha256(artifact / MANIFEST))
    if manifest_sha256 is not None and manifest_sha256.lower() != result.manifest_sha256:
        result.problems.append(f"{MANIFEST} sha256 {result.manifest_sha256} differs from the pinned "
                               f"{manifest_sha256.lower()}: this is not the manifest that was handed over")
    _check_files(artifact, manifest.get("files"), result)
    _check_parity(artifact, manifest, result)
    return result
