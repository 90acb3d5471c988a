"""Distillation and gate learning rate: training signals for the mask that never touch pretrained weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from abp_deploy.artifacts import MASK_FILE, load_mask
from abp_deploy.distill import distill_loss
from abp_deploy.errors import AbpError
from abp_deploy.models import prunable_linears
from abp_deploy.sparsifiers.gates import GateSparsifier
from abp_deploy.prune import prune


def test_distill_loss_blends_label_loss_and_temperature_scaled_kl():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert distill_loss(student, teacher, labels, 0.0, 2.0) == pytest.approx(F.cross_entropy(student, labels).item())
    kl = F.kl_div(F.log_softmax(student / 2, -1), F.softmax(teacher / 2, -1), reduction="batchmean") * 4
    assert distill_loss(student, teacher, labels, 1.0, 2.0) == pytest.approx(kl.item(), rel=1e-5)
    assert distill_loss(teacher, teacher, labels, 1.0, 2.0) == pytest.approx(0.0, abs=1e-6)


def test_distilled_gated_run_keeps_pretrained_weights_and_records_its_teacher(tiny_prune_config, tmp_path):
    teacher = str(tmp_path / "teacher")
    prune(dataclasses.replace(tiny_prune_config, method="finetune", output=teacher))
    manifest = prune(dataclasses.replace(tiny_prune_config, granularity="hybrid", sparsity=0.5, distill_from=teacher,
                                         distill_alpha=0.7))
    assert manifest["pretrained_weights_unchanged"] is True
    assert manifest["config"]["distill_from"] == teacher
    assert sum(manifest["structure"]["heads_kept"]) == 4


def test_missing_teacher_is_a_clear_error_before_any_folder(tiny_prune_config, tmp_path):
    with pytest.raises(AbpError, match="--distill-from .* is not a folder"):
        prune(dataclasses.replace(tiny_prune_config, distill_from=str(tmp_path / "nope")))
    assert not (tmp_path / "run").exists()


def test_gate_lr_is_the_gates_own_learning_rate(tiny_prune_config, tiny_classifier):
    """gate_lr 0 with a live score_lr: the gates stay at their magnitude ranking; the inner mask lies within them."""
    run = dataclasses.replace(tiny_prune_config, granularity="hybrid", sparsity=0.5, gate_lr=0.0, score_lr=0.1)
    prune(run)
    gates = GateSparsifier(0.5, "structured", "magnitude", seed=run.seed, lr=0.0)
    gates.attach(tiny_classifier, prunable_linears(tiny_classifier))
    expected = gates.final_masks()
    mask = load_mask(Path(run.output) / MASK_FILE)
    for name, gate in expected.items():
        assert torch.equal(mask[name] & gate, mask[name])  # nothing kept outside the initial gates
        assert torch.equal(mask[name].any(dim=0), gate.any(dim=0))


def test_gate_lr_is_refused_without_gates(tiny_prune_config):
    with pytest.raises(AbpError, match="--gate-lr applies to gated granularities"):
        prune(dataclasses.replace(tiny_prune_config, gate_lr=0.05))
