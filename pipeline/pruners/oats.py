"""OATS (Zhang & Papyan, ICLR 2025): each weight becomes sparse plus low rank, ``W ≈ (S + L)·D⁻¹``.

``D = diag(sqrt(E[x_j²]))`` scales each input channel by its typical size (Wanda's
statistic), so the Frobenius error on ``W·D`` weighs weights by how much they move the
output; outlier channels are kept accurately. ``S + L ≈ W·D`` is found by alternating
minimisation (robust-PCA style): ``L`` = best rank-r approximation of ``W·D - S``, then
``S`` = the largest entries of ``W·D - L``. Each step minimises ``||W·D - S - L||_F`` over one
factor with the other fixed, so the objective never increases.

Budget: compression ρ keeps ``(1-ρ)·d_out·d_in`` parameters; a share κ of them goes to the
low-rank term, ``r = floor(κ·(1-ρ)·d_out·d_in / (d_out + d_in))``, the rest to S's non-zeros.

The official code takes a full SVD of every layer at every one of 80 iterations (on a GPU).
The default solver here is a warm-started randomized subspace iteration: one product with
``A = W·D - S`` refreshes the previous iteration's right singular subspace, and the best
rank-r approximation inside that subspace is taken. Since the previous ``L``'s row space
lies in that subspace, the step never does worse than keeping the previous ``L``: the
objective stays monotone while each iteration costs O(d_out·d_in·r) instead of a full SVD
(``benchmarks/oats_solver.py`` compares it with the full SVD on real layers).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import torch
from transformers import PreTrainedModel

from pipeline.architectures import ArchitectureSpec
from pipeline.factorized import SparseLowRankLinear, record_factorized, replace_module
from pipeline.masks import Granularity, prune_mask
from pipeline.pruners.base import PatternedPruner
from pipeline.sequential import BlockContext
from pipeline.statistics import Statistic

log = logging.getLogger(__name__)


class LowRankSolver(str, Enum):
    SUBSPACE = "subspace"  # warm-started randomized subspace iteration (fast)
    SVD = "svd"  # full SVD at every iteration, as the official code (reference)


@dataclass(frozen=True)
class Budget:
    """Per layer: the low-rank term's rank and the share of zeros in the sparse term."""

    rank: int
    sparse_sparsity: float


def budget(d_out: int, d_in: int, compression: float, rank_ratio: float) -> Budget:
    density = 1.0 - compression
    rank = math.floor(rank_ratio * density * d_out * d_in / (d_out + d_in))
    return Budget(rank=rank, sparse_sparsity=1.0 - (1.0 - rank_ratio) * density)


@dataclass
class Decomposition:
    """``target ≈ sparse + u @ v``; ``objective[i]`` is ``||target - sparse - u v||_F`` after
    iteration i."""

    sparse: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    objective: list[float] = field(default_factory=list)


