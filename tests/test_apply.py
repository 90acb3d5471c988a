"""Rebuilding a run on a fresh base: checkpoints without pooler weights work, and a wrong base is named precisely."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from abp_deploy.apply import load_run_model
from abp_deploy.artifacts import load_tensors
from abp_deploy.errors import AbpError
from abp_deploy.models import load_classifier, weights_hash
from abp_deploy.prune import prune
from abp_deploy.tasks import get_task

SST2 = get_task("sst2")


@pytest.fixture()
def pooler_less_model_dir(tiny_model_dir, tmp_path):
    """The tiny BERT's shape saved without pooler weights, as sentence-transformers exports and MLM checkpoints are."""
    out = tmp_path / "no-pooler"
    torch.manual_seed(3)
    BertModel(BertConfig.from_pretrained(tiny_model_dir), add_pooling_layer=False).save_pretrained(out)
    BertTokenizerFast.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _record_initialised(run: str, model_dir) -> None:
    """Write the manifest fields the prune core records once it hashes with weights_hash(model, skip=initialised)."""
    manifest = json.loads(open(f"{run}/manifest.json").read())
    fresh, initialised = load_classifier(str(model_dir), SST2)
    manifest |= {"base_model_sha256": weights_hash(fresh, skip=initialised), "initialised_weights": sorted(initialised)}
    open(f"{run}/manifest.json", "w").write(json.dumps(manifest))


def test_hash_of_a_pooler_less_checkpoint_skips_its_random_pooler_and_is_stable(pooler_less_model_dir):
    first, initialised = load_classifier(str(pooler_less_model_dir), SST2)
    second, _ = load_classifier(str(pooler_less_model_dir), SST2)
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} <= initialised
    assert not torch.equal(first.bert.pooler.dense.weight, second.bert.pooler.dense.weight)
    assert weights_hash(first) != weights_hash(second)
    assert weights_hash(first, skip=initialised) == weights_hash(second, skip=initialised)


def test_run_of_a_pooler_less_checkpoint_rebuilds_with_its_trained_pooler(tiny_prune_config, pooler_less_model_dir):
    cfg = dataclasses.replace(tiny_prune_config, model=str(pooler_less_model_dir))
    prune(cfg)
    _record_initialised(cfg.output, pooler_less_model_dir)
    model, _, _, _ = load_run_model(cfg.output)
    stored = load_tensors(f"{cfg.output}/head.safetensors")
    assert torch.equal(model.bert.pooler.dense.weight, stored["bert.pooler.dense.weight"])


def test_prune_of_a_pooler_less_checkpoint_writes_a_run_that_rebuilds(tiny_prune_config, pooler_less_model_dir):
    cfg = dataclasses.replace(tiny_prune_config, model=str(pooler_less_model_dir))
    prune(cfg)
    load_run_model(cfg.output)


def test_run_made_before_initialised_weights_were_recorded_says_to_re_prune(tiny_prune_config, pooler_less_model_dir):
    cfg = dataclasses.replace(tiny_prune_config, model=str(pooler_less_model_dir))
    manifest = prune(cfg)
    assert manifest["initialised_weights"]  # runs record them now; an older run's manifest lacked the field:
    old = {k: v for k, v in manifest.items() if k != "initialised_weights"}
    (Path(cfg.output) / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(AbpError, match="lacks bert.pooler.dense.bias, .*hashed their random values.*re-run abp-deploy prune"):
        load_run_model(cfg.output)


def test_base_whose_weights_changed_since_prune_says_so_instead_of_naming_itself(tiny_prune_config, tiny_model_dir,
                                                                                  other_base_model, tmp_path):
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    prune(dataclasses.replace(tiny_prune_config, model=str(base)))
    for name in ("config.json", "model.safetensors"):
        shutil.copy(other_base_model / name, base / name)
    with pytest.raises(AbpError, match="the weights of .*base changed since this run was pruned .*: restore that "
                                       "checkpoint, or re-run abp-deploy prune") as error:
        load_run_model(tiny_prune_config.output)
    assert "--model" not in str(error.value)


def test_base_lacking_weights_the_runs_base_provided_names_them(tiny_prune_config, tiny_model_dir,
                                                                pooler_less_model_dir):
    prune(tiny_prune_config)
    _record_initialised(tiny_prune_config.output, tiny_model_dir)
    with pytest.raises(AbpError, match=r"does not provide the weights the run's base did \(it lacks "
                                       r"bert.pooler.dense.bias, bert.pooler.dense.weight\): pass --model "):
        load_run_model(tiny_prune_config.output, base_model=str(pooler_less_model_dir))
