"""Export: a ragged tiny BERT goes to ONNX, fuses in every layer, quantises, verifies, and loads in optimum."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import FFN, HEADS
from onnx import helper
from torch import nn
from transformers import BertForSequenceClassification, BertTokenizerFast

from abp_deploy.bake import bake_model, load_baked, save_baked
from abp_deploy.errors import AbpError
from abp_deploy.exporters import pipeline
from abp_deploy.exporters.loading import open_session
from abp_deploy.exporters.model_card import CARD_FILE
from abp_deploy.exporters.onnx_export import MODEL_FILE, export_onnx
from abp_deploy.exporters.optimize import optimize_onnx
from abp_deploy.exporters.pipeline import REPORT_FILE, export_artifact, sample_batch
from abp_deploy.exporters.quantize import quantize_int8
from abp_deploy.exporters.sparsity import sparsify_initializers
from abp_deploy.exporters.verify import ProviderCannotRun, verify_onnx


@pytest.fixture()
def raw_onnx(ragged, tokenizer, tmp_path):
    return export_onnx(ragged, tokenizer, tmp_path / "raw")


def break_attention_fusion(path, layer: int, out_path):
    """Put an exact no-op (Relu of probabilities) after one layer's Softmax, so its pattern no longer matches."""
    model = onnx.load(str(path))
    nodes = model.graph.node
    index, softmax = next((i, n) for i, n in enumerate(nodes) if n.op_type == "Softmax" and f"layer.{layer}/" in n.name)
    probabilities = softmax.output[0]
    softmax.output[0] = probabilities + "_raw"
    nodes.insert(index + 1, helper.make_node("Relu", [probabilities + "_raw"], [probabilities], name="no_op_relu"))
    onnx.save(model, str(out_path))
    return out_path


@pytest.mark.parametrize("level", [None, "O1", "O2", "O3"])
def test_ragged_model_exports_with_logits_matching_pytorch_at_each_level(ragged, tokenizer, tmp_path, level):
    report = export_artifact(ragged, tokenizer, tmp_path / "out", optimize=level)
    fp32 = report.verification[0]
    assert fp32.precision == "fp32" and fp32.examples == 16
    assert fp32.max_abs_diff <= (1e-2 if level == "O3" else 1e-4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [MODEL_FILE, REPORT_FILE, CARD_FILE, "config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json",
         "vocab.txt"])


def test_attention_fuses_in_every_layer_of_a_ragged_model_with_its_own_head_count(raw_onnx, tmp_path):
    report = optimize_onnx(raw_onnx, "O2", tmp_path / "o2.onnx", strict=True)
    assert report.layers == 2 and report.complete and report.missing_attention == {}
    assert report.fused["Attention"] == 2
    assert report.fused["SkipLayerNormalization"] == 4
    assert report.fused["BiasGelu"] == 2
    assert report.fused["EmbedLayerNormalization"] == 1
    attention = [n for n in onnx.load(str(tmp_path / "o2.onnx")).graph.node if n.op_type == "Attention"]
    assert [next(a.i for a in n.attribute if a.name == "num_heads") for n in attention] == HEADS


def test_o1_fuses_no_transformer_ops_and_o3_approximates_gelu(raw_onnx, tmp_path):
    o1 = optimize_onnx(raw_onnx, "O1", tmp_path / "o1.onnx", strict=True)
    o3 = optimize_onnx(raw_onnx, "O3", tmp_path / "o3.onnx", strict=True)
    assert o1.attention == 0 and o1.fused["SkipLayerNormalization"] == 0 and o1.complete
    assert o3.fused["FastGelu"] == 2 and o3.fused["BiasGelu"] == 0 and o3.attention == 2


