"""Does the exported graph compute what the torch model computes?

Two checks, both written into the manifest: logits (and presents) on fixed inputs, and,
for causal LMs, held-out perplexity through the ONNX graph vs through torch. An artifact
that fails either is not written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from export.graphs import CausalLMDecode, CausalLMPrefill, EncoderGraph, KVGeometry, decode_inputs, table_rotary
from export.ort_session import run, session
from pipeline.architectures import spec_for
from pipeline.data import evaluation_windows
from pipeline.evaluate import EVAL_SOURCE, window_nll
from pipeline.residency import bounded_residency


# The perplexity parity check's defaults (export API, CLI, recipes): a few windows, enough to
# catch a graph that computes something else, cheap next to the export itself.
PARITY_WINDOWS = 4
PARITY_SEQ_LEN = 256


@dataclass(frozen=True)
class Tolerance:
    """|onnx - torch| <= atol + rtol * max|torch| on every output; perplexity within ppl_rtol."""

    atol: float = 1e-4
    rtol: float = 1e-3
    ppl_rtol: float = 1e-3


def _compare(got: list[np.ndarray], want: list[torch.Tensor], names: list[str], tol: Tolerance) -> dict[str, Any]:
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0, "passed": True, "worst_output": None}
    for name, g, w in zip(names, got, want):
        w = w.detach().numpy()
        err = float(np.abs(g - w).max()) if w.size else 0.0
        scale = float(np.abs(w).max()) if w.size else 0.0
        rel = err / scale if scale else err
        if err > worst["max_abs_error"]:
            worst.update(max_abs_error=err, worst_output=name)
        worst["max_rel_error"] = max(worst["max_rel_error"], rel)
        worst["passed"] &= err <= tol.atol + tol.rtol * scale
    return worst


@dataclass
class Reference:
    """Fixed inputs and the torch model's outputs for them: stored in the artifact
    (``parity/<flavour>.npz``) so that ``sparse-deploy verify`` can re-check the graph
    without the torch model."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **{f"input/{k}": v for k, v in self.inputs.items()},
                     **{f"output/{k}": v for k, v in self.outputs.items()})

    @classmethod
    def load(cls, path: Path) -> "Reference":
        with np.load(path) as data:
            split = {kind: {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(kind + "/")}
                     for kind in ("input", "output")}
        return cls(split["input"], split["output"])


def check_reference(path: Path, reference: Reference, tol: Tolerance) -> dict[str, Any]:
    """Run the graph at ``path`` in ONNX Runtime on the reference inputs and compare (weights
    memory-mapped, not prepacked, and kept from staying resident: a check on a few tokens need not
    hold a 7B model at all)."""
    sess = session(path, prepack=False)
    names = [o.name for o in sess.get_outputs()]
    with bounded_residency(_beside(path)):
        got = run(sess, reference.inputs)
    want = [torch.from_numpy(reference.outputs[n]) for n in names]
    return {**_compare(got, want, names, tol), "inputs": {k: list(v.shape) for k, v in reference.inputs.items()}}


def _beside(graph: Path) -> list[Path]:
    """The graph file and its external data: the files in its folder."""
    return [f for f in Path(graph).parent.iterdir() if f.is_file()]


@torch.no_grad()
def reference_outputs(model: PreTrainedModel, flavour: str, outputs: list[str]) -> Reference:
    """Fixed inputs for ``flavour`` and what the torch model computes on them (named ``outputs``,
    the graph's output names in order)."""
    # RoPE as the graph computes it, attention the model's own: parity holds the export's
    # scaled_query_attention (export.graphs) to transformers' sdpa
    with table_rotary(model):
        if flavour == "decode":
            feeds = decode_inputs(KVGeometry.of(model), seq=4, past=7, batch=2, seed=1)
            values = list(feeds.values())
            want = CausalLMDecode(model)(*values)
        elif flavour == "prefill":
            feeds = {"input_ids": torch.randint(3, 1000, (2, 16), generator=torch.Generator().manual_seed(1))}
            want = (CausalLMPrefill(model)(feeds["input_ids"]),)
        else:
            graph_input = spec_for(model).kind.encoder_input
            x = torch.from_numpy(graph_input.example(model.config, batch=2, seq_len=16, seed=1))
            feeds, want = {graph_input.name: x}, (EncoderGraph(model, graph_input.name)(x),)
    return Reference({k: v.numpy() for k, v in feeds.items()},
                     {n: w.detach().numpy() for n, w in zip(outputs, want)})


def perplexity_parity(model: PreTrainedModel, tokenizer: Any, prefill_path: Path, tol: Tolerance,
                      source: str = EVAL_SOURCE, windows: int = PARITY_WINDOWS,
                      seq_len: int = PARITY_SEQ_LEN) -> dict[str, Any]:
    ids = evaluation_windows(tokenizer, source, windows, seq_len)
    total, count = window_nll(model, ids)
    sess = session(prefill_path, prepack=False)
    with bounded_residency(_beside(prefill_path)):
        onnx_total, _ = window_nll(lambda batch: torch.from_numpy(run(sess, {"input_ids": batch.numpy()})[0]), ids)
    ppl_torch, ppl_onnx = math.exp(total / count), math.exp(onnx_total / count)
    rel = abs(ppl_onnx - ppl_torch) / ppl_torch
    return {"torch": ppl_torch, "onnx": ppl_onnx, "rel_error": rel, "passed": rel <= tol.ppl_rtol,
            "protocol": {"source": source, "windows": windows, "seq_len": seq_len}}
