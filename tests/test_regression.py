"""Regression (STS-B): the head learns standardised targets and is folded back to score units exactly."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from abp_deploy.apply import load_run_model
from abp_deploy.data import load_split, tokenize
from abp_deploy.evaluation import dev_loader, predict
from abp_deploy.prune import prune
from abp_deploy.regression import TargetScaler, output_layer


@pytest.fixture(scope="session")
def tiny_stsb_dir(tmp_path_factory):
    """A GLUE-layout STS-B whose score (0–5) is the number of 'good' words in the pair: learnable, bounded."""
    root = tmp_path_factory.mktemp("glue-stsb")
    (root / "STS-B").mkdir()
    rng = random.Random(1)
    filler = "the a movie film it this that was is very".split()

    def rows(n: int) -> str:
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        lines = [header]
        for i in range(n):
            goods = rng.randint(0, 5)
            words = rng.sample(filler, 5) + ["good"] * goods
            rng.shuffle(words)
            a, b = " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2:])
            lines.append(f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{goods:.1f}")
        return "\n".join(lines) + "\n"

    (root / "STS-B" / "train.tsv").write_text(rows(192))
    (root / "STS-B" / "dev.tsv").write_text(rows(64))
    return root


def test_scaler_fold_gives_original_units_exactly(tiny_classifier):
    scaler = TargetScaler.fit([0.0, 1.0, 5.0, 2.0])
    out = output_layer(tiny_classifier)
    x = torch.randn(3, out.in_features)
    z = out(x)
    scaler.fold_into(tiny_classifier)
    assert torch.allclose(out(x), z * scaler.std + scaler.mean, atol=1e-5)
    assert scaler.scale(torch.tensor([scaler.mean, scaler.mean + scaler.std])).tolist() == pytest.approx([0.0, 1.0])


def test_abp_learns_a_bounded_regression_target_in_score_units(tiny_prune_config, tiny_stsb_dir):
    cfg = dataclasses.replace(tiny_prune_config, task="stsb", data_dir=str(tiny_stsb_dir), max_steps=60, max_length=24)
    manifest = prune(cfg)
    assert manifest["regression_targets"]["mean"] == pytest.approx(2.5, abs=0.5)
    assert manifest["dev_metrics"]["dev"]["pearson"] > 0.5  # it was ~0 with raw 0–5 targets: loss stuck at the variance
    model, tokenizer, task, _ = load_run_model(cfg.output)
    dev = tokenize(load_split(task, "dev", cfg.data_dir), tokenizer, cfg.max_length)
    scores, labels = predict(model, dev_loader(dev, tokenizer, 64))
    assert abs(float(np.mean(scores)) - float(np.mean(labels))) < 0.5  # predictions are in score units
