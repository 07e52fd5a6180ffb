"""Calibration and evaluation text, offline.

Named sources are the texts the PyPI package ``exllamav2`` ships
(``conversion/standard_cal_data/*.utf8``): ``c4`` (C4-style web text) calibrates, ``wiki``
(Wikipedia, ``<doc>`` tags stripped) is held out for perplexity. Any ``.txt``/``.utf8``
file or a ``.jsonl`` with a ``text`` field works too. These are not WikiText-2: our
perplexities compare with each other, not with published WikiText-2 numbers.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import SparseDeployError, first_line

PACKAGED_TEXTS = ("c4", "wiki", "code", "tiny", "technical", "multilingual")
_DOC_TAG = re.compile(r"^</?doc[^>]*>\s*$", re.MULTILINE)


def packaged_text_path(name: str) -> Path:
    try:
        dist = metadata.distribution("exllamav2")
    except metadata.PackageNotFoundError:
        raise SparseDeployError("the packaged texts need the PyPI package 'exllamav2' (run `make install`)") from None
    return Path(dist.locate_file(f"exllamav2/conversion/standard_cal_data/{name}.utf8"))


def text_source_path(source: str) -> Path:
    """The file behind a text source, checked to exist (recipes call it before any stage)."""
    path = packaged_text_path(source) if source in PACKAGED_TEXTS else Path(source)
    if not path.is_file():
        raise SparseDeployError(
            f"text source '{source}' is neither a packaged text ({', '.join(PACKAGED_TEXTS)}) nor a file"
        )
    return path


def _jsonl_texts(path: Path, raw: str) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SparseDeployError(f"{path}, line {number}: not a JSON object with a 'text' field "
                                    f"({first_line(exc, 80)})") from None
        if not isinstance(text, str):
            raise SparseDeployError(f"{path}, line {number}: 'text' must be a string, got {type(text).__name__}")
        texts.append(text)
    return texts


def read_text(source: str) -> str:
    """The text of a named packaged source or of a file (UTF-8 plain text or JSONL)."""
    path = text_source_path(source)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SparseDeployError(f"text source {path} is not UTF-8 text (byte {exc.start}): pass a .txt or .jsonl "
                                "file") from None
    except OSError as exc:
        raise SparseDeployError(f"cannot read text source {path} ({exc.strerror or first_line(exc)})") from None
    if path.suffix == ".jsonl":
        raw = "\n\n".join(_jsonl_texts(path, raw))
    return _DOC_TAG.sub("", raw)


@dataclass(frozen=True)
class TextProtocol:
    """How token windows were drawn: recorded next to every number computed from them."""

    source: str
    windows: int
    seq_len: int
    sampling: str  # "random" (seeded offsets) or "consecutive" (non-overlapping from the start)
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def calibration_samples(tokenizer: Any, source: str, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` tokens at seeded random offsets (SparseGPT's
    scheme), shape ``(samples, seq_len)``."""
    if samples < 1 or seq_len < 2:
        raise SparseDeployError(f"calibration needs samples >= 1 and seq_len >= 2, got {samples} x {seq_len}")
    ids = _tokenize(tokenizer, read_text(source))
    if len(ids) < seq_len + 1:
        raise SparseDeployError(
            f"calibration text '{source}' is too short: {len(ids)} tokens, need more than seq_len={seq_len}"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (samples,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def check_windows(windows: int, seq_len: int, what: str = "evaluation") -> None:
    """A perplexity needs at least one window of two tokens (one predicted); callers check
    before loading a model, so that a bad count fails in a second, not after an export."""
    if isinstance(windows, bool) or isinstance(seq_len, bool) or windows < 1 or seq_len < 2:
        raise SparseDeployError(f"{what} needs windows >= 1 and seq_len >= 2, got {windows} x {seq_len}")


def evaluation_windows(tokenizer: Any, source: str, windows: int, seq_len: int) -> torch.Tensor:
    """The first ``windows`` non-overlapping windows of ``seq_len`` tokens, ``(windows, seq_len)``."""
    check_windows(windows, seq_len)
    text = read_text(source)
    need = windows * seq_len
    # Tokenize only a long-enough prefix: every text we ship has >= 2 characters per token.
    for chars in (need * 8, need * 32, len(text)):
        ids = _tokenize(tokenizer, text[:chars])
        if len(ids) >= need:
            return ids[:need].reshape(windows, seq_len)
        if chars >= len(text):
            break
    raise SparseDeployError(
        f"evaluation text '{source}' has {len(ids)} tokens, fewer than {windows} windows x {seq_len}"
    )


def token_batches(token_ids: torch.Tensor, batch_size: int, causal_lm: bool = True) -> list[dict[str, Any]]:
    """Model inputs, ``batch_size`` windows at a time (causal LMs: without KV cache)."""
    extra = {"use_cache": False} if causal_lm else {}
    return [{"input_ids": chunk, **extra} for chunk in token_ids.split(batch_size)]
