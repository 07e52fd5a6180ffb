"""Sharded safetensors checkpoints, read and written tensor by tensor.

A 7B model's weights come as shards listed by ``model.safetensors.index.json`` (the Hub's
layout and ``save_pretrained``'s). Reading: :class:`Checkpoint` finds every tensor's file from
the index (or the single ``model.safetensors``) and reads one tensor at a time, memory-mapped,
so nothing forces the whole model into memory; before any weight is read it can say, in one
line, that a listed shard is missing or that a tensor's shape is not the configuration's
(``from_pretrained`` would fail deep inside, or after gigabytes of reading). Writing:
:class:`ShardWriter` cuts tensors into shards of a bounded size as they come and writes the
index last, so a directory with an index is complete (written inside an atomic directory, a
failure leaves nothing that looks like a checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig

from pipeline.architectures import tied_weight_names
from pipeline.errors import SparseDeployError, first_line

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
SHARD_BYTES = 2 << 30  # bytes per written shard: the most a writer holds in memory at once


class Checkpoint:
    """The safetensors weights of one model directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.files = self._files()

    def _files(self) -> dict[str, Path]:
        index = self.directory / INDEX
        if not index.is_file():
            return {name: path for path in sorted(self.directory.glob("*.safetensors")) for name in _keys(path)}
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SparseDeployError(f"{index} is not a safetensors index ({first_line(exc)})") from None
        files = {name: self.directory / shard for name, shard in weight_map.items()}
        missing = sorted({p.name for p in files.values() if not p.is_file()})
        if missing:
            raise SparseDeployError(f"checkpoint {self.directory}: {len(missing)} shard(s) listed in {INDEX} are "
                                    f"missing ({', '.join(missing[:3])})")
        return files

    @property
    def sharded(self) -> bool:
        return (self.directory / INDEX).is_file()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, from the shards' headers (no data read)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for path in sorted(set(self.files.values())):
            with _open(path) as f:
                shapes |= {name: tuple(f.get_slice(name).get_shape()) for name in f.keys() if self.files.get(name) == path}
        return shapes

    def check(self, expected: dict[str, tuple[int, ...]]) -> None:
        """One line for the first disagreement with the tensors a model needs: a tensor listed
        but absent from its shard, one the model needs that no shard has, or a shape that is
        not the configuration's."""
        shapes = self.shapes()
        absent = sorted(set(self.files) - set(shapes))
        if absent:
            raise SparseDeployError(f"checkpoint {self.directory}: {absent[0]} is listed in {INDEX} but not in "
                                    f"{self.files[absent[0]].name}")
        lacking = sorted(set(expected) - set(shapes))
        if lacking:
            raise SparseDeployError(f"checkpoint {self.directory} lacks {len(lacking)} tensor(s) the configuration "
                                    f"needs ({', '.join(lacking[:3])})")
        for name, shape in expected.items():
            if shapes[name] != shape:
                raise SparseDeployError(f"checkpoint {self.directory}: {name} is {list(shapes[name])} in "
                                        f"{self.files[name].name}, the configuration needs {list(shape)}")

    def tensor(self, name: str) -> torch.Tensor:
        with _open(self.files[name]) as f:
            return f.get_tensor(name)


def _open(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt")
    except (OSError, SafetensorError) as exc:
        raise SparseDeployError(f"cannot read {path} ({first_line(exc)})") from None


def _keys(path: Path) -> list[str]:
    with _open(path) as f:
        return list(f.keys())


def expected_shapes(config: PretrainedConfig, auto_class: Any) -> dict[str, tuple[int, ...]]:
    """The tensors ``from_pretrained`` reads for ``config`` and their shapes, from the model built
    on the meta device (no storage); a tied head is not stored (it is the embedding)."""
    with torch.device("meta"):
        model = auto_class.from_config(config, dtype=torch.float32)
    tied = tied_weight_names(model)
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}


class ShardWriter:
    """Tensors written as they come, in shards of at most ``shard_bytes`` (a larger tensor alone),
    then the index (``close``), in ``directory``."""

    def __init__(self, directory: Path, shard_bytes: int = SHARD_BYTES, metadata: dict[str, Any] | None = None) -> None:
        self.directory, self.shard_bytes, self.metadata = Path(directory), shard_bytes, metadata or {}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[str, list[str]]] = []  # (temporary file name, its tensors)
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        name = f"part-{len(self._written) + 1:05d}.safetensors"
        save_file(self._pending, str(self.directory / name), metadata={"format": "pt"})
        self._written.append((name, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write what is pending, name the shards as ``save_pretrained`` does, write the index."""
        if self._pending:
            self._flush()
        weight_map: dict[str, str] = {}
        for i, (temporary, names) in enumerate(self._written):
            final = f"model-{i + 1:05d}-of-{len(self._written):05d}.safetensors"
            (self.directory / temporary).rename(self.directory / final)
            weight_map |= {name: final for name in names}
        (self.directory / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": self.total_bytes, **self.metadata}, "weight_map": weight_map}, indent=2) + "\n")
        return sorted(set(weight_map.values()))
