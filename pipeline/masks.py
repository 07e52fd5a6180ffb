"""Sparsity patterns and the masks that realise them from a score matrix.

Every pruner reduces to "score each weight, drop the lowest". The selection lives here so
that exact counts and valid N:M groups are guaranteed in one place: ties are broken by
``topk``'s index order, never by a threshold, so a layer asked for k zeros gets exactly k.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import torch

from pipeline.errors import SparseDeployError


class Granularity(str, Enum):
    """Over which set of weights the lowest scores are chosen."""

    ROW = "row"  # the same count in every output row (Wanda)
    LAYER = "layer"  # one count for the whole matrix (magnitude)


@dataclass(frozen=True)
class SparsityPattern:
    """Unstructured (``n = m = 0``) or N:M: at most ``n`` non-zeros in every ``m``
    consecutive input weights of a row."""

    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str | None) -> "SparsityPattern":
        if text is None or text in ("", "unstructured"):
            return cls()
        match = re.fullmatch(r"(\d+):(\d+)", text.strip())
        if not match:
            raise SparseDeployError(f"bad sparsity pattern '{text}': expected 'unstructured' or N:M such as 2:4")
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise SparseDeployError(f"bad N:M pattern '{text}': need 0 < N < M")
        return cls(n, m)

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        """The sparsity the N:M pattern implies (undefined for unstructured)."""
        if not self.is_nm:
            raise ValueError("unstructured patterns have no implied sparsity")
        return 1.0 - self.n / self.m

    def check_width(self, d_in: int, layer: str) -> None:
        if self.is_nm and d_in % self.m:
            raise SparseDeployError(f"N:M {self} does not divide the input width {d_in} of layer '{layer}'")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask marking exactly ``k`` lowest entries of each row of ``scores``."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices  # unsorted: ~3x faster
        mask.scatter_(-1, idx, True)
    return mask


def unstructured_mask(scores: torch.Tensor, sparsity: float, granularity: Granularity) -> torch.Tensor:
    """Mask of the weights to zero: ``round(sparsity·count)`` lowest per row or per layer."""
    if granularity is Granularity.ROW:
        return lowest_k_mask(scores, round(sparsity * scores.shape[1]))
    flat = lowest_k_mask(scores.reshape(1, -1), round(sparsity * scores.numel()))
    return flat.reshape(scores.shape)


def nm_mask(scores: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Mask zeroing the ``m - n`` lowest scores of every group of ``m`` columns in each row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    return lowest_k_mask(groups, pattern.m - pattern.n).reshape(rows, cols)


def prune_mask(
    scores: torch.Tensor, sparsity: float, pattern: SparsityPattern, granularity: Granularity = Granularity.ROW
) -> torch.Tensor:
    """Mask of weights to zero for ``pattern`` (N:M ignores ``sparsity`` and ``granularity``)."""
    if pattern.is_nm:
        return nm_mask(scores, pattern)
    return unstructured_mask(scores, sparsity, granularity)


def split_count(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over parts of the given ``sizes`` proportionally, summing exactly to
    ``total`` (cumulative rounding). SparseGPT uses it to keep a layer's zero count exact
    while choosing them block by block."""
    grand = sum(sizes)
    counts, done, seen = [], 0, 0
    for size in sizes:
        seen += size
        upto = round(total * seen / grand)
        counts.append(upto - done)
        done = upto
    return counts
