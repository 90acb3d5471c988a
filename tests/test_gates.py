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
