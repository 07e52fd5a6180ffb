"""Running statistics of a Linear layer's inputs, accumulated batch by batch.

Pruners never see activations, only these sums, so calibration memory does not grow with
the number of samples. Three statistics cover every method we implement:

* the per-input-channel second moment ``E[x_j^2]`` (Wanda's ``||X_j||^2`` up to a
  constant, OWL's outlier scores, OATS's scaling ``D``),
* the Gram matrix ``X^T X`` (SparseGPT's and OSSCAR's Hessian of the layer-wise
  reconstruction error), and
* the cross moment ``X^T X_ref`` of these inputs with the *reference* model's inputs to the
  same layer (the model as it entered this pruning pass, run side by side on the same
  tokens): the linear term of a reconstruction that aims at the reference's output rather
  than at this layer's own dense output on already-pruned inputs (OSSCAR's ``fullseq``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class Statistic(str, Enum):
    SECOND_MOMENT = "second_moment"
    GRAM = "gram"
    CROSS = "cross"


@dataclass
class LayerStatistics:
    """Sums over all calibration tokens seen so far by one layer input.

    Sums are kept, not means, so that adding a batch is exact whatever its size; the
    means are derived on demand.
    """

    sq_sum: torch.Tensor
    gram_sum: torch.Tensor | None
    tokens: int = 0
    cross_sum: torch.Tensor | None = None
    cross_tokens: int = 0

    @classmethod
    def empty(cls, d_in: int, want: frozenset[Statistic], gram_dtype: torch.dtype) -> "LayerStatistics":
        def zeros(statistic: Statistic) -> torch.Tensor | None:
            return torch.zeros(d_in, d_in, dtype=gram_dtype) if statistic in want else None

        return cls(sq_sum=torch.zeros(d_in, dtype=torch.float64), gram_sum=zeros(Statistic.GRAM),
                   cross_sum=zeros(Statistic.CROSS))

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        self.sq_sum += x.double().pow(2).sum(dim=0)
        if self.gram_sum is not None:
            xg = x.to(self.gram_sum.dtype)
            self.gram_sum.addmm_(xg.T, xg)
        self.tokens += x.shape[0]

    def add_reference(self, x: torch.Tensor, reference: torch.Tensor) -> None:
        """Pair one batch of this layer's inputs with the reference model's inputs to the
        same layer on the same tokens."""
        if self.cross_sum is None:
            raise ValueError("the cross moment was not requested for this layer")
        x, reference = (t.detach().reshape(-1, t.shape[-1]).to(self.cross_sum.dtype) for t in (x, reference))
        if x.shape != reference.shape:
            raise ValueError(f"inputs {tuple(x.shape)} and reference inputs {tuple(reference.shape)} do not pair up")
        self.cross_sum.addmm_(x.T, reference)
        self.cross_tokens += x.shape[0]

    @property
    def second_moment(self) -> torch.Tensor:
        """``E[x_j^2]`` per input channel, float32."""
        self._require_tokens()
        return (self.sq_sum / self.tokens).float()

    @property
    def hessian(self) -> torch.Tensor:
        """``X^T X / n``: the Hessian of ``½·mean||W x - W' x||²`` w.r.t. each weight row."""
        self._require_tokens()
        if self.gram_sum is None:
            raise ValueError("the Gram matrix was not collected for this layer")
        return self.gram_sum / self.tokens

    @property
    def cross(self) -> torch.Tensor:
        """``X^T X_ref / n``: with it, ``W·X_ref`` (the reference's output) is the target."""
        if self.cross_sum is None or self.cross_tokens == 0:
            raise ValueError("the cross moment with the reference model was not collected for this layer")
        if self.cross_tokens != self.tokens:
            raise ValueError(f"the cross moment saw {self.cross_tokens} tokens, the Gram matrix {self.tokens}")
        return self.cross_sum / self.tokens

    def _require_tokens(self) -> None:
        if self.tokens == 0:
            raise ValueError("no calibration tokens reached this layer")
