"""SparseGPT (Frantar & Alistarh, 2023): prune with Optimal Brain Surgeon updates.

For the layer-wise problem ``min ||W X - W' X||²`` with Hessian ``H = X^T X``, removing
weight ``w_q`` and updating the not-yet-visited weights of its row by
``-w_q / [H^-1]_qq · [H^-1]_q,:`` is optimal. Columns are visited left to right; the
upper Cholesky factor of ``H^-1`` gives every needed row of the successively reduced
inverse Hessians at once. Masks are chosen lazily per block of ``block_size`` columns by
the OBS saliency ``w² / [chol(H^-1)]_qq²``; errors of a finished block are pushed onto the
remaining columns with one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.masks import lowest_k_mask, nm_mask, split_count
from pipeline.pruners.base import WeightPruner
from pipeline.statistics import LayerStatistics, Statistic


def inverse_hessian_cholesky(hessian: torch.Tensor, weight: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped ``H^-1``. Zeroes ``weight``'s columns of dead
    inputs (never non-zero in calibration): they cannot affect the output."""
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    h.diagonal().add_(dampening * torch.diag(h).mean())
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h_inv, upper=True).to(weight.dtype)


@dataclass
class SparseGPTPruner(WeightPruner):
    block_size: int = 128
    dampening: float = 0.01

    name = "sparsegpt"
    statistics = frozenset({Statistic.GRAM})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1:
            raise ValueError("block_size must be positive")
        if not 0 < self.dampening < 1:
            raise ValueError("dampening must lie in (0, 1)")
        if self.pattern.is_nm:  # N:M groups must not straddle two blocks
            self.block_size = max(self.pattern.m, self.block_size // self.pattern.m * self.pattern.m)

    def prune_weight(self, weight: torch.Tensor, stats: LayerStatistics, sparsity: float) -> torch.Tensor:
        w = weight.clone()
        u = inverse_hessian_cholesky(stats.hessian, w, self.dampening)
        d_out, d_in = w.shape
        starts = list(range(0, d_in, self.block_size))
        widths = [min(self.block_size, d_in - s) for s in starts]
        zeros_per_block = split_count(round(sparsity * w.numel()), [d_out * b for b in widths])

        for start, width, n_zero in zip(starts, widths, zeros_per_block):
            end = start + width
            w_blk, u_blk = w[:, start:end], u[start:end, start:end]
            err = torch.zeros_like(w_blk)
            saliency = lambda cols: w_blk[:, cols] ** 2 / torch.diag(u_blk)[cols] ** 2  # noqa: E731
            if self.pattern.is_nm:
                mask = torch.zeros_like(w_blk, dtype=torch.bool)
            else:
                mask = lowest_k_mask(saliency(slice(None)).reshape(1, -1), n_zero).reshape(w_blk.shape)
            for i in range(width):
                if self.pattern.is_nm and i % self.pattern.m == 0:
                    cols = slice(i, i + self.pattern.m)
                    mask[:, cols] = nm_mask(saliency(cols), self.pattern)
                col = w_blk[:, i]
                pruned = col.masked_fill(mask[:, i], 0.0)
                err[:, i] = (col - pruned) / u_blk[i, i]
                w_blk[:, i:] -= err[:, i : i + 1] @ u_blk[i : i + 1, i:]
                w_blk[:, i] = pruned
            w[:, end:] -= err @ u[start:end, end:]
        return w

    def config(self) -> dict:
        return {**super().config(), "block_size": self.block_size, "dampening": self.dampening}
