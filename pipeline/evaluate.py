"""Held-out perplexity of a causal LM.

Non-overlapping windows of a fixed length, each scored independently (no context carried
over), fp32; perplexity is ``exp`` of the mean next-token NLL over all scored tokens.
The protocol (source, windows, length) travels with the number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from pipeline.data import TextProtocol, evaluation_windows
from pipeline.progress import progress

# The evaluation protocol's defaults, for the API, the CLI and recipes alike.
EVAL_SOURCE = "wiki"
EVAL_WINDOWS = 32
EVAL_SEQ_LEN = 512


@dataclass(frozen=True)
class PerplexityResult:
    """``window_nll``: mean NLL of each window, so that two models scored on the same windows
    can be compared pair by pair (a difference's standard error, not just two numbers)."""

    perplexity: float
    mean_nll: float
    tokens: int
    protocol: TextProtocol
    window_nll: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "mean_nll": self.mean_nll, "tokens": self.tokens,
                "protocol": self.protocol.to_dict(), "window_nll": list(self.window_nll)}


@torch.no_grad()
def per_window_nll(model: PreTrainedModel | Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor,
                   batch_size: int = 4) -> torch.Tensor:
    """Summed next-token NLL of each of ``windows`` (float64; ``windows.shape[1] - 1`` tokens
    scored in each). ``model`` is a causal LM or any function from token ids to logits (an ONNX
    session, for parity)."""
    if isinstance(model, PreTrainedModel):
        model.eval()
        lm = model
        model = lambda ids: lm(input_ids=ids, use_cache=False).logits  # noqa: E731
    sums = []
    for batch in progress(windows.split(batch_size), desc="perplexity", unit="batches"):
        logits = model(batch)[:, :-1].float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        sums.append(nll.double().reshape(targets.shape).sum(dim=1))  # float64: float32 loses the digits parity compares
    return torch.cat(sums)


def window_nll(model: PreTrainedModel | Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor,
               batch_size: int = 4) -> tuple[float, int]:
    """Summed next-token NLL over ``windows`` and the number of tokens scored."""
    return float(per_window_nll(model, windows, batch_size).sum()), windows.shape[0] * (windows.shape[1] - 1)


def perplexity(model: PreTrainedModel, tokenizer: Any, source: str = EVAL_SOURCE, windows: int = EVAL_WINDOWS,
               seq_len: int = EVAL_SEQ_LEN, batch_size: int = 4) -> PerplexityResult:
    ids = evaluation_windows(tokenizer, source, windows, seq_len)
    sums = per_window_nll(model, ids, batch_size)
    count = ids.shape[0] * (ids.shape[1] - 1)
    mean = float(sums.sum()) / count
    protocol = TextProtocol(source=source, windows=windows, seq_len=seq_len, sampling="consecutive")
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, tokens=count, protocol=protocol,
                            window_nll=tuple((sums / (ids.shape[1] - 1)).tolist()))
