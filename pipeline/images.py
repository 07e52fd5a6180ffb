"""Images for vision models: Fashion-MNIST from the Debian package, as ``pixel_values`` batches.

Fashion-MNIST (60k train / 10k test, 28 x 28 grey, 10 classes) ships in the Debian package
``dataset-fashion-mnist`` as IDX files under ``/usr/share/datasets/fashion-mnist``
(``$FASHION_MNIST_DIR`` overrides). It serves two purposes: calibration images for pruning
vision backbones, and the k-NN quality probe (:mod:`pipeline.knn`). Images are upsampled to
the model's input size, repeated to three channels and normalised with ImageNet statistics,
as DINOv2 and ViT expect.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import SparseDeployError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dataset_dir() -> Path:
    return Path(os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: magic with the rank in its last byte, then the dims)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=rank, offset=4).astype(int)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int [N]


def fashion_mnist(split: str, count: int | None = None, seed: int = 0) -> ImageSet:
    """``count`` images of ``split`` drawn without replacement with ``seed`` (all when None)."""
    if split not in FILES:
        raise SparseDeployError(f"unknown Fashion-MNIST split '{split}'; choose train or test")
    root = dataset_dir()
    paths = [root / name for name in FILES[split]]
    if not all(p.is_file() for p in paths):
        raise SparseDeployError(f"Fashion-MNIST not found in {root}: install the Debian package "
                                "dataset-fashion-mnist (`make install-datasets`) or set FASHION_MNIST_DIR")
    images, labels = (_read_idx(p) for p in paths)
    if count is not None:
        if count > len(labels):
            raise SparseDeployError(f"asked for {count} {split} images; Fashion-MNIST has {len(labels)}")
        pick = np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
        images, labels = images[pick], labels[pick]
    return ImageSet(images, labels.astype(np.int64))


def pixel_values(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 grey ``[N, H, W]`` -> normalised float ``[N, 3, size, size]``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pixel_batches(images: np.ndarray, size: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Model inputs in batches of ``batch_size`` (converted lazily would save memory; a few
    thousand images at 224 px fit easily)."""
    return [{"pixel_values": pixel_values(images[i:i + batch_size], size)}
            for i in range(0, len(images), batch_size)]
