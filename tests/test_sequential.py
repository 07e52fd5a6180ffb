"""The sequential engine against non-sequential references that run the whole model."""

import copy

import pytest
import torch
from torch import nn

from pipeline.architectures import linear_layers, transformer_blocks, blocks_prefix
from pipeline.architectures import ModelKind
from pipeline.data import calibration_samples, token_batches
from pipeline.pruners import build_pruner
from pipeline.sequential import BlockContext, calibrate_sequentially
from pipeline.statistics import LayerStatistics, Statistic

BOTH = frozenset({Statistic.SECOND_MOMENT, Statistic.GRAM})


def lm_batches_for(loaded, samples=4, seq_len=32, batch_size=2):
    ids = calibration_samples(loaded.tokenizer, "c4", samples, seq_len, seed=0)
    return token_batches(ids, batch_size, causal_lm=loaded.spec.kind is ModelKind.CAUSAL_LM)


def vision_batches(loaded, samples=4, batch_size=2):
    size = loaded.model.config.image_size
    pixels = torch.randn(samples, 3, size, size, generator=torch.Generator().manual_seed(0))
    return [{"pixel_values": c} for c in pixels.split(batch_size)]


@torch.no_grad()
def full_forward_stats(model, batches, only_block=None):
    """Statistics of every block Linear's inputs from plain whole-model forwards."""
    stats: dict[str, LayerStatistics] = {}
    handles = []
    prefix = blocks_prefix(model)
    for i, block in enumerate(transformer_blocks(model)):
        if only_block is not None and i != only_block:
            continue
        for name, layer in linear_layers(block).items():
            key = f"{prefix}.{i}.{name}"
            stats[key] = LayerStatistics.empty(layer.in_features, BOTH, torch.float64)
            handles.append(layer.register_forward_hook(lambda m, inp, out, k=key: stats[k].add_batch(inp[0])))
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return stats


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-phi3", "tiny-vit", "tiny-dinov2", "minilm-l6"])
def test_block_inputs_equal_a_whole_model_forward(tiny, name):
    loaded = tiny(name)
    batches = vision_batches(loaded) if loaded.spec.kind is ModelKind.VISION else lm_batches_for(loaded)
    reference = full_forward_stats(loaded.model, batches)
    seen: dict[str, LayerStatistics] = {}

    def record(ctx: BlockContext) -> bool:
        seen.update({f"{ctx.name}.{k}": v for k, v in ctx.stats.items()})
        return False

    calibrate_sequentially(loaded.model, batches, BOTH, record, gram_dtype=torch.float64)
    assert seen.keys() == reference.keys()
    for key, ref in reference.items():
        assert seen[key].tokens == ref.tokens
        torch.testing.assert_close(seen[key].second_moment, ref.second_moment, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seen[key].hessian, ref.hessian, rtol=1e-5, atol=1e-6)


