"""k-NN probe of a vision backbone: how well its features separate classes, without training.

DINOv2's protocol: the class token of the final (normed) hidden state, L2-normalised; each
test image votes over its ``k`` most cosine-similar training images with weights
``exp(similarity / T)`` (k = 20, T = 0.07). A pruned backbone is judged on features it
computes for both the training and the test images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pipeline.images import pixel_batches
from pipeline.progress import progress


@dataclass
class KNNResult:
    """``correct``: one character per test image, ``1`` where the vote was right, so that two
    backbones scored on the same images can be compared image by image (paired)."""

    top1: float
    k: int
    temperature: float
    train: int
    test: int
    image_size: int
    correct: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def features(model: torch.nn.Module, images: np.ndarray, size: int, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised class-token features, ``[N, hidden]``."""
    out = []
    for batch in progress(pixel_batches(images, size, batch_size), desc="features", unit="batches"):
        out.append(model(**batch).last_hidden_state[:, 0])
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int, temperature: float,
                classes: int) -> torch.Tensor:
    """Weighted vote of the ``k`` nearest training features (cosine) for each test feature."""
    similarity, index = (test @ train.T).topk(k, dim=-1)
    votes = torch.zeros(test.shape[0], classes)
    votes.scatter_add_(1, train_labels[index], (similarity / temperature).exp())
    return votes.argmax(dim=-1)


def knn_accuracy(model: torch.nn.Module, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                 test_labels: np.ndarray, size: int, k: int = 20, temperature: float = 0.07) -> KNNResult:
    train = features(model, train_images, size)
    test = features(model, test_images, size)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    predicted = knn_predict(train, torch.from_numpy(train_labels), test, k, temperature, classes)
    hits = predicted == torch.from_numpy(test_labels)
    return KNNResult(float(hits.float().mean()), k, temperature, len(train_labels), len(test_labels), size,
                     "".join("1" if h else "0" for h in hits.tolist()))
