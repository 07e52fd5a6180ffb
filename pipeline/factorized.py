"""Layers stored as a sparse matrix plus a low-rank product (what OATS produces).

``SparseLowRankLinear`` computes ``y = x·Sᵀ + (x·Vᵀ)·Uᵀ + b`` with three plain Linear
modules, so the exported graph holds three MatMuls: one whose weight keeps S's zeros (the
sparse kernels' case) and two thin dense ones. Re-densifying ``S + U·V`` would throw the
sparsity away.

A model holding such layers records their ranks in its config
(``config.sparse_deploy_factorized``); :func:`restore_factorized` rebuilds the modules from
that record before the saved weights are loaded, so a pruned directory saves and reloads
through the usual ``save_pretrained`` / :func:`pipeline.models.load_model`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

CONFIG_KEY = "sparse_deploy_factorized"


class SparseLowRankLinear(nn.Module):
    """``x ↦ sparse(x) + up(down(x))``: sparse ``d_out x d_in`` (with the bias),
    ``down`` = V (``rank x d_in``), ``up`` = U (``d_out x rank``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.sparse = nn.Linear(in_features, out_features, bias=bias)
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    @classmethod
    def from_factors(cls, sparse: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor | None) -> "SparseLowRankLinear":
        module = cls(sparse.shape[1], sparse.shape[0], u.shape[1], bias is not None)
        with torch.no_grad():
            module.sparse.weight.copy_(sparse)
            module.down.weight.copy_(v)
            module.up.weight.copy_(u)
            if bias is not None:
                module.sparse.bias.copy_(bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse(x) + self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        """``S + U·V``: the weight this layer stands for (for checks, never for serving)."""
        return self.sparse.weight + self.up.weight @ self.down.weight

    def stored_nonzeros(self) -> int:
        """Non-zeros actually stored: S's plus both factors' (zeros of a block-diagonal U
        for fused projections are not counted, as they need not be stored)."""
        return sum(int(torch.count_nonzero(m.weight)) for m in (self.sparse, self.down, self.up))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` under ``root``."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def factorized_ranks(model: nn.Module) -> dict[str, int]:
    """Qualified name -> rank of every :class:`SparseLowRankLinear` in ``model``."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, SparseLowRankLinear)}


def factor_roles(model: nn.Module) -> dict[str, dict[str, object]]:
    """Parameter name -> what it is inside a factorized layer (for the export manifest)."""
    roles: dict[str, dict[str, object]] = {}
    for name, m in model.named_modules():
        if isinstance(m, SparseLowRankLinear):
            roles[f"{name}.sparse.weight"] = {"role": "sparse term", "layer": name}
            roles[f"{name}.down.weight"] = {"role": "low-rank factor V", "layer": name, "rank": m.rank}
            roles[f"{name}.up.weight"] = {"role": "low-rank factor U", "layer": name, "rank": m.rank}
    return roles


def record_factorized(model: PreTrainedModel) -> None:
    """Write the factorized layers' ranks into the config, so that they save with it."""
    ranks = factorized_ranks(model)
    if ranks:
        setattr(model.config, CONFIG_KEY, ranks)


def restore_factorized(model: PreTrainedModel, ranks: dict[str, int]) -> None:
    """Replace the Linear layers named in ``ranks`` by empty factorized layers of those ranks
    (the weights are loaded afterwards)."""
    for name, rank in ranks.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"'{name}' is recorded as factorized but the model holds a {type(linear).__name__}")
        replace_module(model, name, SparseLowRankLinear(linear.in_features, linear.out_features, rank,
                                                        linear.bias is not None))
