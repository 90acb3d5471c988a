"""A few steps on the real packaged MiniLM-L6 and offline rotten_tomatoes: the default path works."""

from __future__ import annotations

import os

import pytest

from abp_deploy.apply import load_run_model
from abp_deploy.prune import PruneConfig, prune

from conftest import minilm_path, requires_minilm


@requires_minilm
@pytest.mark.minilm
def test_default_model_and_task_prune_to_a_mask_far_smaller_than_the_model(tmp_path):
    manifest = prune(PruneConfig(output=str(tmp_path / "run"), max_train_samples=64, max_eval_samples=64,
                                 max_steps=2, batch_size=32, max_length=32, progress=False, device="cpu"))
    assert manifest["base_model"] == "minilm-l6" and manifest["task"] == "rotten_tomatoes"
    assert manifest["pretrained_weights_unchanged"] is True
    assert abs(manifest["sparsity"] - 0.5) <= 0.01
    mask_bytes = os.path.getsize(tmp_path / "run" / "mask.safetensors")
    model_bytes = os.path.getsize(minilm_path() / "model.safetensors")
    assert mask_bytes * 40 < model_bytes  # 1 bit per masked weight against 32
    model, _, task, _ = load_run_model(tmp_path / "run")
    assert model.config.id2label == {0: "negative", 1: "positive"}
