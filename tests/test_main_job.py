"""`abp-deploy run`: one command chains prune, bake, export and bench, and continues where it stopped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from abp_deploy.errors import AbpError
from abp_deploy.main_job import JobConfig, run_job


@pytest.fixture()
def job(tiny_model_dir, tiny_glue_dir, tmp_path) -> JobConfig:
    return JobConfig(task="sst2", model=str(tiny_model_dir), data_dir=str(tiny_glue_dir), granularity="unstructured",
                     sparsity=0.9, max_steps=4,
                     batch_size=16, max_length=16, batch_sizes=(1,), seq_lens=(16,), threads=1, repeats=3,
                     device="cpu", output=str(tmp_path / "job"))


def test_job_benches_the_task_mask_against_its_dense_baseline(job, tmp_path):
    result = run_job(job, progress=False, say=lambda _: None)
    assert [a["name"] for a in result["artifacts"]] == ["dense", "abp", "abp-int8", "dense-int8"]
    assert [a["quantize"] for a in result["artifacts"]] == [None, None, "int8", "int8"]
    assert result["artifacts"][3]["reference"] and not result["artifacts"][2]["reference"]
    assert result["artifacts"][1]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert (tmp_path / "job" / "report" / "bench.md").is_file()
    lines: list[str] = []
    run_job(job, progress=False, say=lines.append)  # second call reuses every finished stage
    assert [line for line in lines if line.startswith(("prune", "bake", "export"))] == []


def test_job_refuses_to_mix_settings_in_one_folder(job):
    run_job(job, progress=False, say=lambda _: None)
    with pytest.raises(AbpError, match="holds a job with other settings \\(sparsity\\)"):
        run_job(dataclasses.replace(job, sparsity=0.5), progress=False, say=lambda _: None)
    assert json.loads((Path(job.output) / "job.json").read_text())["sparsity"] == 0.9


def test_job_passes_its_gate_settings_to_the_task_mask_only(job):
    gated = dataclasses.replace(job, granularity="structured", sparsity=0.5, gate_budget="flops", unit_scales=True)
    run_job(gated, progress=False, say=lambda _: None)
    runs = Path(job.output) / "runs"
    abp = json.loads((runs / "abp" / "manifest.json").read_text())
    dense = json.loads((runs / "dense" / "manifest.json").read_text())
    assert (abp["granularity"], abp["gate_budget"], abp["unit_scales"]) == ("structured", "flops", True)
    assert abp["gate_init"] == "fisher"  # the job's default for gated granularities
    assert abp["sparsity_definition"] == "encoder_flops_removed"
    assert dense["method"] == "finetune" and dense["sparsity"] == 0.0


def test_job_with_an_ungated_granularity_does_not_trip_over_the_gate_init_default(job):
    run_job(dataclasses.replace(job, granularity="unstructured"), progress=False, say=lambda _: None)
    abp = json.loads((Path(job.output) / "runs" / "abp" / "manifest.json").read_text())
    assert abp["granularity"] == "unstructured" and abp["config"]["gate_init"] == "magnitude"
