"""Stage one on the tiny BERT: frozen weights, exact sparsity, determinism, reloadable artefacts, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from abp_deploy.apply import load_run_model
from abp_deploy.artifacts import load_mask, load_tensors
from abp_deploy.data import load_split, tokenize
from abp_deploy.errors import AbpError
from abp_deploy.evaluation import dev_loader, evaluate
from abp_deploy.models import load_classifier, prunable_linears, weights_hash
from abp_deploy.prune import prune
from abp_deploy.tasks import get_task


def test_abp_leaves_pretrained_weights_bit_identical(tiny_prune_config, tiny_model_dir):
    manifest = prune(tiny_prune_config)
    assert manifest["pretrained_weights_unchanged"] is True
    run = tiny_prune_config.output
    assert set(load_tensors(f"{run}/head.safetensors")) == {"classifier.weight", "classifier.bias"}
    assert not (Path(run) / "weights.safetensors").exists()  # the run stores no pretrained weights
    fresh, _ = load_classifier(str(tiny_model_dir), get_task("sst2"))
    assert weights_hash(fresh) == manifest["base_model_sha256"]


def test_finetune_changes_weights_and_stores_them(tiny_prune_config):
    manifest = prune(dataclasses.replace(tiny_prune_config, method="finetune"))
    assert manifest["pretrained_weights_unchanged"] is False
    assert (Path(tiny_prune_config.output) / "weights.safetensors").is_file()
    assert manifest["sparsity"] == 0.0


@pytest.mark.parametrize("scope", ["per-matrix", "global"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.9])
def test_achieved_sparsity_hits_the_target(tiny_prune_config, scope, target):
    manifest = prune(dataclasses.replace(tiny_prune_config, sparsity=target, scope=scope, max_steps=4))
    assert abs(manifest["sparsity"] - target) <= 0.01
    masks = load_mask(f"{tiny_prune_config.output}/mask.safetensors")
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros / sum(m.numel() for m in masks.values()) == pytest.approx(manifest["sparsity"])
    if scope == "per-matrix":
        assert all(abs(s - target) <= 0.01 for s in manifest["sparsity_per_matrix"].values())


def test_mask_covers_every_encoder_matrix_and_the_pooler(tiny_prune_config, tiny_classifier):
    prune(tiny_prune_config)
    masks = load_mask(f"{tiny_prune_config.output}/mask.safetensors")
    assert set(masks) == set(prunable_linears(tiny_classifier))
    assert "encoder.layer.1.attention.self.query" in masks and "pooler.dense" in masks


def test_same_seed_gives_the_same_mask_and_another_seed_does_not(tiny_prune_config, tmp_path):
    runs = {}
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        prune(dataclasses.replace(tiny_prune_config, seed=seed, output=str(tmp_path / name)))
        runs[name] = load_mask(tmp_path / name / "mask.safetensors")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_saved_mask_and_head_on_a_fresh_base_reproduce_the_dev_metric(tiny_prune_config):
    manifest = prune(dataclasses.replace(tiny_prune_config, max_steps=30))
    model, tokenizer, task, _ = load_run_model(tiny_prune_config.output)
    dev = tokenize(load_split(task, "dev", tiny_prune_config.data_dir), tokenizer, tiny_prune_config.max_length)
    metrics = evaluate(model, task, {"dev": dev_loader(dev, tokenizer, 64)})
    assert metrics == manifest["dev_metrics"]


@pytest.mark.parametrize("checkpoint_every, crash_at", [(4, 7), (6, 8)])  # mid-epoch, and at an epoch boundary
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tiny_prune_config, tmp_path, monkeypatch,
                                                              checkpoint_every, crash_at):
    straight = dataclasses.replace(tiny_prune_config, output=str(tmp_path / "straight"))
    prune(straight)
    interrupted = dataclasses.replace(tiny_prune_config, output=str(tmp_path / "resumed"),
                                      checkpoint_every=checkpoint_every)
    _crash_at(monkeypatch, crash_at)
    with pytest.raises(KeyboardInterrupt):
        prune(interrupted)
    monkeypatch.undo()
    assert not (tmp_path / "resumed").exists()  # nothing looks finished
    with pytest.raises(AbpError, match="--resume"):
        prune(interrupted)
    prune(dataclasses.replace(interrupted, resume=True))
    a, b = load_mask(tmp_path / "straight" / "mask.safetensors"), load_mask(tmp_path / "resumed" / "mask.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # 6 steps per epoch (96 examples, batch 16)
    head_a, head_b = load_tensors(tmp_path / "straight" / "head.safetensors"), load_tensors(tmp_path / "resumed" / "head.safetensors")
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a)
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert f"resumed at step {checkpoint_every}" in log


def test_resume_refuses_changed_settings(tiny_prune_config, monkeypatch):
    cfg = dataclasses.replace(tiny_prune_config, checkpoint_every=2)
    _crash_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        prune(cfg)
    monkeypatch.undo()
    with pytest.raises(AbpError, match="sparsity"):
        prune(dataclasses.replace(cfg, resume=True, sparsity=0.7))


def test_mask_from_another_base_model_is_refused(tiny_prune_config, tmp_path):
    prune(tiny_prune_config)
    from transformers import BertConfig, BertModel

    other = tmp_path / "other-bert"
    torch.manual_seed(123)
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(other)
    with pytest.raises(AbpError, match="not the one this run was pruned from"):
        load_run_model(tiny_prune_config.output, base_model=str(other))


def test_truncated_mask_file_is_a_clear_error(tiny_prune_config):
    prune(tiny_prune_config)
    mask = tiny_prune_config.output + "/mask.safetensors"
    data = open(mask, "rb").read()
    open(mask, "wb").write(data[: len(data) // 2])
    with pytest.raises(AbpError, match="changed since the run finished"):
        load_run_model(tiny_prune_config.output)
    with pytest.raises(AbpError, match="truncated or corrupted"):
        load_mask(mask)


def test_failed_prune_leaves_no_run_folder(tiny_prune_config, tmp_path):
    with pytest.raises(AbpError):
        prune(dataclasses.replace(tiny_prune_config, task="cola"))  # tiny dir has no CoLA
    assert not list(tmp_path.iterdir())


def test_manifest_records_what_a_user_needs(tiny_prune_config):
    prune(tiny_prune_config)
    manifest = json.loads(open(tiny_prune_config.output + "/manifest.json").read())
    for key in ("base_model", "base_model_sha256", "task", "labels", "max_length", "method", "sparsity",
                "sparsity_per_matrix", "seed", "versions", "dev_metrics", "wall_time_s", "files"):
        assert key in manifest


def _crash_at(monkeypatch, call: int) -> None:
    """Make the `call`-th training step raise KeyboardInterrupt (Ctrl-C) before it runs."""
    import abp_deploy.prune as prune_module

    real, calls = prune_module._train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prune_module, "_train_step", step)


def test_ctrl_c_names_the_step_and_checkpoint_and_an_early_one_leaves_nothing(tiny_prune_config, monkeypatch):
    from abp_deploy.errors import RunInterrupted

    _crash_at(monkeypatch, 3)  # before the first checkpoint
    with pytest.raises(RunInterrupted, match="step 2 of 12, before the first checkpoint: nothing was kept"):
        prune(dataclasses.replace(tiny_prune_config, checkpoint_every=4))
    assert not Path(tiny_prune_config.output + ".incomplete").exists()
    _crash_at(monkeypatch, 7)
    with pytest.raises(RunInterrupted, match=r"step 6 of 12; the last checkpoint is step 4 in .*run\.incomplete"):
        prune(dataclasses.replace(tiny_prune_config, checkpoint_every=4))
    assert not Path(tiny_prune_config.output + ".lock").exists()  # the lock goes with the process's run


def test_resume_refuses_a_checkpoint_changed_since_it_was_saved(tiny_prune_config, monkeypatch):
    cfg = dataclasses.replace(tiny_prune_config, checkpoint_every=4)
    _crash_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        prune(cfg)
    checkpoint = Path(cfg.output + ".incomplete") / "checkpoint"
    pickled = next(p for p in checkpoint.iterdir() if p.suffix in (".pkl", ".bin"))
    pickled.write_bytes(pickled.read_bytes() + b"tampered")
    with pytest.raises(AbpError, match="changed since it was saved: refusing to resume"):
        prune(dataclasses.replace(cfg, resume=True))


def test_a_relative_data_dir_is_recorded_absolute_so_later_stages_find_it(tiny_prune_config, tmp_path, monkeypatch):
    data = Path(tiny_prune_config.data_dir)
    monkeypatch.chdir(data.parent)
    manifest = prune(dataclasses.replace(tiny_prune_config, data_dir=data.name))
    assert manifest["config"]["data_dir"] == str(data.resolve())


def test_train_pooler_trains_the_pooler_as_head_and_keeps_the_encoder_bit_identical(tiny_prune_config, tiny_model_dir):
    manifest = prune(dataclasses.replace(tiny_prune_config, train_pooler=True, max_steps=30))
    run = tiny_prune_config.output
    head = load_tensors(f"{run}/head.safetensors")
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} <= set(head)
    assert "pooler.dense" not in load_mask(f"{run}/mask.safetensors")  # trained, not masked
    fresh, _ = load_classifier(str(tiny_model_dir), get_task("sst2"))
    assert not torch.equal(head["bert.pooler.dense.weight"], fresh.bert.pooler.dense.weight)
    assert manifest["pretrained_weights_unchanged"] is True  # the encoder's weights
    assert weights_hash(fresh) == manifest["base_model_sha256"]  # a fresh base still matches the run
    model, tokenizer, task, _ = load_run_model(run)
    dev = tokenize(load_split(task, "dev", tiny_prune_config.data_dir), tokenizer, tiny_prune_config.max_length)
    assert evaluate(model, task, {"dev": dev_loader(dev, tokenizer, 64)}) == manifest["dev_metrics"]


def test_train_pooler_with_a_weight_training_method_is_a_clear_error(tiny_prune_config):
    with pytest.raises(AbpError, match="--train-pooler"):
        prune(dataclasses.replace(tiny_prune_config, method="finetune", train_pooler=True))


def test_masking_the_unused_pooler_of_a_sentence_transformers_checkpoint_warns_to_train_it(
        tiny_prune_config, tiny_model_dir, caplog):
    pooling = Path(tiny_model_dir) / "1_Pooling"
    pooling.mkdir()
    (pooling / "config.json").write_text(json.dumps({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    try:
        prune(dataclasses.replace(tiny_prune_config, max_steps=2))
        assert "--train-pooler" in caplog.text
        caplog.clear()
        prune(dataclasses.replace(tiny_prune_config, max_steps=2, train_pooler=True, overwrite=True))
        assert "--train-pooler" not in caplog.text
    finally:
        (pooling / "config.json").unlink()
        pooling.rmdir()


def test_pooler_lr_sets_the_trained_poolers_rate_and_needs_train_pooler(tiny_prune_config, tiny_model_dir):
    prune(dataclasses.replace(tiny_prune_config, train_pooler=True, pooler_lr=0.0, max_steps=5))
    head = load_tensors(f"{tiny_prune_config.output}/head.safetensors")
    fresh, _ = load_classifier(str(tiny_model_dir), get_task("sst2"))
    assert torch.equal(head["bert.pooler.dense.weight"], fresh.bert.pooler.dense.weight)  # rate 0: not moved
    with pytest.raises(AbpError, match="--pooler-lr .* needs --train-pooler"):
        prune(dataclasses.replace(tiny_prune_config, pooler_lr=1e-4, overwrite=True))