def test_layer_whose_attention_did_not_fuse_is_named_and_strict_mode_refuses_it(raw_onnx, tmp_path):
    broken = break_attention_fusion(raw_onnx, 1, tmp_path / "broken.onnx")
    report = optimize_onnx(broken, "O2", tmp_path / "o2.onnx")
    assert report.attention == 1 and not report.complete
    assert list(report.missing_attention) == [1] and "layer.1" in report.missing_attention[1]
    with pytest.raises(AbpError, match="attention fused in 1 of 2 layers") as err:
        optimize_onnx(broken, "O2", tmp_path / "o2.onnx", strict=True)
    assert "\n" not in str(err.value)


def test_exported_graph_takes_any_batch_size_and_sequence_length(raw_onnx):
    session = open_session(raw_onnx)
    for shape in [(1, 3), (3, 17)]:
        feeds = {i.name: np.ones(shape, dtype=np.int64) for i in session.get_inputs()}
        assert session.run(["logits"], feeds)[0].shape == (shape[0], 2)


def test_export_refuses_a_model_without_eager_attention(tiny_model_dir, tokenizer, tmp_path):
    sdpa = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2, attn_implementation="sdpa")
    with pytest.raises(AbpError, match="attn_implementation='eager'"):
        export_onnx(sdpa, tokenizer, tmp_path / "raw")
    assert not (tmp_path / "raw" / "model.onnx").exists()


def test_int8_model_picks_the_same_class_as_pytorch_and_is_smaller(ragged, tokenizer, tmp_path):
    report = export_artifact(ragged, tokenizer, tmp_path / "out", optimize="O2", quantize="int8")
    int8 = report.verification[1]
    assert int8.precision == "int8" and int8.argmax_agreement >= 0.9
    assert report.file_bytes["model.onnx"] == report.file_bytes["quantized"] < report.file_bytes["optimized"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / MODEL_FILE)).graph.node}
    assert {"QAttention", "MatMulInteger"} <= ops


def test_int8_verification_fails_when_classes_disagree(raw_onnx, ragged, tokenizer, tmp_path):
    quantized = quantize_int8(raw_onnx, tmp_path / "q.onnx")
    with torch.no_grad():
        ragged.classifier.weight.neg_()  # the PyTorch model now prefers the other class
        ragged.classifier.bias.neg_()
    with pytest.raises(AbpError, match="int8 model agrees with PyTorch on"):
        verify_onnx(quantized, ragged, sample_batch(tokenizer), precision="int8")


@pytest.fixture()
def regressor(ragged):
    """The ragged model with a one-output (STS-B style) head, whose argmax always agrees with anything."""
    torch.manual_seed(2)
    ragged.classifier = nn.Linear(ragged.config.hidden_size, 1)
    ragged.config.num_labels, ragged.config.problem_type = 1, "regression"
    return ragged


def test_int8_regression_model_is_verified_by_value(regressor, tokenizer, tmp_path):
    report = export_artifact(regressor, tokenizer, tmp_path / "out", optimize="O2", quantize="int8")
    int8 = report.verification[1]
    assert int8.min_agreement is None and 0 < int8.max_abs_diff <= int8.atol


@pytest.mark.parametrize("corrupt", [lambda w: w.neg_(), lambda w: w.mul_(3.0)], ids=["sign", "scale"])
def test_int8_regression_verification_fails_when_values_disagree(regressor, tokenizer, tmp_path, corrupt):
    quantized = quantize_int8(export_onnx(regressor, tokenizer, tmp_path / "raw"), tmp_path / "q.onnx")
    with torch.no_grad():
        corrupt(regressor.classifier.weight)
    with pytest.raises(AbpError, match="int8 outputs differ from PyTorch by up to .* of the spread"):
        verify_onnx(quantized, regressor, sample_batch(tokenizer), precision="int8")


