"""The real packaged model end to end (slow: about a minute once the model is cached)."""

import json

import pytest
import torch

from pipeline.app.cli import main
from pipeline.data import calibration_samples, token_batches
from pipeline.evaluate import perplexity
from pipeline.models import load_model
from pipeline.prune import RECORD_FILE
from pipeline.pruners import build_pruner
from pipeline.sequential import BlockContext, calibrate_sequentially
from tests.conftest import reconstruction_error

pytestmark = pytest.mark.slow
EVAL = dict(source="wiki", windows=4, seq_len=256)


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def dense_ppl(smollm2):
    return perplexity(smollm2.model, smollm2.tokenizer, **EVAL).perplexity


def test_packaged_model_is_the_dequantized_smollm2(smollm2, dense_ppl):
    cfg = smollm2.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (9, 3, 1536)
    assert getattr(cfg, "quantization_config", None) is None
    assert smollm2.model.lm_head.weight is smollm2.model.model.embed_tokens.weight
    assert 5 < dense_ppl < 40, dense_ppl  # a real LM, not random weights (random: ~50000)


def test_reconstruction_error_order_on_real_layers(smollm2):
    batches = token_batches(calibration_samples(smollm2.tokenizer, "c4", 8, 256, seed=0), 4)
    errors: dict[str, dict[str, float]] = {}

    def measure(ctx: BlockContext) -> bool:
        if ctx.index in (2, 20):
            for name in ("self_attn.q_proj", "mlp.down_proj"):
                w, stats = ctx.layers[name].weight.detach(), ctx.stats[name]
                errors[f"{ctx.index}.{name}"] = {
                    m: reconstruction_error(w, build_pruner(m).prune_weight(w, stats, 0.5), stats)
                    for m in ("magnitude", "wanda", "sparsegpt")
                }
        return False

    calibrate_sequentially(smollm2.model, batches, build_pruner("sparsegpt").statistics, measure)
    assert len(errors) == 4
    for layer, e in errors.items():
        assert e["sparsegpt"] < e["wanda"] < e["magnitude"], (layer, e)


def test_cli_prunes_the_real_model_end_to_end(tmp_path, dense_ppl):
    out = tmp_path / "wanda50"
    args = ["prune", "--model", "smollm2-135m", "--method", "wanda", "--sparsity", "0.5", "--owl",
            "--calib-samples", "16", "--calib-seq-len", "256", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["achieved"]["blocks_linear"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(record["recipe"]["block_sparsity"]) == 30
    pruned = load_model(str(out))
    assert pruned.model.lm_head.weight is pruned.model.model.embed_tokens.weight
    ppl = perplexity(pruned.model, pruned.tokenizer, **EVAL).perplexity
    assert dense_ppl < ppl < 10 * dense_ppl, (dense_ppl, ppl)
    assert torch.isfinite(torch.tensor(ppl))


def _first_blocks(loaded, blocks: int, out):
    """The real model cut to its first ``blocks`` decoder blocks (real weights, tokenizer, GQA
    and tied head), saved as a local model directory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(loaded.path, dtype=torch.float32)
    model.model.layers = model.model.layers[:blocks]
    model.config.num_hidden_layers = blocks
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


def test_pruned_smollm2_artifact_generates_like_torch(tmp_path, smollm2):
    """Parity on the real model's blocks, and a real client: optimum's generate() from the
    artifact. Four of the 30 blocks (every block is the same code): with all 30 this was the
    suite's slowest test, 472 s on a Zen 3 machine; with four, 57 s there (`make test`'s durations)."""
    from optimum.onnxruntime import ORTModelForCausalLM

    from export.artifact import export_artifact

    blocks, pruned_dir = 4, tmp_path / "pruned"
    source = _first_blocks(smollm2, blocks, tmp_path / "smollm2-4blocks")
    assert main(["prune", "--model", str(source), "--method", "wanda", "--pattern", "2:4",
                 "--calib-samples", "8", "--calib-seq-len", "128", "--out", str(pruned_dir)]) == 0
    manifest = export_artifact(str(pruned_dir), tmp_path / "art", parity_windows=2, parity_seq_len=128)
    assert manifest["parity"]["perplexity"]["passed"] and manifest["parity"]["decode"]["passed"]
    weights = {k: v for k, v in manifest["weights"].items() if k.startswith("layers.")}
    assert len(weights) == blocks * 7 and all(v["pattern"] == "2:4" for v in weights.values())
    loaded = load_model(str(pruned_dir))
    assert loaded.model.config.num_key_value_heads == 3
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    prompt = loaded.tokenizer("The river flows through the old town and", return_tensors="pt")
    kwargs = dict(max_new_tokens=16, do_sample=False)
    ort_model = ORTModelForCausalLM.from_pretrained(tmp_path / "art")
    assert torch.equal(ort_model.generate(**prompt, **kwargs), loaded.model.generate(**prompt, **kwargs))
