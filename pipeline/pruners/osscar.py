"""OSSCAR (Meng et al., ICML 2024): structured removal by combinatorial local search.

For each block's MLP (neurons) and attention (heads / KV groups), the consumer layer's
reconstruction problem is solved by :class:`GroupSelector` (below): greedy
OBS removal ``step`` units at a time, then local search swapping ``swap`` units, then the
exact least-squares refit of the kept columns. The shared structured base slices the chosen
units out of the producers and the consumer. Defaults are the official code's: ridge 1e-2,
10 neurons / 2 heads removed per greedy step, 30 local-search iterations swapping 10 neurons
/ 5 heads. ``search="exact"`` replaces the official batch swaps by single swaps scored exactly
(every pair, best first) until none improves: a true single-swap local optimum, used to
measure how much a local search can still gain over greedy (on smollm2-135m it took less time
than the batch search, and found almost nothing either).

Both consumers are solved with the statistics of one calibration pass through the block (as
SparseGPT treats all of a block's layers): the MLP's inputs are those of the block before
its heads were removed.

``target`` says what a consumer's refit reconstructs: ``"pruned"`` (default, the official
code's default) its own dense weight's output on the inputs it now gets from the already
pruned blocks; ``"dense"`` (the official ``--fullseq``) the output the unpruned model gives
on its own inputs, which the engine then runs side by side (one more block forward per batch).
On smollm2-135m the dense target is clearly worse in every setting measured
(benchmarks/results/quality_osscar_smollm2.md), hence not the default.

## The layer problem: which groups of input channels a layer keeps, and its refitted weight

For a consumer layer (MLP down projection: input channels = neurons; attention output
projection: channels grouped by head) with dense weight ``W0`` (``d_out x d_in``) and input
Gram matrix ``H = XᵀX``, OSSCAR (Meng et al., ICML 2024) solves

    min_W  ½·tr(W H Wᵀ) - tr(W H W0ᵀ)   s.t. at most k groups of W's columns are non-zero,

with ``H = H₀ + λ·mean(diag H₀)·I`` (ridge) in both terms, as the official code and the paper
write it: up to a constant this is ``½·||X(W - W0)ᵀ||² + ½·λ'·||W - W0||²``, so the ridge pulls
the refit towards the dense weight (with every group kept the refit *is* W0), not towards zero.
For a fixed support S the optimum is the least-squares refit ``W_S = (H W0ᵀ)_Sᵀ (H_SS)⁻¹``, so
the problem is the choice of S. Given the cross moment ``C = XᵀX_ref`` with a reference
model's inputs (the official code's ``fullseq``), the linear term becomes ``tr(W (C + λ'I) W0ᵀ)``:
the target is then the reference's output ``X_ref W0ᵀ``, so the refit also corrects what earlier
pruned blocks changed in this layer's inputs.

The choice of S:

* greedy backward removal (OBS): removing group g from the current optimum costs
  ``½·tr(W_g [(H⁻¹)_gg]⁻¹ W_gᵀ)``; remove the ``step`` cheapest, update W and downdate H⁻¹
  with the matching low-rank formulas, repeat;
* local search, ``batch`` (the official code's): remove ``swap`` more groups the same way, add
  back the ``swap`` removed groups whose return gains most (Schur complement of H_SS), re-solve,
  keep the swap only when the objective improved (else halve the swap size). Removal costs and
  return gains are each scored against the current support, not against each other, so a
  batch is a guess that the re-solve then checks;
* local search, ``exact``: the exact objective change of *every* single swap (one kept group
  out, one removed group in) from block-inverse updates, best one taken while any improves, so
  it stops at a true single-swap local optimum (used to measure how much room greedy leaves).
  Either search never increases the objective.

Units may come in equal *buckets* that each keep the same number (query heads within their KV
group: every group must keep as many query heads as the others for the model to stay a valid
GQA model). Greedy then skips a group whose bucket is at its quota, and a swap puts back into
each bucket what it took out; with one bucket (the default) nothing is constrained.

Where the choice is small enough to enumerate (``EXACT_LIMIT`` supports, e.g. keeping 2 of 3 KV
groups), ``select`` also records the exact optimum, so a report can tell a local search that
found nothing from one that had nothing left to find.

Everything runs in float64 on the transposed weight ``Wᵀ`` (``d_in x d_out``), whose rows
are the input channels.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

import torch

from pipeline.pruners.structured import Choice, StructuredPruner, Units
from pipeline.statistics import LayerStatistics, Statistic

log = logging.getLogger(__name__)

EXACT_LIMIT = 64  # supports enumerated (one refit each) to report the exact optimum
SEARCHES = ("batch", "exact")


def _diagonal_blocks(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k x k`` blocks on the diagonal of a square matrix, stacked (one per group)."""
    n = matrix.shape[0] // k
    return matrix.reshape(n, k, n, k).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


