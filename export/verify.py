"""``sparse-deploy verify ART``: is this artifact still what its manifest says?

Three checks, all from the artifact alone (no torch model): every file listed in the
manifest exists with its sha256, no file was added, and every graph reproduces the torch
outputs stored at export (``parity/<flavour>.npz``) within the manifest's tolerance in
ONNX Runtime. A serving team runs it after copying an artifact around.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.artifact import MANIFEST, PARITY_DIR, sha256
from export.parity import Reference, Tolerance, check_reference
from pipeline.errors import SparseDeployError

log = logging.getLogger(__name__)


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_artifact(artifact: Path) -> Verification:
    manifest_path = artifact / MANIFEST
    if not manifest_path.is_file():
        raise SparseDeployError(f"'{artifact}' is not an artifact (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    result = Verification()
    listed = manifest.get("files", {})
    for rel, digest in listed.items():
        path = artifact / rel
        if not path.is_file():
            result.problems.append(f"missing file {rel}")
        elif sha256(path) != digest:
            result.problems.append(f"sha256 mismatch: {rel}")
    present = {str(p.relative_to(artifact)) for p in artifact.rglob("*") if p.is_file()} - {MANIFEST}
    result.problems += [f"unlisted file {rel}" for rel in sorted(present - listed.keys())]
    tolerance = Tolerance(**{k: v for k, v in manifest["parity"]["tolerance"].items()})
    for flavour, info in manifest["flavours"].items():
        reference_path = artifact / PARITY_DIR / f"{flavour}.npz"
        graph = artifact / info["file"]
        if not reference_path.is_file() or not graph.is_file():
            continue  # already reported as missing
        try:
            check = check_reference(graph, Reference.load(reference_path), tolerance)
        except Exception as exc:  # a corrupt graph must become a finding, not a traceback
            result.problems.append(f"{flavour}: ONNX Runtime could not run the graph ({str(exc).splitlines()[0]})")
            continue
        result.parity[flavour] = check
        if not check["passed"]:
            result.problems.append(f"{flavour}: outputs differ from the stored torch outputs "
                                   f"(max abs error {check['max_abs_error']:.3g})")
    return result