def test_export_report_records_shape_fusions_sizes_and_versions(ragged, tokenizer, tmp_path):
    export_artifact(ragged, tokenizer, tmp_path / "out", optimize="O2", quantize="int8")
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["heads"] == HEADS and report["intermediate_sizes"] == FFN
    assert report["fusion"]["fused"]["Attention"] == 2 and report["fusion"]["missing_attention"] == {}
    assert set(report["file_bytes"]) == {"exported", "optimized", "quantized", "model.onnx"}
    assert [v["precision"] for v in report["verification"]] == ["fp32", "int8"]
    assert {"onnx", "onnxruntime", "torch", "transformers"} <= set(report["versions"])


def test_fp16_export_keeps_fp32_inputs_and_outputs_and_is_verified_where_it_runs(ragged, tokenizer, tmp_path):
    report = export_artifact(ragged, tokenizer, tmp_path / "out", optimize="O2", precision="fp16")
    fp32, fp16 = report.verification
    assert (fp32.precision, fp16.precision) == ("fp32", "fp16") and report.unverified == []
    assert fp16.max_abs_diff <= fp16.atol and fp16.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    graph = onnx.load(str(tmp_path / "out" / MODEL_FILE)).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 3
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    assert report.file_bytes["fp16"] < 0.6 * report.file_bytes["optimized"]


def test_fp16_graph_the_provider_cannot_run_is_reported_unverified_not_passed(ragged, tokenizer, tmp_path,
                                                                                monkeypatch):
    def cannot_run(path, model, batch, precision, atol):
        if precision == "fp16":
            raise ProviderCannotRun("onnxruntime's CPUExecutionProvider cannot run this fp16 graph")
        return verify_onnx(path, model, batch, precision, atol=atol)

    monkeypatch.setattr(pipeline, "verify_onnx", cannot_run)
    report = export_artifact(ragged, tokenizer, tmp_path / "out", optimize="O2", precision="fp16")
    assert [c.precision for c in report.verification] == ["fp32"]
    assert report.unverified == ["onnxruntime's CPUExecutionProvider cannot run this fp16 graph"]
    card = (tmp_path / "out" / CARD_FILE).read_text()
    assert "**not verified**: onnxruntime's CPUExecutionProvider cannot run this fp16 graph" in card


def test_fp16_with_int8_is_refused_in_one_line(ragged, tokenizer, tmp_path):
    with pytest.raises(AbpError, match="fp16 precision and int8 quantization exclude each other"):
        export_artifact(ragged, tokenizer, tmp_path / "out", precision="fp16", quantize="int8")


