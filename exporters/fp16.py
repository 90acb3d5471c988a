"""fp16 weights and activations for onnxruntime's CUDA execution provider; inputs and outputs stay fp32/int64.

The conversion is onnxruntime's transformers optimizer's own (`OnnxModel.convert_float_to_float16` with
`keep_io_types=True`): it casts at the graph's edges, so clients feed the same int64 token ids and read
fp32 logits. Measured on MiniLM-L6 with a 30-step ABP mask (O2 graph, onnxruntime 1.32, 2-core CPU,
benchmarks/RESULTS.md): max |Δlogits| against PyTorch 6.4e-4 on 32 rotten_tomatoes dev examples, the
same dev accuracy on 200, half the file size; the CPU provider runs it, but at 0.93x the fp32
throughput, so fp16 is an artefact for the CUDA provider.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.onnx_model import OnnxModel


def convert_fp16(path: str | Path, out_path: str | Path) -> Path:
    """Write `path` with fp16 weights and activations to `out_path`, keeping fp32 inputs and outputs."""
    model = OnnxModel(onnx.load(str(path)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out_path))
    return Path(out_path)