@dataclass
class Selection:
    """The kept groups (bool per group), the refitted weight (``d_out x d_in``, removed
    columns zero), the objective after greedy removal and after each accepted swap, and the
    floor: the objective with every group kept, and the exact optimum where the supports were
    few enough to enumerate. ``objective - floor`` is the reconstruction error the removal
    costs (the objective itself is offset by a constant)."""

    kept: torch.Tensor
    weight: torch.Tensor
    objective: float
    history: list[float] = field(default_factory=list)
    floor: float = 0.0
    optimum: float | None = None

    def excess(self) -> dict[str, float]:
        """Reconstruction error after greedy removal, after local search and (where known) at
        the exact optimum, and the swaps accepted."""
        excess = {"greedy": self.history[0] - self.floor, "final": self.objective - self.floor,
                  "swaps": len(self.history) - 1}
        if self.optimum is not None:
            excess["optimum"] = self.optimum - self.floor
        return excess


class GroupSelector:
    """One consumer layer's statistics; ``select`` solves for a number of kept groups."""

    def __init__(self, weight: torch.Tensor, gram: torch.Tensor, group_size: int, ridge: float = 1e-2,
                 bucket: int | None = None, cross: torch.Tensor | None = None):
        d_out, d_in = weight.shape
        if group_size < 1 or d_in % group_size:
            raise ValueError(f"group size {group_size} does not divide the input width {d_in}")
        self.group_size, self.groups = group_size, d_in // group_size
        self.bucket = self.groups if bucket is None else bucket  # consecutive groups that keep the same count
        if self.bucket < 1 or self.groups % self.bucket:
            raise ValueError(f"bucket size {self.bucket} does not divide the {self.groups} groups")
        h0 = gram.to(torch.float64)
        ridge_term = ridge * torch.diag(h0).mean() * torch.eye(d_in, dtype=torch.float64)
        self.h = h0 + ridge_term
        target = self.h if cross is None else cross.to(torch.float64) + ridge_term
        self.g = target @ weight.to(torch.float64).T  # d_in x d_out: the target's correlation
        self.dtype = weight.dtype

    # -- bookkeeping over groups --------------------------------------------------------
    def _channels(self, groups: torch.Tensor) -> torch.Tensor:
        """Input channel indices of the given group indices."""
        return (groups[:, None] * self.group_size + torch.arange(self.group_size)).reshape(-1)

    def _support(self, kept: torch.Tensor) -> torch.Tensor:
        return self._channels(kept.nonzero().squeeze(1))

    def _per_bucket(self, kept: torch.Tensor) -> torch.Tensor:
        """Kept groups in each bucket."""
        return kept.reshape(-1, self.bucket).sum(dim=1)

    def _cheapest(self, score: torch.Tensor, candidates: torch.Tensor, room: torch.Tensor, count: int) -> torch.Tensor:
        """The ``count`` lowest-``score`` candidate groups, taking at most ``room[b]`` from bucket b."""
        room = room.clone()
        chosen = []
        for g in torch.argsort(score).tolist():
            if len(chosen) == count:
                break
            if candidates[g] and room[g // self.bucket] > 0:
                chosen.append(g)
                room[g // self.bucket] -= 1
        return torch.tensor(chosen, dtype=torch.long)

    def refit(self, kept: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The optimal ``Wᵀ`` on the kept groups and its objective."""
        s = self._support(kept)
        wt = torch.zeros_like(self.g)
        wt[s] = torch.linalg.solve(self.h[s][:, s], self.g[s])
        return wt, self.objective(wt)

    def objective(self, wt: torch.Tensor) -> float:
        return float(0.5 * (wt * (self.h @ wt)).sum() - (wt * self.g).sum())

    def exact_optimum(self, keep: int) -> float | None:
        """The best objective over every support of ``keep`` groups per bucket, or None when
        there are more than ``EXACT_LIMIT`` of them."""
        buckets = self.groups // self.bucket
        if math.comb(self.bucket, keep) ** buckets > EXACT_LIMIT:
            return None
        best = math.inf
        per_bucket = [[[b * self.bucket + i for i in c] for c in itertools.combinations(range(self.bucket), keep)]
                      for b in range(buckets)]
        for choice in itertools.product(*per_bucket):
            kept = torch.zeros(self.groups, dtype=torch.bool)
            kept[[g for groups in choice for g in groups]] = True
            best = min(best, self.refit(kept)[1])
        return best

    # -- greedy backward removal (OBS with H⁻¹ downdates) -------------------------------
    def _removal_costs(self, wt: torch.Tensor, h_inv: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        k = self.group_size
        blocks = _diagonal_blocks(h_inv, k)
        alive = kept.nonzero().squeeze(1)
        w = wt.reshape(self.groups, k, -1)[alive]
        cost = torch.full((self.groups,), torch.inf, dtype=torch.float64)
        # batched inverse: fast for tiny blocks
        cost[alive] = 0.5 * (w * (torch.linalg.inv(blocks[alive]) @ w)).sum(dim=(1, 2))
        return cost

    def _remove(self, wt: torch.Tensor, h_inv: torch.Tensor, kept: torch.Tensor, count: int, floor: int) -> None:
        """Remove the ``count`` cheapest kept groups, leaving at least ``floor`` in each bucket;
        updates ``wt`` and ``h_inv`` in place."""
        room = self._per_bucket(kept) - floor
        groups = self._cheapest(self._removal_costs(wt, h_inv, kept), kept, room, count)
        u = self._channels(groups)
        inv_uu = torch.linalg.inv(h_inv[u][:, u])
        wt -= h_inv[:, u] @ (inv_uu @ wt[u])
        h_inv -= h_inv[:, u] @ inv_uu @ h_inv[u]
        wt[u], h_inv[u], h_inv[:, u] = 0.0, 0.0, 0.0
        kept[groups] = False

    def _inverse_on(self, kept: torch.Tensor) -> torch.Tensor:
        s = self._support(kept)
        h_inv = torch.zeros_like(self.h)
        h_inv[s.unsqueeze(1), s] = torch.linalg.inv(self.h[s][:, s])
        return h_inv

    def greedy(self, keep: int, step: int, kept: torch.Tensor | None = None) -> torch.Tensor:
        """Remove groups ``step`` at a time until at most ``keep`` remain in each bucket (from
        ``kept``, default all)."""
        kept = torch.ones(self.groups, dtype=torch.bool) if kept is None else kept.clone()
        h_inv = self._inverse_on(kept)
        wt = h_inv @ self.g
        while (excess := int((self._per_bucket(kept) - keep).clamp(min=0).sum())) > 0:
            self._remove(wt, h_inv, kept, min(step, excess), keep)
        return kept

    # -- local search ------------------------------------------------------------------
    def _return_gains(self, kept: torch.Tensor) -> torch.Tensor:
        """For each removed group j: the objective decrease of adding it back to the
        current support S, ``½·rⱼᵀ Cⱼ⁻¹ rⱼ`` with ``rⱼ = G_j - H_jS H_SS⁻¹ G_S`` and
        ``Cⱼ = H_jj - H_jS H_SS⁻¹ H_Sj`` (Schur complement)."""
        s = self._support(kept)
        h_ss_inv = torch.linalg.inv(self.h[s][:, s])
        h_s = self.h[s]  # |S| x d_in
        residual = self.g - h_s.T @ (h_ss_inv @ self.g[s])
        schur = self.h - h_s.T @ h_ss_inv @ h_s
        k = self.group_size
        gains = torch.full((self.groups,), -torch.inf, dtype=torch.float64)
        removed = (~kept).nonzero().squeeze(1)
        if len(removed):
            blocks = _diagonal_blocks(schur, k)[removed]
            r = residual.reshape(self.groups, k, -1)[removed]
            gains[removed] = 0.5 * (r * (torch.linalg.inv(blocks) @ r)).sum(dim=(1, 2))
        return gains

    def _swap(self, kept: torch.Tensor, swap: int) -> torch.Tensor:
        """``swap`` groups out (the cheapest to remove, in one OBS step) and as many back in
        (the largest return gains), each bucket getting back what it lost."""
        quota = self._per_bucket(kept)
        h_inv = self._inverse_on(kept)
        trial = kept.clone()
        self._remove(h_inv @ self.g, h_inv, trial, swap, 0)
        back = self._cheapest(-self._return_gains(trial), ~trial, quota - self._per_bucket(trial), swap)
        trial[back] = True
        return trial

    def local_search(self, kept: torch.Tensor, iterations: int, swap: int) -> tuple[torch.Tensor, list[float]]:
        """Up to ``iterations`` swaps of ``swap`` groups out and back in, each accepted only
        when it lowers the objective. A rejected swap halves the swap size (the official
        code's ``switch_lb`` < 1 variant); the search ends when a single-group swap fails."""
        best = kept.clone()
        _, best_obj = self.refit(best)
        history = [best_obj]
        swap = min(swap, int(best.sum()), int((~best).sum()))
        for _ in range(iterations):
            if swap < 1:
                break
            trial = self._swap(best, swap)
            _, obj = self.refit(trial)
            if obj < best_obj - 1e-12 * max(1.0, abs(best_obj)):
                best, best_obj = trial, obj
                history.append(obj)
            else:
                swap //= 2
        return best, history

    def swap_deltas(self, kept: torch.Tensor) -> torch.Tensor:
        """Exact objective change of every single swap: entry (i, j) for kept group i out and
        removed group j in (``inf`` for pairs that are not such or cross buckets).

        Adding j to S (``T = S ∪ {j}``) lowers the objective by its return gain; removing i from T
        then costs the OBS removal cost under T, whose ``W_T`` and ``(H_TT⁻¹)_ii`` follow from S's by
        the block inverse: with ``A = H_SS⁻¹ H_Sj``, ``C = H_jj - H_jS A`` and ``r = G_j - H_jS W_S``,
        ``W_T,i = W_i - A_i C⁻¹ r`` and ``(H_TT⁻¹)_ii = (H_SS⁻¹)_ii + A_i C⁻¹ A_iᵀ``. One inverse of H_SS
        scores all pairs."""
        k, d_out = self.group_size, self.g.shape[1]
        kept_groups, out_groups = kept.nonzero().squeeze(1), (~kept).nonzero().squeeze(1)
        deltas = torch.full((self.groups, self.groups), torch.inf, dtype=torch.float64)
        if not len(out_groups):
            return deltas
        s, j = self._channels(kept_groups), self._channels(out_groups)
        n_s, n_j = len(kept_groups), len(out_groups)
        p = torch.linalg.inv(self.h[s][:, s])
        w = p @ self.g[s]
        b = self.h[s][:, j]
        a = p @ b
        h_jj = _diagonal_blocks(self.h[j][:, j], k)
        c_inv = torch.linalg.inv(h_jj - torch.einsum("pjk,pjl->jkl", b.reshape(-1, n_j, k), a.reshape(-1, n_j, k)))
        r = (self.g[j] - b.T @ w).reshape(n_j, k, d_out)
        gain = 0.5 * torch.einsum("jkd,jkl,jld->j", r, c_inv, r)
        w = w.reshape(n_s, k, d_out)
        a4 = a.reshape(n_s, k, n_j, k).permute(0, 2, 1, 3)  # (i, j) -> the k x k block A_ij
        x = a4 @ c_inv  # A_ij C_j⁻¹
        wr = torch.einsum("ikd,jld->ijkl", w, r)
        q = (torch.einsum("ikd,ild->ikl", w, w)[:, None] - x @ wr.transpose(-1, -2) - wr @ x.transpose(-1, -2)
             + x @ torch.einsum("jkd,jld->jkl", r, r)[None] @ x.transpose(-1, -2))  # W_T,i W_T,iᵀ
        p_ii = _diagonal_blocks(p, k)
        cost = 0.5 * torch.linalg.solve(p_ii[:, None] + x @ a4.transpose(-1, -2), q).diagonal(dim1=-2, dim2=-1).sum(-1)
        pairs = cost - gain[None, :]
        same_bucket = (kept_groups[:, None] // self.bucket) == (out_groups[None, :] // self.bucket)
        deltas[kept_groups[:, None], out_groups[None, :]] = torch.where(same_bucket, pairs, torch.inf)
        return deltas

    def exact_search(self, kept: torch.Tensor, iterations: int) -> tuple[torch.Tensor, list[float]]:
        """Up to ``iterations`` single swaps, each the best of all (exact deltas), while one lowers
        the objective."""
        best = kept.clone()
        history = [self.refit(best)[1]]
        for _ in range(iterations):
            deltas = self.swap_deltas(best)
            pick = int(torch.argmin(deltas))
            if not float(deltas.view(-1)[pick]) < -1e-12 * max(1.0, abs(history[-1])):
                break
            best[pick // self.groups], best[pick % self.groups] = False, True
            history.append(self.refit(best)[1])
        return best, history

    def select(self, keep: int, step: int, iterations: int = 0, swap: int = 0, search: str = "batch") -> Selection:
        """Greedy removal to ``keep`` groups per bucket, then up to ``iterations`` of local search
        (``batch`` swapping ``swap`` groups, or ``exact`` single swaps)."""
        if not 0 < keep <= self.bucket:
            raise ValueError(f"keep must lie in [1, {self.bucket}] groups per bucket, got {keep}")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got '{search}'")
        kept = self.greedy(keep, step)
        history = [self.refit(kept)[1]]
        if iterations > 0 and search == "exact":
            kept, history = self.exact_search(kept, iterations)
        elif iterations > 0 and swap > 0:
            kept, history = self.local_search(kept, iterations, swap)
        wt, obj = self.refit(kept)
        log.debug("kept %d/%d groups, objective %.6g (%d accepted swaps)", int(kept.sum()), self.groups, obj,
                  len(history) - 1)
        floor = self.refit(torch.ones_like(kept))[1]
        return Selection(kept, wt.T.to(self.dtype).contiguous(), obj, history, floor, self.exact_optimum(keep))


TARGETS = ("pruned", "dense")


@dataclass
class OSSCARPruner(StructuredPruner):
    ridge: float = 1e-2
    mlp_step: int = 10
    head_step: int = 2
    iterations: int = 30
    mlp_swap: int = 10
    head_swap: int = 5
    target: str = "pruned"
    search: str = "batch"

    name = "osscar"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got '{self.target}'")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got '{self.search}'")
        if self.ridge < 0 or min(self.mlp_step, self.head_step) < 1:
            raise ValueError("ridge must be >= 0 and the greedy steps >= 1")
        if self.iterations < 0 or min(self.mlp_swap, self.head_swap) < 0:
            raise ValueError("iterations and swap sizes must be >= 0 (0 iterations: greedy only)")

    @property
    def statistics(self) -> frozenset[Statistic]:  # type: ignore[override]
        return frozenset({Statistic.GRAM, Statistic.CROSS} if self.target == "dense" else {Statistic.GRAM})

    def choose(self, weight: torch.Tensor, stats: LayerStatistics, units: Units, kind: str) -> Choice:
        cross = stats.cross if self.target == "dense" else None
        selector = GroupSelector(weight, stats.hessian, units.size, self.ridge, units.bucket, cross)
        step, swap = (self.mlp_step, self.mlp_swap) if kind == "mlp" else (self.head_step, self.head_swap)
        selection = selector.select(units.keep, step, self.iterations, swap, self.search)
        return Choice(selection.kept.nonzero().squeeze(1), selection.weight, selection.excess())

    def config(self) -> dict:
        return {**super().config(), "ridge": self.ridge, "mlp_step": self.mlp_step,
                "head_step": self.head_step, "iterations": self.iterations, "mlp_swap": self.mlp_swap,
                "head_swap": self.head_swap, "target": self.target,
                "search": self.search}
