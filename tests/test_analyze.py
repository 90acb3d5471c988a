"""`abp-deploy analyze`: topology and overlap of masks, deterministic for fixed inputs."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from abp_deploy.analyze import JSON_FILE, PLOTS, analyze, write_analysis
from abp_deploy.cli.app import app
from abp_deploy.errors import AbpError
from abp_deploy.prune import prune


@pytest.fixture()
def two_seeds(tiny_prune_config, tmp_path):
    runs = []
    for seed in (1, 2):
        cfg = dataclasses.replace(tiny_prune_config, seed=seed, max_steps=4, output=str(tmp_path / f"s{seed}"))
        prune(cfg)
        runs.append(cfg.output)
    return runs


def test_analysis_is_deterministic_and_a_run_overlaps_itself_fully(two_seeds, tmp_path):
    first = write_analysis(analyze(two_seeds + [two_seeds[0]]), tmp_path / "a")
    second = write_analysis(analyze(two_seeds + [two_seeds[0]]), tmp_path / "b")
    assert (first / JSON_FILE).read_text() == (second / JSON_FILE).read_text()
    for plot in PLOTS:
        assert (first / plot).stat().st_size > 0
    result = analyze(two_seeds + [two_seeds[0]])
    same = next(p for p in result["overlap"] if p["a"] == p["b"])
    assert same["weights_jaccard"] == 1.0
    different = result["overlap"][0]
    assert 0.0 < different["weights_jaccard"] < 1.0


def test_analysis_reports_the_sparsity_of_each_matrix_type(two_seeds):
    run = analyze(two_seeds[:1])["runs"][0]
    per_type = run["sparsity_by_layer_and_type"][0]
    assert per_type["query"] == pytest.approx(0.5, abs=0.01) and per_type["output"] == pytest.approx(0.5, abs=0.01)
    assert run["heads_alive"] == [4, 4]


def test_analysis_of_a_gated_run_counts_the_closed_heads(tiny_prune_config):
    prune(dataclasses.replace(tiny_prune_config, granularity="head", sparsity=0.5, max_steps=4))
    run = analyze([tiny_prune_config.output])["runs"][0]
    assert sum(run["heads_alive"]) == 4 and run["neurons_alive"] == [64, 64]


def test_analysis_refuses_a_dense_run(tiny_prune_config):
    prune(dataclasses.replace(tiny_prune_config, method="finetune", sparsity=None, max_steps=2))
    with pytest.raises(AbpError, match="has no mask"):
        analyze([tiny_prune_config.output])


def test_analyze_cli_prints_survivors_and_overlap(two_seeds, tmp_path):
    result = CliRunner().invoke(app, ["analyze", *two_seeds, "-o", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "heads alive / layer" in result.output and "(Jaccard)" in result.output