def test_layers_fed_by_one_tensor_share_statistics(tiny):
    loaded = tiny("tiny-llama")
    shared = {}

    def record(ctx: BlockContext) -> bool:
        s = ctx.stats
        shared[ctx.index] = (s["self_attn.q_proj"] is s["self_attn.k_proj"] is s["self_attn.v_proj"],
                             s["mlp.gate_proj"] is s["mlp.up_proj"], s["mlp.down_proj"] is not s["mlp.up_proj"])
        return False

    calibrate_sequentially(loaded.model, lm_batches_for(loaded), BOTH, record)
    assert all(all(flags) for flags in shared.values())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sequential_pruning_equals_non_sequential_reference(tiny, method):
    """Reference: prune block i after a *whole-model* forward of the partly pruned model."""
    loaded = tiny("tiny-llama")
    batches = lm_batches_for(loaded, samples=6)
    pruner = build_pruner(method)
    reference = copy.deepcopy(loaded.model)

    def prune(ctx: BlockContext) -> bool:
        pruner.prune_block(ctx, 0.6)
        return True

    calibrate_sequentially(loaded.model, batches, pruner.statistics, prune)

    prefix = blocks_prefix(reference)
    for i, block in enumerate(transformer_blocks(reference)):
        stats = full_forward_stats(reference, batches, only_block=i)
        layers = linear_layers(block)
        for name, layer in layers.items():
            layer.weight.data = pruner.prune_weight(layer.weight.detach(), stats[f"{prefix}.{i}.{name}"], 0.6)

    for (name, got), (_, want) in zip(loaded.model.named_parameters(), reference.named_parameters()):
        assert torch.equal(got == 0, want == 0), name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _layer_inputs(model, block_index):
    """Each Linear's inputs in one block over the calibration batches (one whole-model forward each)."""
    inputs: dict[str, list[torch.Tensor]] = {}
    block = transformer_blocks(model)[block_index]
    handles = [layer.register_forward_hook(lambda m, inp, out, k=name: inputs.setdefault(k, []).append(inp[0]))
               for name, layer in linear_layers(block).items()]
    return inputs, handles


@torch.no_grad()
def test_the_cross_moment_pairs_the_pruned_stream_with_the_unpruned_model(tiny):
    """Block 0 is pruned on the way; block 1's inputs then differ between the two streams and the
    cross moment must be Σ x_pruned · x_denseᵀ over the same tokens (on block 0, still the Gram matrix)."""
    loaded = tiny("tiny-llama")
    dense = copy.deepcopy(loaded.model)
    batches = lm_batches_for(loaded)
    seen: dict[int, dict[str, LayerStatistics]] = {}

    def prune_first(ctx: BlockContext) -> bool:
        seen[ctx.index] = ctx.stats
        if ctx.index == 0:
            build_pruner("wanda").prune_block(ctx, 0.6)
        return ctx.index == 0

    want = frozenset({Statistic.GRAM, Statistic.CROSS})
    calibrate_sequentially(loaded.model, batches, want, prune_first, gram_dtype=torch.float64)
    pruned_inputs, h1 = _layer_inputs(loaded.model, 1)
    dense_inputs, h2 = _layer_inputs(dense, 1)
    try:
        for batch in batches:
            loaded.model(**batch), dense(**batch)
    finally:
        for h in h1 + h2:
            h.remove()
    for name, stats in seen[1].items():
        x = torch.cat(pruned_inputs[name]).reshape(-1, stats.cross.shape[0]).double()
        x_ref = torch.cat(dense_inputs[name]).reshape(-1, stats.cross.shape[0]).double()
        assert not torch.allclose(x, x_ref)  # the streams really differ after a pruned block
        torch.testing.assert_close(stats.cross, x.T @ x_ref / len(x), rtol=1e-5, atol=1e-6)
    for stats in seen[0].values():
        torch.testing.assert_close(stats.cross, stats.hessian)


def test_the_cross_moment_is_refused_when_missing_or_mismatched():
    stats = LayerStatistics.empty(4, frozenset({Statistic.GRAM}), torch.float64)
    stats.add_batch(torch.randn(5, 4))
    with pytest.raises(ValueError, match="not collected"):
        _ = stats.cross
    with pytest.raises(ValueError, match="not requested"):
        stats.add_reference(torch.randn(5, 4), torch.randn(5, 4))
    paired = LayerStatistics.empty(4, frozenset({Statistic.GRAM, Statistic.CROSS}), torch.float64)
    with pytest.raises(ValueError, match="do not pair up"):
        paired.add_reference(torch.randn(5, 4), torch.randn(6, 4))


def test_engine_restores_training_mode_and_leaves_no_hooks(tiny):
    loaded = tiny("tiny-llama")
    loaded.model.train()
    calibrate_sequentially(loaded.model, lm_batches_for(loaded), BOTH, lambda ctx: False)
    assert loaded.model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules() if isinstance(m, nn.Module))
