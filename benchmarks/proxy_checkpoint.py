"""Full-depth proxy checkpoints: a published model's configuration with random weights, written
as sharded safetensors tensor by tensor.

A full-depth LLaMA-7B in fp32 is ~27 GB, more than this machine's memory, so it cannot be built
with ``from_config`` and saved as :func:`benchmarks.proxies.build_proxy` does for a few blocks.
Here the model exists only on the meta device (names and shapes, no storage); each tensor is
drawn from its own generator, seeded from the seed and the tensor's name, so a checkpoint is
the same bytes on every machine and any one tensor can be regenerated alone. At most one shard
is in memory at a time. Scale: Linear and embedding weights N(0, initializer_range) (0.02 for
LLaMA, transformers' own initialization and about a trained LLaMA's spread), norm weights 1,
biases 0. Quality is meaningless on it; memory and latency are what it is for.

The directory (config.json, ``model.safetensors.index.json`` and the shards) is what
``from_pretrained`` and the Hub's sharded checkpoints look like, written atomically under the
cache (``make clean-cache`` removes it):

    .venv/bin/python -m benchmarks.proxy_checkpoint --proxy llama7b            # 32 blocks, ~27 GB
    .venv/bin/python -m benchmarks.proxy_checkpoint --proxy phi3-mini          # 32 blocks, ~15 GB
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PretrainedConfig

from benchmarks.proxies import PROXIES
from pipeline.atomic import atomic_directory, check_directory_path
from pipeline.errors import SparseDeployError
from pipeline.models import cache_dir
from pipeline.progress import progress

log = logging.getLogger(__name__)

SHARD_BYTES = 2 << 30  # bytes per shard: the most this writer holds in memory at once
DISK_MARGIN = 1.02  # free space wanted over the tensors' bytes (headers, config, index)
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return 4 * int(torch.Size(self.shape).numel())


def tensor_specs(config: PretrainedConfig) -> list[TensorSpec]:
    """Every tensor ``from_pretrained`` reads for ``config``, from a model on the meta device (no
    storage); a tied head is not stored (it is the embedding)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return [TensorSpec(name, tuple(t.shape)) for name, t in model.state_dict().items()
            if not (config.tie_word_embeddings and name in set(getattr(model, "_tied_weights_keys", None) or []))]


def draw(spec: TensorSpec, seed: int, std: float) -> torch.Tensor:
    """One tensor, from its own generator: the same for the same (seed, name) wherever drawn."""
    if spec.name.endswith("bias"):
        return torch.zeros(spec.shape)
    if len(spec.shape) == 1:  # norm weights
        return torch.ones(spec.shape)
    # CPU generators keep 32 bits of a seed (mt19937), so both go into one 32-bit hash.
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{spec.name}".encode()))
    return torch.randn(spec.shape, generator=generator) * std


def plan_shards(specs: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Tensors in model order, cut into shards of at most ``shard_bytes`` (a larger tensor alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def check_disk(out: Path, needed: int) -> None:
    """One line before anything is drawn when the checkpoint cannot fit where it goes."""
    parent = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if free < needed * DISK_MARGIN:
        raise SparseDeployError(f"the checkpoint needs {needed * DISK_MARGIN / 1e9:.1f} GB of disk, "
                                f"{free / 1e9:.1f} GB free under {parent}")


def write_checkpoint(config: PretrainedConfig, out: Path, seed: int = 0, shard_bytes: int = SHARD_BYTES) -> Path:
    """``config`` with random weights as sharded safetensors in ``out`` (atomic: complete or absent)."""
    check_directory_path(out)
    specs = tensor_specs(config)
    total = sum(s.nbytes for s in specs)
    check_disk(out, total)
    shards = plan_shards(specs, shard_bytes)
    std = float(getattr(config, "initializer_range", 0.02))
    log.info("writing %d tensors (%.1f GB) in %d shards to %s", len(specs), total / 1e9, len(shards), out)
    weight_map: dict[str, str] = {}
    with atomic_directory(out, overwrite=True) as tmp:
        config.save_pretrained(tmp)
        for i, shard in enumerate(progress(shards, desc="shards", unit="shard")):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({s.name: draw(s, seed, std) for s in shard}, str(tmp / name), metadata={"format": "pt"})
            weight_map |= {s.name: name for s in shard}
        (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total, "seed": seed},
                                             "weight_map": weight_map}, indent=2) + "\n")
    return out


def proxy_checkpoint(name: str, blocks: int | None = None, seed: int = 0) -> Path:
    """The proxy ``name`` at ``blocks`` decoder blocks (default: the real depth), cached."""
    make_config, depth = PROXIES[name]
    blocks = depth if blocks is None else blocks
    out = cache_dir() / "proxies" / f"{name}-{blocks}blocks-sharded-seed{seed}"
    if not (out / INDEX).is_file():
        write_checkpoint(make_config(blocks), out, seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proxy", choices=sorted(PROXIES), default="llama7b")
    parser.add_argument("--blocks", type=int, help="decoder blocks (default: the real model's depth)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        out = proxy_checkpoint(args.proxy, args.blocks, args.seed)
    except SparseDeployError as exc:
        log.error("%s", exc)
        return 1
    log.info("checkpoint at %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