def _truncate(left: torch.Tensor, s: torch.Tensor, vt: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    return left[:, :rank] * s[:rank], vt[:rank]


def _full_svd(a: torch.Tensor, rank: int, _basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, None]:
    left, s, vt = torch.linalg.svd(a, full_matrices=False)
    return *_truncate(left, s, vt, rank), None


def _subspace_svd(a: torch.Tensor, rank: int, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` approximation of ``a`` within ``span(a @ basis)``; also returns the
    refreshed right basis for the next call."""
    y, _ = torch.linalg.qr(a @ basis)
    left, s, vt = torch.linalg.svd(y.T @ a, full_matrices=False)
    u, v = _truncate(y @ left, s, vt, rank)
    return u, v, vt.T


def _initial_basis(a: torch.Tensor, width: int, generator: torch.Generator, power_iterations: int = 2) -> torch.Tensor:
    """A right basis close to ``a``'s top singular subspace (Halko et al.'s range finder)."""
    q = torch.randn(a.shape[1], width, generator=generator, dtype=a.dtype)
    for _ in range(power_iterations):
        q, _ = torch.linalg.qr(a.T @ torch.linalg.qr(a @ q)[0])
    return q


def decompose(target: torch.Tensor, rank: int, zeros: Callable[[torch.Tensor], torch.Tensor], iterations: int,
              solver: LowRankSolver = LowRankSolver.SUBSPACE, oversample: int = 8, seed: int = 0) -> Decomposition:
    """Alternating thresholding: ``L = rank-r part of (target - S)``, ``S = target - L`` with
    the entries chosen by ``zeros(target - L)`` set to zero. ``S`` starts at zero."""
    sparse = torch.zeros_like(target)
    u = target.new_zeros(target.shape[0], rank)
    v = target.new_zeros(rank, target.shape[1])
    width = min(rank + oversample, *target.shape)
    use_full = solver is LowRankSolver.SVD or width == min(target.shape)
    step = _full_svd if use_full else _subspace_svd
    basis = None if use_full else _initial_basis(target, width, torch.Generator().manual_seed(seed))
    objective = []
    for _ in range(iterations):
        if rank > 0:
            u, v, basis = step(target - sparse, rank, basis)
        residual = target - u @ v
        sparse = residual.masked_fill(zeros(residual), 0.0)
        objective.append(float(torch.linalg.matrix_norm(residual - sparse)))
    return Decomposition(sparse, u, v, objective)


@dataclass
class OATSPruner(PatternedPruner):
    """``rank_ratio`` κ: share of the kept parameters given to the low-rank term.
    ``granularity``: zeros of S chosen per output row (the official code) or per layer (the
    paper's algorithm). ``pattern``: N:M for S (then the compression follows from it and κ,
    as in the official code). ``per_projection_factors``: a fused layer (Phi-3) keeps one
    factor pair per projection (no zeros stored); off, the pairs are stacked into one (U
    block-diagonal, stored dense): two larger MatMuls instead of two per projection and a
    Concat, for runtimes where fewer nodes pay more than the wasted work costs."""

    rank_ratio: float = 0.25
    iterations: int = 80
    granularity: Granularity = Granularity.ROW
    solver: LowRankSolver = LowRankSolver.SUBSPACE
    oversample: int = 8
    per_projection_factors: bool = True

    name = "oats"
    statistics = frozenset({Statistic.SECOND_MOMENT})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.granularity = Granularity(self.granularity)
        self.solver = LowRankSolver(self.solver)
        if not 0 <= self.rank_ratio < 1:
            raise ValueError(f"rank_ratio must lie in [0, 1), got {self.rank_ratio}")
        if self.iterations < 1 or self.oversample < 0:
            raise ValueError("iterations must be >= 1 and oversample >= 0")
        if self.pattern.is_nm and self.implied_sparsity() < 0:
            raise ValueError(f"N:M {self.pattern} keeps more than 1 - rank_ratio of the weights: nothing is left "
                             "for the low-rank term")

    def implied_sparsity(self) -> float | None:
        return 1 - (1 - self.pattern.sparsity) / (1 - self.rank_ratio) if self.pattern.is_nm else None

    def _zeros(self, sparsity: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda residual: prune_mask(residual.abs(), sparsity, self.pattern, self.granularity)

    def decompose_weight(self, weight: torch.Tensor, second_moment: torch.Tensor, compression: float,
                         rows: list[int] | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """``S`` and one ``(U, V)`` per projection, ``weight ≈ S + [U₁·V₁; U₂·V₂; ...]`` in
        the original (unscaled) coordinates. Fused projections (``rows``) get one budget each."""
        scale = second_moment.sqrt()
        inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))  # dead inputs: weights zeroed
        sparses, factors = [], []
        for part in weight.split(rows or [weight.shape[0]]):
            b = budget(*part.shape, compression, self.rank_ratio)
            sparsity = self.pattern.sparsity if self.pattern.is_nm else b.sparse_sparsity
            d = decompose(part * scale, b.rank, self._zeros(sparsity), self.iterations, self.solver, self.oversample)
            sparses.append(d.sparse * inverse)
            factors.append((d.u, d.v * inverse))
            log.debug("OATS %s rank %d: objective %.4g -> %.4g", list(part.shape), b.rank, d.objective[0],
                      d.objective[-1])
        return torch.cat(sparses), factors

    def prune_block(self, ctx: BlockContext, sparsity: float) -> None:
        """Replace each Linear by its :class:`SparseLowRankLinear` (rank 0: just prune it)."""
        for name, layer in ctx.layers.items():
            sparse, factors = self.decompose_weight(layer.weight.detach().float(), ctx.stats[name].second_moment,
                                                    sparsity, ctx.fused_rows.get(name))
            if all(u.shape[1] == 0 for u, _ in factors):
                layer.weight.data.copy_(sparse.to(layer.weight.dtype))
                continue
            if not self.per_projection_factors and len(factors) > 1:
                factors = [(torch.block_diag(*(u for u, _ in factors)), torch.cat([v for _, v in factors]))]
            bias = None if layer.bias is None else layer.bias.detach()
            module = SparseLowRankLinear.from_factors(sparse, factors, bias)
            replace_module(ctx.block, name, module.to(layer.weight.dtype))

    def finalize(self, model: PreTrainedModel, spec: ArchitectureSpec) -> None:
        record_factorized(model)  # the factor shapes, rebuilt before the weights load

    def config(self) -> dict:
        return {**super().config(), "rank_ratio": self.rank_ratio, "iterations": self.iterations,
                "granularity": self.granularity.value, "solver": self.solver.value,
                "oversample": self.oversample, "per_projection_factors": self.per_projection_factors}
