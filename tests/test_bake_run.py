"""Stage two from a real prune run: bake cuts what the mask killed and keeps the logits."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import abp_deploy
from abp_deploy.apply import load_run_model
from abp_deploy.bake_run import bake_run, real_batch
from abp_deploy.cli.app import app
from abp_deploy.errors import AbpError


def test_baked_run_reloads_smaller_with_the_masked_logits(sparse_run, tmp_path):
    summary = bake_run(sparse_run, tmp_path / "baked")
    assert sum(summary.neurons_removed) > 0 and summary.params_after < summary.params_before
    masked, tokenizer, _, manifest = load_run_model(sparse_run)
    batch = real_batch("sst2", manifest["config"]["data_dir"], tokenizer, manifest["max_length"])
    baked = abp_deploy.load_baked(tmp_path / "baked")  # the one-call loader of the issue
    with torch.no_grad():
        assert torch.allclose(baked(**batch).logits, masked(**batch).logits, atol=1e-5)
    assert json.loads((tmp_path / "baked" / "config.json").read_text())["abp_provenance"]["task"] == "sst2"


def test_bake_refuses_a_run_whose_base_model_changed(sparse_run, other_base_model, tmp_path):
    with pytest.raises(AbpError, match="not the one this run was pruned from"):
        bake_run(sparse_run, tmp_path / "baked", base_model=str(other_base_model))
    assert not (tmp_path / "baked").exists()


def test_bake_cli_prints_the_per_layer_table(sparse_run, tmp_path):
    result = CliRunner().invoke(app, ["bake", sparse_run, "-o", str(tmp_path / "baked")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "FFN removed" in result.output and "params" in result.output
