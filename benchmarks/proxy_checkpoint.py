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
    .venv/bin/python -m benchmarks.proxy_checkpoint --proxy phi3-mini          # 32 blocks
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import zlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from benchmarks.proxies import PROXIES
from pipeline.atomic import atomic_directory, check_directory_path
from pipeline.errors import SparseDeployError
from pipeline.models import cache_dir
from pipeline.progress import progress
from pipeline.shards import INDEX, SHARD_BYTES, ShardWriter, expected_shapes

log = logging.getLogger(__name__)

DISK_MARGIN = 1.02  # free space wanted over the tensors' bytes (headers, config, index)


def draw(name: str, shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    """One tensor, from its own generator: the same for the same (seed, name) wherever drawn."""
    if name.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) == 1:  # norm weights
        return torch.ones(shape)
    # CPU generators keep 32 bits of a seed (mt19937), so both go into one 32-bit hash.
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
    return torch.randn(shape, generator=generator) * std


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
    shapes = expected_shapes(config, AutoModelForCausalLM)
    total = sum(4 * math.prod(shape) for shape in shapes.values())
    check_disk(out, total)
    std = float(getattr(config, "initializer_range", 0.02))
    log.info("writing %d tensors (%.1f GB) to %s", len(shapes), total / 1e9, out)
    with atomic_directory(out, overwrite=True) as tmp:
        config.save_pretrained(tmp)
        writer = ShardWriter(tmp, shard_bytes, metadata={"seed": seed})
        for name, shape in progress(shapes.items(), desc="tensors", unit="tensor"):
            writer.add(name, draw(name, shape, seed, std))
        writer.close()
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
