"""Shared fixtures. The Hub is unreachable here: make from_pretrained fail fast offline.

Named models are materialized by the first test that loads one (``resolve_model_dir``, cached
on disk): a pure-math test builds none. The one-time GGUF dequantization logs a heartbeat and
draws no bar off a terminal, so it cannot land in a test's captured stderr."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from pipeline.models import LoadedModel, load_model  # noqa: E402
from pipeline.statistics import LayerStatistics, Statistic  # noqa: E402


@pytest.fixture
def tiny():
    """Load a fresh tiny model by name (pruning mutates it)."""

    def load(name: str) -> LoadedModel:
        return load_model(name)

    return load


def outlier_inputs(tokens: int, d_in: int, seed: int = 0, outliers: int = 4, scale: float = 20.0) -> torch.Tensor:
    """Correlated inputs with a few large-magnitude channels, like LLM activations."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=gen) / d_in**0.5 + torch.eye(d_in)
    x = torch.randn(tokens, d_in, generator=gen) @ mix
    x[:, torch.randperm(d_in, generator=gen)[:outliers]] *= scale
    return x


def stats_of(x: torch.Tensor, gram: bool = True) -> LayerStatistics:
    want = frozenset({Statistic.SECOND_MOMENT, Statistic.GRAM} if gram else {Statistic.SECOND_MOMENT})
    stats = LayerStatistics.empty(x.shape[-1], want, torch.float64)
    stats.add_batch(x)
    return stats


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, stats: LayerStatistics) -> float:
    """mean over tokens of ||(W - W') x||²  =  tr(ΔW H ΔWᵀ)."""
    delta = (weight - pruned).double()
    return float(torch.einsum("oi,ij,oj->", delta, stats.hessian.double(), delta))
