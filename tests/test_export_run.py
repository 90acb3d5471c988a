"""`abp-deploy export`: a run or a baked folder becomes a verified ONNX folder, or nothing at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from abp_deploy.bake_run import bake_run
from abp_deploy.cli.app import app
from abp_deploy.errors import AbpError
from abp_deploy.export_run import export_model, load_source
from abp_deploy.exporters.loading import open_session
from abp_deploy.exporters.model_card import CARD_FILE
from abp_deploy.runtime import Classifier


def onnx_logits(folder, batch):
    session = open_session(folder)
    return session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})[0]


def test_export_of_a_run_computes_the_baked_models_logits_on_its_task_examples(sparse_run, tmp_path):
    report, src = export_model(sparse_run, tmp_path / "onnx", optimize="O2")
    assert src.verify_data == "32 sst2 dev examples"
    with torch.no_grad():
        expected = src.model(**{k: torch.from_numpy(v) for k, v in src.verify_batch.items()}).logits.numpy()
    np.testing.assert_allclose(onnx_logits(tmp_path / "onnx", src.verify_batch), expected, atol=1e-4)
    written = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert written["provenance"]["task"] == "sst2" and written["bake"]["heads"] == report.heads
    assert written["fusion"]["fused"]["Attention"] == 2


def test_export_of_a_baked_folder_matches_export_of_its_run(sparse_run, tmp_path):
    bake_run(sparse_run, tmp_path / "baked")
    export_model(sparse_run, tmp_path / "from_run", optimize=None)
    _, src = export_model(tmp_path / "baked", tmp_path / "from_baked", optimize=None)
    assert src.verify_data.endswith("sst2 dev examples")
    np.testing.assert_allclose(onnx_logits(tmp_path / "from_baked", src.verify_batch),
                               onnx_logits(tmp_path / "from_run", src.verify_batch), atol=1e-5)


def test_export_refuses_a_run_whose_base_model_changed_and_leaves_nothing(sparse_run, other_base_model, tmp_path):
    with pytest.raises(AbpError, match="not the one this run was pruned from"):
        export_model(sparse_run, tmp_path / "onnx", base_model=str(other_base_model))
    assert not list(tmp_path.glob("onnx*"))


def test_export_of_a_folder_that_is_neither_run_nor_baked_says_what_to_pass(tmp_path):
    with pytest.raises(AbpError, match="neither a prune run"):
        load_source(tmp_path)


def test_export_cli_reports_fusion_and_verification_and_rejects_unknown_format(sparse_run, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["export", sparse_run, "-o", str(tmp_path / "onnx"), "--quantize", "int8"],
                       env={"COLUMNS": "200"})
    assert ok.exit_code == 0, ok.output
    assert "attention fused in 2 of 2 layers" in ok.output and "verified int8" in ok.output
    bad = runner.invoke(app, ["export", sparse_run, "-o", str(tmp_path / "tfl"), "--format", "tflite"])
    assert bad.exit_code == 1 and "unknown export format 'tflite'" in bad.output
    assert not (tmp_path / "tfl").exists()


def test_export_writes_a_model_card_that_names_the_dev_score_base_model_and_structure(sparse_run, tmp_path):
    from huggingface_hub import ModelCard

    export_model(sparse_run, tmp_path / "onnx")
    manifest = json.loads((Path(sparse_run) / "manifest.json").read_text())
    card = ModelCard.load(tmp_path / "onnx" / CARD_FILE)
    result = card.data.eval_results[0]
    assert (result.dataset_name, result.metric_type) == ("sst2", "accuracy")
    assert result.metric_value == manifest["dev_metrics"]["dev"]["accuracy"]
    assert f"accuracy {manifest['dev_metrics']['dev']['accuracy']:.4f} on dev" in card.text
    assert manifest["base_model_sha256"] in card.text and "| heads kept |" in card.text
    assert "fp32 on CPUExecutionProvider" in card.text and "Classifier(" in card.text


def test_triton_export_writes_a_repository_whose_config_parses_and_names_the_graphs_inputs_and_output(
        sparse_run, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    export_model(sparse_run, tmp_path / "repo", fmt="triton", name="sst2-abp")
    entry = tmp_path / "repo" / "sst2-abp"
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    session = open_session(entry / "1")
    assert config.name == "sst2-abp" and config.backend == "onnxruntime" and config.max_batch_size > 0
    assert [(i.name, list(i.dims)) for i in config.input] == [(i.name, [-1]) for i in session.get_inputs()]
    assert all(i.data_type == model_config_pb2.TYPE_INT64 for i in config.input)
    (output,) = config.output
    assert (output.name, list(output.dims), output.data_type) == (session.get_outputs()[0].name, [2],
                                                                  model_config_pb2.TYPE_FP32)
    assert (entry / output.label_filename).read_text().split() == ["negative", "positive"]
    assert config.HasField("dynamic_batching")
    assert Classifier(entry / "1").predict(["a good movie"])[0].label in ("negative", "positive")


def test_export_cli_writes_fp16_and_triton_and_refuses_a_name_without_triton(sparse_run, tmp_path):
    runner = CliRunner()
    fp16 = runner.invoke(app, ["export", sparse_run, "-o", str(tmp_path / "fp16"), "--precision", "fp16"],
                         env={"COLUMNS": "200"})
    assert fp16.exit_code == 0, fp16.output
    assert "verified fp16" in fp16.output
    assert json.loads((tmp_path / "fp16" / "export_report.json").read_text())["precision"] == "fp16"
    triton = runner.invoke(app, ["export", sparse_run, "-o", str(tmp_path / "repo"), "--format", "triton"],
                           env={"COLUMNS": "200"})
    assert triton.exit_code == 0, triton.output
    assert "tritonserver --model-repository" in triton.output
    assert (tmp_path / "repo" / "run" / "1" / "model.onnx").is_file()
    named = runner.invoke(app, ["export", sparse_run, "-o", str(tmp_path / "x"), "--name", "m"])
    assert named.exit_code == 1 and "use it with --format triton" in named.output
