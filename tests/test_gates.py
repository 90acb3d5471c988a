"""Structure gates: a head/neuron budget becomes exactly that many dead units, which bake cuts exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from abp_deploy.artifacts import MASK_FILE, load_mask
from abp_deploy.bake_run import bake_run
from abp_deploy.errors import AbpError
from abp_deploy.models import prunable_linears
from abp_deploy.sparsifiers.gates import GateSparsifier
from abp_deploy.prune import prune
from abp_deploy.structure import count_params_and_flops, find_dead_structure


def test_head_gates_close_exactly_the_lowest_scored_heads(tiny_classifier):
    gates = GateSparsifier(0.5, "head", "constant", seed=0, lr=0.05)  # 4 of 8 heads, ranked across both layers
    gates.attach(tiny_classifier, prunable_linears(tiny_classifier))
    layer0 = gates.gated["head"][0]
    with torch.no_grad():
        layer0.parametrizations.weight[0].scores.copy_(torch.tensor([5.0, -5.0, 4.0, -4.0]))
    masks = gates.final_masks()
    gates.detach()
    with torch.no_grad():
        for name, mask in masks.items():
            dict(tiny_classifier.base_model.named_modules())[name].weight.mul_(mask)
    dead = find_dead_structure(tiny_classifier).layers
    assert sorted(dead[0].heads) == [1, 3]  # the two negative-score heads of layer 0
    assert sum(len(d.heads) for d in dead) == 4


@pytest.mark.parametrize("granularity, heads_left, neurons_left", [("head", 4, 128), ("neuron", 8, 64),
                                                                   ("structured", 4, 64)])
def test_gated_run_bakes_to_the_budget_with_unchanged_logits(tiny_prune_config, tmp_path, granularity,
                                                            heads_left, neurons_left):
    manifest = prune(dataclasses.replace(tiny_prune_config, granularity=granularity, sparsity=0.5, max_steps=6))
    assert manifest["granularity"] == granularity
    assert sum(manifest["structure"]["heads_kept"]) == heads_left
    assert sum(manifest["structure"]["neurons_kept"]) == neurons_left
    summary = bake_run(tiny_prune_config.output, tmp_path / "baked")  # raises if logits moved by > 1e-4
    assert sum(summary.heads) == heads_left and sum(summary.intermediate_sizes) == neurons_left
    if granularity == "structured":
        assert manifest["sparsity"] == pytest.approx(0.5)
        assert summary.encoder_params_after < 0.52 * summary.encoder_params_before


def test_gated_run_is_deterministic_for_a_seed(tiny_prune_config, tmp_path):
    cfg = dataclasses.replace(tiny_prune_config, granularity="structured", sparsity=0.5, max_steps=6)
    first = prune(cfg)["structure"]
    second = prune(dataclasses.replace(cfg, output=str(tmp_path / "again")))["structure"]
    assert first == second


def test_gates_need_a_learned_mask_method(tiny_prune_config):
    with pytest.raises(AbpError, match="use --method abp or movement"):
        prune(dataclasses.replace(tiny_prune_config, method="magnitude", granularity="head"))
    with pytest.raises(AbpError, match="--granularity tile is unknown"):
        prune(dataclasses.replace(tiny_prune_config, granularity="tile"))


def test_flops_accounting_matches_a_hand_count_after_cutting_heads(tiny_classifier):
    tiny_classifier.prune_heads({0: [0, 1]})  # layer 0: 2 of 4 heads of size 8 left
    counted = count_params_and_flops(tiny_classifier, seq_len=10)
    hidden, ffn = 32, 64
    linear = (4 * 2 * hidden * 16 + 2 * 2 * hidden * ffn) + (4 * 2 * hidden * 32 + 2 * 2 * hidden * ffn)
    attention = 2 * 2 * 10 * 16 + 2 * 2 * 10 * 32
    assert counted["flops_per_token"] == linear + attention


def test_hybrid_inner_mask_ranks_only_open_units_and_hits_inner_sparsity_there(tiny_prune_config, tmp_path):
    manifest = prune(dataclasses.replace(tiny_prune_config, granularity="hybrid", sparsity=0.5, inner_sparsity=0.4,
                                         max_steps=6))
    assert sum(manifest["structure"]["heads_kept"]) == 4 and sum(manifest["structure"]["neurons_kept"]) == 64
    assert manifest["sparsity"] == pytest.approx(0.5) and manifest["inner_sparsity"] == 0.4
    assert manifest["inner_sparsity_achieved"] == pytest.approx(0.4, abs=0.005)
    masks = load_mask(tmp_path / "run" / "mask.safetensors")
    open_heads = masks["encoder.layer.0.attention.output.dense"].any(0).reshape(4, 8).any(1)
    query = masks["encoder.layer.0.attention.self.query"].reshape(4, 8, 32)
    assert not query[~open_heads].any()  # a closed head's rows take no keep slot
    assert 1 - query[open_heads].float().mean().item() == pytest.approx(0.4, abs=0.01)  # per matrix, inside open units
    summary = bake_run(tiny_prune_config.output, tmp_path / "baked")  # exact, or it raises
    assert sum(summary.heads) == 4 and sum(summary.intermediate_sizes) == 64


def test_inner_sparsity_is_refused_outside_hybrid(tiny_prune_config):
    with pytest.raises(AbpError, match="--inner-sparsity applies to --granularity hybrid only"):
        prune(dataclasses.replace(tiny_prune_config, granularity="structured", inner_sparsity=0.3))


def test_block_mask_zeros_whole_tiles_at_the_target(tiny_prune_config, tmp_path):
    manifest = prune(dataclasses.replace(tiny_prune_config, granularity="block", block_size=8, sparsity=0.5,
                                         max_steps=6))
    assert manifest["block_size"] == 8 and manifest["mask_sparsity"] == pytest.approx(0.5, abs=1e-3)
    for name, mask in load_mask(Path(tiny_prune_config.output) / MASK_FILE).items():
        rows, cols = mask.shape
        tiles = mask.reshape(rows // 8, 8, cols // 8, 8).float().mean(dim=(1, 3))
        assert bool(((tiles == 0) | (tiles == 1)).all()), name  # every 8×8 tile is all kept or all zero
    bake_run(tiny_prune_config.output, tmp_path / "baked")  # raises if logits moved by > 1e-4


def test_block_size_that_does_not_divide_the_matrices_is_refused(tiny_prune_config):
    with pytest.raises(AbpError, match="--block-size 5 does not divide"):
        prune(dataclasses.replace(tiny_prune_config, granularity="block", block_size=5))
    with pytest.raises(AbpError, match="--block-size applies to --granularity block or hybrid"):
        prune(dataclasses.replace(tiny_prune_config, block_size=8))
    assert not Path(tiny_prune_config.output).exists()
    assert not Path(tiny_prune_config.output + ".incomplete").exists()


def test_flops_budget_removes_the_target_fraction_of_encoder_flops_to_within_one_neuron(tiny_prune_config, tmp_path):
    manifest = prune(dataclasses.replace(tiny_prune_config, granularity="structured", gate_budget="flops",
                                         sparsity=0.4, max_steps=6))
    assert manifest["sparsity_definition"] == "encoder_flops_removed" and manifest["gate_budget"] == "flops"
    removed = manifest["sparsities"]["encoder_flops_removed"]
    neuron = 2 * 2 * 32 / (2 * (4 * (2 * 4 * 8 * 32 + 2 * 2 * 16 * 8) + 64 * 2 * 2 * 32))  # one neuron's share, len 16
    assert 0.4 <= removed < 0.4 + neuron
    summary = bake_run(tiny_prune_config.output, tmp_path / "baked")  # raises if logits moved by > 1e-4
    assert sum(summary.heads) == sum(manifest["structure"]["heads_kept"])


def _gates_with_scores(model, budget: str, head_score: float, neuron_score: float) -> GateSparsifier:
    gates = GateSparsifier(0.5, "structured", "constant", seed=0, lr=0.05, budget=budget, seq_len=16)
    gates.attach(model, prunable_linears(model))
    with torch.no_grad():
        for kind, score in (("head", head_score), ("neuron", neuron_score)):
            for linear in gates.gated[kind].values():
                linear.parametrizations.weight[0].scores.add_(score)
    return gates


@pytest.mark.parametrize("budget, heads_open, neurons_open", [("per-kind", 5, 77), ("flops", 8, 12)])
def test_flops_budget_lets_the_scores_choose_attention_over_ffn(tiny_classifier, budget, heads_open, neurons_open):
    # At length 16 a head costs 2,560 FLOPs per token and a neuron 128; 60% of 36,864 is 22,118.4.
    gates = _gates_with_scores(tiny_classifier, budget, head_score=10.0, neuron_score=-10.0)
    opened = gates.exact_open_units(0.6)
    heads = sum(int(o.sum()) for o in opened["head"].values())
    neurons = sum(int(o.sum()) for o in opened["neuron"].values())
    assert (heads, neurons) == (heads_open, neurons_open)
    if budget == "flops":  # every head (20,480) first, then neurons while they fit: 22,016, short by < one neuron
        assert 22_118.4 - 128 < heads * 2560 + neurons * 128 <= 22_118.4
        gates.set_keep(0.6)  # the training threshold: the same units here
        assert sum(int(o.sum()) for kind in gates.open_units().values() for o in kind.values()) == 20


def test_unit_scales_fold_exactly_into_the_baked_weights(tiny_classifier, tokenizer):
    from abp_deploy.apply import apply_masks, apply_unit_scales
    from abp_deploy.bake import bake_model

    model = tiny_classifier
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    gates = GateSparsifier(0.5, "structured", "magnitude", seed=0, lr=0.05, unit_scales=True)
    gates.attach(model, prunable_linears(model))
    with torch.no_grad():
        for linears in gates.gated.values():
            for linear in linears.values():
                scales = linear.parametrizations.weight[0].scales
                scales.copy_(torch.rand(scales.shape) * 2)
    gates.set_keep(0.5)
    batch = dict(tokenizer(["a good film", "it was not very bad at all"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        trained = model(**batch).logits  # the forward pass training saw: gates and scales on frozen weights
    masks, scales = gates.final_masks(), gates.unit_scales()
    gates.detach()
    apply_masks(model, masks)
    with torch.no_grad():
        unscaled = model(**batch).logits
    apply_unit_scales(model, scales)
    bake_model(model)
    with torch.no_grad():
        baked = model(**batch).logits
    torch.testing.assert_close(baked, trained, atol=1e-5, rtol=0)
    assert (unscaled - trained).abs().max() > 1e-3  # the scales mattered


def test_unit_scales_run_stores_them_beside_untouched_weights_and_bakes(tiny_prune_config, tmp_path):
    from abp_deploy.artifacts import SCALES_FILE, load_tensors

    manifest = prune(dataclasses.replace(tiny_prune_config, granularity="hybrid", sparsity=0.5, unit_scales=True,
                                         max_steps=6))
    assert manifest["unit_scales"] is True and manifest["pretrained_weights_unchanged"] is True
    scales = load_tensors(Path(tiny_prune_config.output) / SCALES_FILE)
    assert sorted(scales) == sorted(f"encoder.layer.{i}.{m}" for i in range(2)
                                    for m in ("attention.output.dense", "output.dense"))
    assert any((s != 1).any() for s in scales.values())  # learned
    bake_run(tiny_prune_config.output, tmp_path / "baked")  # raises if baked logits differ from the run's


@pytest.mark.parametrize("change, message", [
    ({"granularity": "head", "gate_budget": "flops"}, "--gate-budget flops ranks heads against neurons"),
    ({"granularity": "structured", "gate_budget": "weights"}, "--gate-budget weights is unknown"),
    ({"unit_scales": True}, "--unit-scales learns one scale per head and neuron gate"),
])
def test_gate_budget_and_unit_scales_are_refused_where_they_cannot_apply(tiny_prune_config, change, message):
    with pytest.raises(AbpError, match=message):
        prune(dataclasses.replace(tiny_prune_config, **change))
