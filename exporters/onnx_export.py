"""Export an in-memory sequence classifier to an ONNX folder that onnxruntime and optimum load."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from abp_deploy.exporters.loading import MODEL_FILE

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
_DUMMY_TEXTS = ("a short example", "a second and somewhat longer example sentence for the export")


def _eager_class(module: nn.Module) -> type | None:
    """The eager class that a transformers 4.x model built this SDPA self-attention module in place of, if any."""
    source = vars(sys.modules[type(module).__module__])
    for name, classes in source.items():
        if name.endswith("_SELF_ATTENTION_CLASSES") and type(module) is classes.get("sdpa"):
            return classes["eager"]
    return None


@contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Run the model with eager attention inside the block and restore its own afterwards.

    Eager attention traces to the plain MatMul/Softmax/MatMul subgraph (and the additive mask
    that onnxruntime's attention fusion pattern-matches), so that ONNX graphs fuse reliably.
    BERT in transformers 4.x picks its attention *class* when built (set_attn_implementation only
    warns), so the SDPA modules' classes are swapped to their eager parents, whose forward reads the
    same attributes, and the encoder's mask-building switch is flipped with them.
    """
    swapped = [(m, type(m)) for m in model.modules() if _eager_class(m) is not None]
    switches = [(m, m.attn_implementation) for m in model.modules()
                if isinstance(getattr(m, "attn_implementation", None), str)]
    config_value = model.config._attn_implementation
    try:
        for module, _ in swapped:
            module.__class__ = _eager_class(module)
        for module, _ in switches:
            module.attn_implementation = "eager"
        model.config._attn_implementation = "eager"
        yield model
    finally:
        for module, cls in swapped:
            module.__class__ = cls
        for module, value in switches:
            module.attn_implementation = value
        model.config._attn_implementation = config_value


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    inputs = _dummy_inputs(tokenizer)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs} | {OUTPUT_NAME: {0: "batch"}}
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model):
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