def test_failed_verification_leaves_no_output_folder_and_keeps_an_existing_one(ragged, tokenizer, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setattr(pipeline, "FP32_ATOL", -1.0)  # no export can pass
    with pytest.raises(AbpError, match="ONNX logits differ from PyTorch"):
        export_artifact(ragged, tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "previous.txt").write_text("a previous export")
    with pytest.raises(AbpError):
        export_artifact(ragged, tokenizer, tmp_path / "out", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]


def test_existing_output_folder_is_refused_without_overwrite(ragged, tokenizer, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(AbpError, match="already exists"):
        export_artifact(ragged, tokenizer, tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_or_missing_onnx_file_raises_a_one_line_abp_error(raw_onnx, damage):
    if damage == "truncated":
        raw_onnx.write_bytes(raw_onnx.read_bytes()[: raw_onnx.stat().st_size // 2])
        expected = "is not a valid ONNX model"
    else:
        raw_onnx.unlink()
        expected = "no ONNX model at"
    with pytest.raises(AbpError, match=expected) as err:
        open_session(raw_onnx.parent)
    assert "\n" not in str(err.value)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA can start here")
@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's own warning before the fallback
def test_a_provider_that_cannot_start_is_an_error_not_a_silent_cpu_fallback(raw_onnx):
    with pytest.raises(AbpError, match="could not start CUDAExecutionProvider .* fell back to CPUExecutionProvider"):
        open_session(raw_onnx, providers=["CUDAExecutionProvider"])


def test_optimum_pipeline_turns_text_into_the_label_pytorch_predicts(ragged, tokenizer, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import pipeline as hf_pipeline

    export_artifact(ragged, tokenizer, tmp_path / "out", optimize="O2", quantize=None)
    onnx_model = ORTModelForSequenceClassification.from_pretrained(tmp_path / "out")
    shipped_tokenizer = BertTokenizerFast.from_pretrained(tmp_path / "out")
    classify = hf_pipeline("text-classification", model=onnx_model, tokenizer=shipped_tokenizer)
    texts = ["a very good movie", "this film was awful and not great"]
    with torch.no_grad():
        expected = ragged(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert [r["label"] for r in classify(texts)] == [ragged.config.id2label[i] for i in expected]


def zero_out_weights(path, fraction: float, out_path):
    """Copy of an export with the smallest `fraction` of every MatMul weight set to zero."""
    model = onnx.load(str(path))
    for initializer in model.graph.initializer:
        array = onnx.numpy_helper.to_array(initializer)
        if array.ndim == 2 and initializer.name.startswith("onnx::MatMul"):
            array = np.where(np.abs(array) >= np.quantile(np.abs(array), fraction), array, 0).astype(array.dtype)
            initializer.CopyFrom(onnx.numpy_helper.from_array(array, initializer.name))
    onnx.save(model, str(out_path))
    return out_path


def test_sparse_initializers_shrink_a_mostly_zero_model_and_load_with_identical_logits(raw_onnx, tmp_path):
    zeros = zero_out_weights(raw_onnx, 0.9, tmp_path / "zeros.onnx")
    sizes = sparsify_initializers(zeros, tmp_path / "sparse.onnx", min_sparsity=0.5)
    assert sizes["tensors_converted"] > 0 and sizes["bytes_after"] < sizes["bytes_before"]
    onnx.checker.check_model(str(tmp_path / "sparse.onnx"))
    feeds = {"input_ids": np.array([[2, 7, 9, 3]], dtype=np.int64), "attention_mask": np.ones((1, 4), dtype=np.int64),
             "token_type_ids": np.zeros((1, 4), dtype=np.int64)}
    dense, sparse = (open_session(path).run(["logits"], feeds)[0] for path in (zeros, tmp_path / "sparse.onnx"))
    np.testing.assert_array_equal(dense, sparse)


def test_half_zero_matrices_stay_dense_because_sparse_storage_would_be_larger(raw_onnx, tmp_path):
    zeros = zero_out_weights(raw_onnx, 0.5, tmp_path / "zeros.onnx")
    sizes = sparsify_initializers(zeros, tmp_path / "sparse.onnx", min_sparsity=0.5)
    sparse = [t.values.name for t in onnx.load(str(tmp_path / "sparse.onnx")).graph.sparse_initializer]
    assert not [name for name in sparse if name.startswith("onnx::MatMul")]
    assert sizes["bytes_after"] <= sizes["bytes_before"]


def test_layer_with_all_heads_closed_bakes_without_its_attention_and_still_fuses_the_rest(tiny_classifier, tokenizer,
                                                                                           tmp_path):
    model = tiny_classifier
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.output.dense.weight.zero_()  # every head of layer 0 closed
    summary = bake_model(model)
    assert summary.sublayers_removed == {"attention": [0], "ffn": []} and summary.heads == [0, 4]
    baked = load_baked(save_baked(model, tokenizer, tmp_path / "baked", summary), attn_implementation="eager")
    report = export_artifact(baked, tokenizer, tmp_path / "out", optimize="O2", quantize="int8", strict_fusion=True)
    assert report.verification[0].max_abs_diff <= 1e-4 and report.verification[1].argmax_agreement >= 0.9
    assert report.fusion.layers == 1 and report.fusion.fused["Attention"] == 1 and report.fusion.complete
    raw = onnx.load(str(tmp_path / "out" / MODEL_FILE))
    assert not [n.name for n in raw.graph.node if "layer.0/attention/self" in n.name]
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text())["heads"] == [0, 4]
