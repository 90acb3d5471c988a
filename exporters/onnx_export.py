"""Export an in-memory sequence classifier to an ONNX folder that onnxruntime and optimum load."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from abp_deploy.errors import AbpError
from abp_deploy.exporters.loading import MODEL_FILE

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
_DUMMY_TEXTS = ("a short example", "a second and somewhat longer example sentence for the export")


def require_eager_attention(model: PreTrainedModel) -> None:
    """Refuse a model built with another attention implementation than eager.

    Eager attention traces to the plain MatMul/Softmax/MatMul subgraph (and the additive mask) that
    onnxruntime's attention fusion pattern-matches; the SDPA graph of the same model does not fuse.
    BERT in transformers 4.x fixes its attention class when built, so the model must be loaded eager.
    """
    if model.config._attn_implementation != "eager":
        raise AbpError(f"export needs a model loaded with attn_implementation='eager' (this one uses "
                       f"{model.config._attn_implementation!r}, whose graph onnxruntime does not fuse): "
                       "load it with from_pretrained(..., attn_implementation='eager') or abp_deploy.load_baked")


def input_names(tokenizer) -> list[str]:
    """The model inputs this tokenizer produces, in export order (RoBERTa's has no token_type_ids)."""
    return [name for name in INPUT_NAMES if name in tokenizer.model_input_names]


def _dummy_inputs(tokenizer) -> dict[str, torch.Tensor]:
    """A padded two-example batch: sizes above one so the tracer cannot specialise batch or sequence axes."""
    batch = tokenizer(list(_DUMMY_TEXTS), padding=True, return_tensors="pt")
    return {name: batch[name].to(torch.int64) for name in input_names(tokenizer)}


@torch.no_grad()
def export_onnx(model: PreTrainedModel, tokenizer, out_dir: str | Path, opset: int = 17) -> Path:
    """Write model.onnx (dynamic batch and sequence), config.json and the tokenizer to `out_dir`."""
    require_eager_attention(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    inputs = _dummy_inputs(tokenizer)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs} | {OUTPUT_NAME: {0: "batch"}}
    was_training = model.training
    model.eval()
    try:
        # The TorchScript exporter (dynamo=False, deprecated but kept in torch 2.13): onnxruntime's
        # transformers optimizer fuses its graphs (Attention, EmbedLayerNormalization), while the
        # dynamo exporter's graph of the same model fuses neither, eager or SDPA (onnxruntime 1.32).
        # onnxscript's rewriter.ort_fusions does fuse dynamo graphs: the way out once torch drops this path.
        torch.onnx.export(model, (), str(path), kwargs=inputs, input_names=list(inputs),
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset, dynamo=False)
    finally:
        model.train(was_training)
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return path
