"""A Triton Inference Server model repository entry for an exported folder (onnxruntime backend).

Layout: REPO/<name>/config.pbtxt, REPO/<name>/labels.txt (classification) and REPO/<name>/1/, which is
the exported folder itself (model.onnx, tokenizer, config, model card). Tokenisation stays in the
client, with the tokenizer in 1/. Inputs and outputs are named and typed from the graph; batch and
sequence axes are variable. Triton's dynamic batcher merges only requests whose inputs have the same
shape, so a client that pads to a few fixed lengths lets it merge requests of different texts.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx

from abp_deploy.errors import AbpError
from abp_deploy.exporters.loading import MODEL_FILE

VERSION = "1"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MAX_BATCH_SIZE = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TYPES = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
          onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
# fp16 graphs are made for the CUDA provider; dynamic int8 graphs for the CPU; fp32 runs where Triton puts it.
_KINDS = {"fp16": "KIND_GPU", "int8": "KIND_CPU"}


def check_name(name: str) -> str:
    """A model name Triton accepts as a repository folder."""
    if not _NAME.match(name):
        raise AbpError(f"Triton model name {name!r} must be letters, digits, '_', '.' or '-': pass --name NAME")
    return name


def _tensor(value: onnx.ValueInfoProto, dims: str, extra: str = "") -> str:
    """One input or output entry; `dims` excludes the batch axis, which max_batch_size > 0 implies."""
    kind = value.type.tensor_type.elem_type
    if kind not in _TYPES:
        raise AbpError(f"graph tensor {value.name} has ONNX type {kind}, which abp-deploy does not map to Triton: "
                       "export with --precision fp32 or fp16")
    return f'  {{\n    name: "{value.name}"\n    data_type: {_TYPES[kind]}\n    dims: [ {dims} ]\n{extra}  }}'


def triton_config(model_path: str | Path, name: str, num_outputs: int, precision: str,
                  labels: bool = False, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """config.pbtxt text: the onnxruntime backend, the graph's real inputs and output, dynamic batching."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs = ",\n".join(_tensor(i, "-1") for i in graph.input)
    label_file = f'    label_filename: "{LABELS_FILE}"\n' if labels else ""
    output = _tensor(graph.output[0], str(num_outputs), label_file)
    kind = f"instance_group [ {{ kind: {_KINDS[precision]} }} ]\n" if precision in _KINDS else ""
    return (f"# Written by abp-deploy. Tokenise in the client with {VERSION}/tokenizer.json; requests are batched\n"
            f"# together only when their inputs have the same shape (pad to a few fixed lengths).\n"
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{output}\n]\n"
            f"# Raise max_queue_delay_microseconds to trade latency for larger batches.\n"
            f"dynamic_batching {{ }}\n{kind}")


def write_triton_entry(model_dir: Path, name: str, labels: list[str], precision: str) -> Path:
    """config.pbtxt and labels.txt beside the exported folder already written at model_dir/1."""
    classify = len(labels) > 1  # one output is a regression value, not a class
    if classify:
        (model_dir / LABELS_FILE).write_text("\n".join(labels) + "\n")
    text = triton_config(model_dir / VERSION / MODEL_FILE, name, len(labels), precision, labels=classify)
    (model_dir / CONFIG_FILE).write_text(text)
    return model_dir
