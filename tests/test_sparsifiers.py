"""The sparsifier interface: same masks as before the refactor, one loop for every granularity."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from abp_deploy.artifacts import load_mask, load_tensors
from abp_deploy.errors import AbpError
from abp_deploy.methods import get_method
from abp_deploy.models import prunable_linears
from abp_deploy.prune import PruneConfig, prune
from abp_deploy.sparsifiers import build_sparsifier
from abp_deploy.sparsifiers.gates import GateSparsifier

# sha256 (first 16 hex) of mask + head of 12-step tiny runs, produced by the code before the
# sparsifier refactor (commit cbd000b): the refactor must not move a single bit.
PINNED = [
    ("abp", "unstructured", None, {}, "7989784b875ed7a7"),
    ("movement", "unstructured", None, {}, "c6c7296fa4cc5702"),
    ("abp", "block", None, {"block_size": 8}, "919e87e9981487d6"),
    ("abp", "head", 0.5, {}, "d7b9f2fff43af60f"),
    ("abp", "neuron", 0.5, {}, "debd13a1d1e6247e"),
    ("abp", "structured", 0.5, {}, "9d9569e452f7c60e"),
    ("magnitude", "unstructured", None, {}, "37c042e33418e35b"),
    ("finetune", "unstructured", None, {}, "e1b6035ff7f7dc47"),
    ("abp", "hybrid", 0.5, {}, "75a7db0d0c0da071"),  # changed by design (inner top-k over open units); pinned since
]


def _digest(run: Path) -> str:
    h = hashlib.sha256()
    files = [("mask.safetensors", load_mask), ("head.safetensors", load_tensors), ("weights.safetensors", load_tensors)]
    for name, load in files:
        if (run / name).exists():
            for key, tensor in sorted(load(run / name).items()):
                h.update(key.encode())
                h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("method, granularity, sparsity, extra, digest", PINNED,
                         ids=[f"{m}-{g}" for m, g, *_ in PINNED])
def test_masks_and_heads_are_bit_identical_to_the_pre_refactor_code(tiny_prune_config, method, granularity,
                                                                      sparsity, extra, digest):
    cfg = dataclasses.replace(tiny_prune_config, method=method, granularity=granularity, sparsity=sparsity,
                              group_by_length=False, **extra)  # the batch order the pins were made with
    prune(cfg)
    assert _digest(Path(cfg.output)) == digest


def test_every_granularity_is_built_from_options_alone():
    for granularity in ("unstructured", "block", "head", "neuron", "structured", "hybrid"):
        sparsifier = build_sparsifier(PruneConfig(granularity=granularity), get_method("abp"))
        assert sparsifier.granularity == granularity
    assert build_sparsifier(PruneConfig(method="finetune"), get_method("finetune")).target == 0.0


def test_a_gate_budget_that_rounds_to_no_unit_is_refused_before_training(tiny_classifier):
    gates = GateSparsifier(0.95, "head", "magnitude", seed=0, lr=0.05)  # 8 heads: 0.05 * 8 rounds to 0
    with pytest.raises(AbpError, match=r"leaves no head of 8 open: pass at most 0\.9375"):
        gates.attach(tiny_classifier, prunable_linears(tiny_classifier))


def test_gates_detach_back_to_the_unmasked_weights(tiny_classifier):
    before = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    gates = GateSparsifier(0.5, "structured", "magnitude", seed=0, lr=0.05)
    gates.attach(tiny_classifier, prunable_linears(tiny_classifier))
    gates.set_progress(10, 10)
    gates.detach()
    after = tiny_classifier.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _batch(n: int = 16, length: int = 10) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, 40, (n, length), generator=generator),
            "attention_mask": torch.ones(n, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=generator)}


def test_fisher_init_ranks_highest_the_head_whose_removal_changes_the_loss_most(tiny_classifier):
    layer = tiny_classifier.bert.encoder.layer[1]
    with torch.no_grad():
        layer.attention.output.dense.weight[:, 16:24] *= 20  # head 2 of layer 1 now carries the output
    batch = _batch()
    with torch.no_grad():
        base = tiny_classifier(**batch).loss.item()
        change = []
        for head in range(4):
            saved = layer.attention.output.dense.weight[:, head * 8:(head + 1) * 8].clone()
            layer.attention.output.dense.weight[:, head * 8:(head + 1) * 8] = 0
            change.append(abs(tiny_classifier(**batch).loss.item() - base))
            layer.attention.output.dense.weight[:, head * 8:(head + 1) * 8] = saved
    gates = GateSparsifier(0.5, "head", "magnitude", seed=0, lr=0.05, gate_init="fisher")
    gates.attach(tiny_classifier, prunable_linears(tiny_classifier))
    gates.calibrate(tiny_classifier, lambda: [batch])
    scores = torch.cat([gates.gated["head"][i].parametrizations.weight[0].scores for i in (0, 1)]).detach()
    assert max(range(4), key=change.__getitem__) == 2
    assert int(scores.argmax()) == 4 + 2  # layer 1, head 2: the largest Fisher information of all 8 heads
    assert abs(float(scores.mean()) - 1.0) < 1e-5  # z-scored around 1, the magnitude scores' scale


def test_fisher_gate_init_runs_end_to_end_and_is_recorded(tiny_prune_config):
    manifest = prune(dataclasses.replace(tiny_prune_config, granularity="structured", sparsity=0.5, max_steps=4,
                                         gate_init="fisher"))
    assert manifest["gate_init"] == "fisher" and sum(manifest["structure"]["heads_kept"]) == 4
    with pytest.raises(AbpError, match="--gate-init fisher applies to gated granularities"):
        prune(dataclasses.replace(tiny_prune_config, gate_init="fisher"))
