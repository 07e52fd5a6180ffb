"""Layers stored as a sparse matrix plus a low-rank product (what OATS produces).

``SparseLowRankLinear`` computes ``y = x·Sᵀ + (x·Vᵀ)·Uᵀ + b`` with plain Linear modules, so
the exported graph holds one MatMul whose weight keeps S's zeros (the sparse kernels' case)
and thin dense ones for the factors. Re-densifying ``S + U·V`` would throw the sparsity away.

A fused layer (Phi-3's qkv_proj / gate_up_proj) holds one projection per block of output rows,
and OATS gives each its own budget and factors. Stacked, U would be block-diagonal: mostly
zeros stored and multiplied densely. So each projection keeps its own pair ``(Vᵢ, Uᵢ)`` and
the low-rank outputs are concatenated: ``y = x·Sᵀ + [x·V₁ᵀ·U₁ᵀ, x·V₂ᵀ·U₂ᵀ, ...] + b``. A
projection whose budget rounds to rank 0 has no pair of its own: its rows join a neighbour's
U as zero rows (a zero-width factor would be an empty initializer in the exported graph).

A model holding such layers records their factor shapes in its config
(``config.sparse_deploy_factorized``: a rank per layer, or ``[rows, rank]`` per projection of
a fused one); :func:`restore_factorized` rebuilds the modules from that record before the
saved weights are loaded, so a pruned directory saves and reloads through the usual
``save_pretrained`` / :func:`pipeline.models.load_model`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

CONFIG_KEY = "sparse_deploy_factorized"

Parts = tuple[tuple[int, int], ...]  # (output rows, rank) per projection


class SparseLowRankLinear(nn.Module):
    """``x ↦ sparse(x) + up(down(x))``: sparse ``d_out x d_in`` (with the bias), ``down`` =
    V (``rank x d_in``), ``up`` = U (``d_out x rank``). With several ``parts`` (a fused
    layer), ``down`` and ``up`` are lists with one factor pair per projection, whose outputs
    are concatenated."""

    decomposes_one_layer: ClassVar[bool] = True  # its Linear parts are not prunable on their own

    def __init__(self, in_features: int, out_features: int, parts: int | Sequence[Sequence[int]], bias: bool):
        super().__init__()
        self.parts: Parts = ((out_features, parts),) if isinstance(parts, int) else tuple(
            (int(rows), int(rank)) for rows, rank in parts)
        if sum(rows for rows, _ in self.parts) != out_features:
            raise ValueError(f"the parts' rows {self.parts} do not add up to {out_features} outputs")
        self.in_features, self.out_features = in_features, out_features
        self.rank = sum(rank for _, rank in self.parts)
        self.sparse = nn.Linear(in_features, out_features, bias=bias)
        if len(self.parts) == 1:
            self.down = nn.Linear(in_features, self.rank, bias=False)
            self.up = nn.Linear(self.rank, out_features, bias=False)
        else:
            self.down = nn.ModuleList(nn.Linear(in_features, rank, bias=False) for _, rank in self.parts)
            self.up = nn.ModuleList(nn.Linear(rank, rows, bias=False) for rows, rank in self.parts)

    @classmethod
    def from_factors(cls, sparse: torch.Tensor, factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     bias: torch.Tensor | None) -> "SparseLowRankLinear":
        """From ``S`` and one ``(U, V)`` per projection (a single pair for a plain layer)."""
        factors = _absorb_rank_zero(factors)
        module = cls(sparse.shape[1], sparse.shape[0], [u.shape for u, _ in factors], bias is not None)
        with torch.no_grad():
            module.sparse.weight.copy_(sparse)
            for (down, up), (u, v) in zip(module.factor_pairs(), factors):
                down.weight.copy_(v)
                up.weight.copy_(u)
            if bias is not None:
                module.sparse.bias.copy_(bias)
        return module

    def factor_pairs(self) -> Iterator[tuple[nn.Linear, nn.Linear]]:
        """``(down, up)`` per projection."""
        if len(self.parts) == 1:
            return iter([(self.down, self.up)])
        return zip(self.down, self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = [up(down(x)) for down, up in self.factor_pairs()]
        return self.sparse(x) + (low[0] if len(low) == 1 else torch.cat(low, dim=-1))

    def dense_weight(self) -> torch.Tensor:
        """``S + U·V``: the weight this layer stands for (for checks, never for serving)."""
        return self.sparse.weight + torch.cat([up.weight @ down.weight for down, up in self.factor_pairs()])

    def stored_nonzeros(self) -> int:
        """Non-zeros actually stored: S's plus every factor's."""
        factors = [m.weight for pair in self.factor_pairs() for m in pair]
        return sum(int(torch.count_nonzero(w)) for w in [self.sparse.weight, *factors])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, parts={list(self.parts)}"


def _absorb_rank_zero(factors: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(U, V)`` pairs with every rank-0 projection's rows moved into the U of the previous
    pair (of the next one, before the first pair with a rank) as zero rows; unchanged when no
    pair has a rank."""
    merged: list[tuple[torch.Tensor, torch.Tensor]] = []
    waiting = 0  # zero rows for the next pair with a rank
    for u, v in factors:
        if u.shape[1] == 0 and merged:
            last_u, last_v = merged[-1]
            merged[-1] = (torch.cat([last_u, last_u.new_zeros(u.shape[0], last_u.shape[1])]), last_v)
        elif u.shape[1] == 0:
            waiting += u.shape[0]
        else:
            merged.append((torch.cat([u.new_zeros(waiting, u.shape[1]), u]), v))
            waiting = 0
    return merged or list(factors)


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` under ``root``."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def factorized_layers(block: nn.Module) -> dict[str, SparseLowRankLinear]:
    """The sparse + low-rank layers of one block, by name relative to the block."""
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, SparseLowRankLinear)}


def factorized_ranks(model: nn.Module) -> dict[str, int | list[list[int]]]:
    """Qualified name -> rank (or ``[rows, rank]`` per projection of a fused layer) of every
    :class:`SparseLowRankLinear` in ``model``: what :func:`restore_factorized` needs."""
    return {name: m.parts[0][1] if len(m.parts) == 1 else [list(p) for p in m.parts]
            for name, m in model.named_modules() if isinstance(m, SparseLowRankLinear)}


def factor_roles(model: nn.Module) -> dict[str, dict[str, object]]:
    """Parameter name -> what it is inside a factorized layer (for the export manifest)."""
    roles: dict[str, dict[str, object]] = {}
    for name, m in model.named_modules():
        if not isinstance(m, SparseLowRankLinear):
            continue
        roles[f"{name}.sparse.weight"] = {"role": "sparse term", "layer": name}
        for i, (rows, rank) in enumerate(m.parts):
            where = {} if len(m.parts) == 1 else {"projection": i, "rows": rows}
            suffix = "" if len(m.parts) == 1 else f".{i}"
            roles[f"{name}.down{suffix}.weight"] = {"role": "low-rank factor V", "layer": name, "rank": rank, **where}
            roles[f"{name}.up{suffix}.weight"] = {"role": "low-rank factor U", "layer": name, "rank": rank, **where}
    return roles


def record_factorized(model: PreTrainedModel) -> None:
    """Write the factorized layers' ranks into the config, so that they save with it."""
    ranks = factorized_ranks(model)
    if ranks:
        setattr(model.config, CONFIG_KEY, ranks)


def restore_factorized(model: PreTrainedModel, ranks: dict[str, int | list[list[int]]]) -> None:
    """Replace the Linear layers named in ``ranks`` by empty factorized layers of those ranks
    (the weights are loaded afterwards)."""
    for name, rank in ranks.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"'{name}' is recorded as factorized but the model holds a {type(linear).__name__}")
        replace_module(model, name, SparseLowRankLinear(linear.in_features, linear.out_features, rank,
                                                        linear.bias is not None))
