"""`abp-deploy bench`: ONNX dev scores equal PyTorch's, the grid is timed side by side, reports are written."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from abp_deploy.bench import BenchConfig, bench
from abp_deploy.bench_report import JSON_FILE, MD_FILE, PLOTS, write_report
from abp_deploy.cli.app import app
from abp_deploy.data import load_split, tokenize
from abp_deploy.errors import AbpError
from abp_deploy.evaluation import dev_loader, evaluate
from abp_deploy.export_run import export_model
from abp_deploy.exporters.loading import open_session
from abp_deploy.latency import time_interleaved
from abp_deploy.memory_probe import peak_memory_mb
from abp_deploy.onnx_scoring import score_onnx
from abp_deploy.tasks import get_task

FAST = BenchConfig(batch_sizes=(1, 4), seq_lens=(16,), threads=1, warmup=1, repeats=5, progress=False)


@pytest.fixture()
def exported(sparse_run, tmp_path):
    """Two artefacts of one run: fp32 O2 (the 'baseline' here) and int8."""
    _, src = export_model(sparse_run, tmp_path / "fp32", optimize="O2")
    export_model(sparse_run, tmp_path / "int8", optimize="O2", quantize="int8")
    return tmp_path / "fp32", tmp_path / "int8", src


def test_onnx_dev_score_equals_the_pytorch_score_of_the_same_model(exported, tiny_glue_dir):
    fp32, _, src = exported
    task = get_task("sst2")
    ds = tokenize(load_split(task, "dev", str(tiny_glue_dir)), src.tokenizer, 16)
    expected = evaluate(src.model, task, {"dev": dev_loader(ds, src.tokenizer, 8)})
    got = score_onnx(fp32, open_session(fp32))
    assert got["dev"]["accuracy"] == pytest.approx(expected["dev"]["accuracy"])


def test_interleaved_timing_gives_ordered_percentiles_for_every_session(exported):
    fp32, int8, _ = exported
    stats = time_interleaved({"a": open_session(fp32), "b": open_session(int8)}, 2, 16, 40, warmup=1, repeats=7)
    for s in stats.values():
        assert s.runs == 7 and 0 < s.p50_ms <= s.p90_ms <= s.p99_ms
        assert s.throughput == pytest.approx(2 / (s.p50_ms / 1e3))


def test_bench_writes_json_markdown_and_plots_with_ratios_against_the_baseline(exported, tmp_path):
    fp32, int8, _ = exported
    result = bench([int8], baseline=fp32, cfg=FAST)
    base, other = result["artifacts"]
    assert result["baseline"] == "fp32" and len(other["latency"]) == 2
    for cell, ratio, base_cell in zip(other["latency"], other["vs_baseline"]["latency"], base["latency"]):
        assert ratio["speedup_p50"] == pytest.approx(base_cell["p50_ms"] / cell["p50_ms"])
        assert ratio["throughput_ratio"] == pytest.approx(cell["throughput"] / base_cell["throughput"])
    assert other["vs_baseline"]["size_ratio"] < 0.6  # int8 weights
    assert other["memory"]["peak_rss_mb"] > 0
    out = write_report(result, tmp_path / "report")
    assert json.loads((out / JSON_FILE).read_text())["artifacts"][1]["name"] == "int8"
    assert "| int8 |" in (out / MD_FILE).read_text()
    for plot in PLOTS:
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_memory_probe_reports_its_own_peak_not_the_high_water_mark_of_a_big_parent(exported):
    fp32, _, _ = exported
    ballast = np.ones(1 << 27)  # 1 GiB, written: this process's peak is now above 1 GiB, as under `abp-deploy run`
    probe = peak_memory_mb(fp32, batch=4, seq=16, threads=1, vocab_size=40)
    del ballast
    assert 0 < probe["model_mb"] < probe["peak_rss_mb"] < 512


def test_bench_of_a_truncated_onnx_file_fails_with_one_clear_line(exported):
    fp32, _, _ = exported
    data = (fp32 / "model.onnx").read_bytes()
    (fp32 / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(AbpError, match="not a valid ONNX model"):
        bench([fp32], cfg=FAST)


@pytest.mark.parametrize("setting", [{"repeats": 0}, {"warmup": -1}, {"threads": 0}, {"max_eval_samples": 0},
                                     {"seq_lens": (0,)}], ids=lambda d: next(iter(d)))
def test_bench_refuses_settings_it_cannot_measure_before_any_work(tmp_path, setting):
    option = "--" + next(iter(setting)).replace("_", "-")
    with pytest.raises(AbpError, match=f"{option} .* is too small: pass"):
        bench([tmp_path / "not-even-an-artefact"], cfg=dataclasses.replace(FAST, **setting))


def test_bench_refuses_sequences_longer_than_the_models_positions(exported):
    fp32, _, _ = exported
    with pytest.raises(AbpError, match="--seq-lens 128 is longer than 64 tokens, the most that fp32 takes"):
        bench([fp32], cfg=dataclasses.replace(FAST, seq_lens=(16, 128)))


def test_bench_times_artefacts_with_different_vocabularies_side_by_side(exported, other_base_model, tiny_model_dir,
                                                                         tiny_glue_dir, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from abp_deploy.exporters.pipeline import export_artifact

    fp32, _, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bigger = BertForSequenceClassification.from_pretrained(other_base_model, num_labels=2, attn_implementation="eager")
    assert bigger.config.vocab_size > tokenizer.vocab_size
    provenance = {"task": "sst2", "max_length": 16, "data_dir": str(tiny_glue_dir)}
    export_artifact(bigger, tokenizer, tmp_path / "bigger", optimize=None, extra_report={"provenance": provenance})
    result = bench([fp32], baseline=tmp_path / "bigger", cfg=dataclasses.replace(FAST, memory=False, int8_reference=False))
    assert [len(row["latency"]) for row in result["artifacts"]] == [2, 2]


def test_bench_of_an_artefact_without_model_onnx_says_to_re_export(exported, tmp_path):
    fp32, _, _ = exported
    (fp32 / "model.onnx").unlink()
    with pytest.raises(AbpError, match="fp32 has no model.onnx: re-run abp-deploy export"):
        bench([fp32], cfg=FAST)


def test_bench_of_a_folder_without_export_report_says_to_export(tmp_path):
    with pytest.raises(AbpError, match="not an abp-deploy ONNX artefact"):
        bench([tmp_path], cfg=FAST)


def test_bench_cli_prints_the_grid_and_traffic_tables_and_rejects_a_bad_grid(exported, tmp_path):
    fp32, int8, _ = exported
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", str(int8), "--batch-sizes", "one", "-o", str(tmp_path / "r0")])
    assert bad.exit_code == 1 and "--batch-sizes takes positive integers" in bad.output
    ok = runner.invoke(app, ["bench", str(int8), "--baseline", str(fp32), "-o", str(tmp_path / "r"), "--batch-sizes",
                             "1", "--seq-lens", "8", "--repeats", "3", "--threads", "1", "--no-memory", "--traffic",
                             "--traffic-repeats", "1"],
                       env={"COLUMNS": "200"})
    assert ok.exit_code == 0, ok.output
    assert "speed-up" in ok.output and "Real traffic" in ok.output and (tmp_path / "r" / MD_FILE).is_file()
    assert np.isfinite(json.loads((tmp_path / "r" / JSON_FILE).read_text())["artifacts"][0]["latency"][0]["p50_ms"])


def test_traffic_mode_times_the_dev_texts_through_the_runtime_and_compares_session_layouts(exported, tmp_path):
    fp32, int8, _ = exported
    cfg = dataclasses.replace(FAST, threads=2, traffic=True, traffic_batch=8, traffic_repeats=1, memory=False)
    result = bench([int8], baseline=fp32, cfg=cfg)
    assert result["traffic"]["texts"] == 32 and 0 < result["traffic"]["tokens"]["mean"] <= 16
    for row in result["artifacts"]:
        batched, single = row["traffic"]
        assert (batched["mode"], batched["calls"], batched["sentences"]) == ("batched", 4, 32)
        assert (single["mode"], single["calls"], single["sentences"]) == ("single", 32, 32)
        assert all(t["sentences_per_s"] > 0 and 0 < t["p50_ms"] <= t["p99_ms"] for t in row["traffic"])
        assert [(c["sessions"], c["threads"]) for c in row["layouts"]] == [(1, 2), (2, 1)]
    assert [q["mode"] for q in result["artifacts"][1]["vs_baseline"]["traffic"]] == ["batched", "single"]
    text = (write_report(result, tmp_path / "report") / MD_FILE).read_text()
    assert "## Real traffic: 32 sst2 dev texts at their own lengths" in text
    assert "| int8 | CPU | one request at a time | 1 × 2 |" in text
    assert "one-thread sessions" in text and "one 2-thread session" in text


def test_grid_only_bench_has_no_traffic_section(exported, tmp_path):
    fp32, _, _ = exported
    result = bench([fp32], cfg=dataclasses.replace(FAST, memory=False))
    assert result["traffic"] is None and "traffic" not in result["artifacts"][0]
    assert "Real traffic" not in (write_report(result, tmp_path / "r") / MD_FILE).read_text()


def test_every_bench_with_a_baseline_also_shows_the_baseline_in_int8(exported):
    fp32, _, _ = exported
    result = bench([], baseline=fp32, cfg=FAST)
    names = [r["name"] for r in result["artifacts"]]
    assert names == ["fp32", "fp32-int8"]
    reference = result["artifacts"][1]
    assert reference["reference"] and reference["quantize"] == "int8"
    assert reference["vs_baseline"]["size_ratio"] < 0.6 and abs(reference["vs_baseline"]["score_delta"]["dev"]) <= 0.2
    assert [r["name"] for r in bench([], baseline=fp32, cfg=dataclasses.replace(FAST, int8_reference=False))["artifacts"]] \
        == ["fp32"]
