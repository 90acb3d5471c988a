"""Run the ONNX model and the PyTorch model on the same batch; refuse an export whose logits disagree.

Tolerances, measured on MiniLM-L6 (real weights, logits up to 1.9) over 256 reviews of 48 tokens:
max |Δlogits| 1.9e-6 for the raw export and O1, 2.6e-6 at O2 (fused kernels sum in another order),
2.3e-3 at O3, where FastGelu replaces erf-GELU by its tanh approximation. So fp32 keeps 1e-4 up
to O2 and O3 gets 1e-2; int8 is judged by how often it picks the same class, and a regression
model (one output, where argmax always agrees) by a value tolerance: max |Δ| at most a quarter of
the spread (max - min) of PyTorch's outputs on the batch; int8 noise on MiniLM-L6 regression heads
stayed well inside it in a one-off check (not a committed command), and the bar still catches
offsets and scale errors (tests/test_export.py). fp16 (6.4e-4
measured on CPU, see fp16.py) gets 2e-2, room for O3's approximation too; it runs on the CUDA provider
when this onnxruntime has it, the provider it is made for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
from transformers import PreTrainedModel

from abp_deploy.errors import AbpError
from abp_deploy.exporters.loading import CPU_PROVIDER, GPU_PROVIDER, open_session
from abp_deploy.exporters.onnx_export import OUTPUT_NAME

Precision = Literal["fp32", "fp16", "int8"]
FP32_ATOL = 1e-4
APPROX_GELU_ATOL = 1e-2
FP16_ATOL = 2e-2
INT8_REGRESSION_RTOL = 0.25  # of the spread of PyTorch's outputs
INT8_MIN_AGREEMENT = 0.9


class ProviderCannotRun(AbpError):
    """onnxruntime's provider has no kernel for some op of the graph, so the graph could not be checked here."""


@dataclass(frozen=True)
class VerifyReport:
    """How far the ONNX logits are from PyTorch's on one batch, and the bar they had to clear."""

    precision: str
    provider: str
    examples: int
    max_abs_diff: float
    argmax_agreement: float
    atol: float | None
    min_agreement: float | None


@torch.no_grad()
def _torch_logits(model: PreTrainedModel, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The PyTorch model's logits for the batch (eval mode restored to what it was)."""
    was_training = model.training
    model.eval()
    try:
        return model(**{name: torch.from_numpy(array) for name, array in batch.items()}).logits.float().numpy()
    finally:
        model.train(was_training)


def verify_provider(precision: str) -> str:
    """Where a graph is checked: fp16 on the CUDA provider when onnxruntime offers it, all else on the CPU."""
    return GPU_PROVIDER if precision == "fp16" and GPU_PROVIDER in ort.get_available_providers() else CPU_PROVIDER


def verify_onnx(onnx_path: str | Path, model: PreTrainedModel, batch: dict[str, np.ndarray],
                precision: Precision = "fp32", atol: float = FP32_ATOL) -> VerifyReport:
    """Compare logits: fp32/fp16 need max |Δ| <= atol, int8 argmax agreement >= 0.9 (regression: max |Δ| <= a
    quarter of the outputs' spread); AbpError otherwise.

    ProviderCannotRun (an AbpError) when the provider lacks a kernel for the graph, so that a caller can
    report the graph as unverified instead of passing it.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise AbpError(f"unknown precision {precision!r}: use fp32, fp16 or int8")
    provider = verify_provider(precision)
    try:
        session = open_session(onnx_path, providers=[provider])
    except OrtNotImplemented as exc:
        raise ProviderCannotRun(f"onnxruntime's {provider} cannot run this {precision} graph "
                                f"({str(exc).splitlines()[0]}): verify it where the {GPU_PROVIDER} is available") from exc
    missing = [i.name for i in session.get_inputs() if i.name not in batch]
    if missing:
        raise AbpError(f"the verification batch lacks the model inputs {', '.join(missing)}: "
                       "tokenize it with the model's tokenizer")
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    onnx_logits = session.run([OUTPUT_NAME], feeds)[0]
    reference = _torch_logits(model, batch)
    by_value = precision != "int8" or reference.shape[-1] == 1
    if precision == "int8" and by_value:
        atol = INT8_REGRESSION_RTOL * float(np.ptp(reference))
    report = VerifyReport(
        precision=precision, provider=provider, examples=len(reference),
        max_abs_diff=float(np.abs(onnx_logits - reference).max()),
        argmax_agreement=float((onnx_logits.argmax(-1) == reference.argmax(-1)).mean()),
        atol=atol if by_value else None,
        min_agreement=None if by_value else INT8_MIN_AGREEMENT,
    )
    if precision != "int8" and not report.max_abs_diff <= atol:
        raise AbpError(f"{precision} ONNX logits differ from PyTorch by up to {report.max_abs_diff:.3g} (> {atol:g}) "
                       f"on {report.examples} examples: the ONNX graph does not compute this model")
    if precision == "int8" and by_value and not report.max_abs_diff <= atol:
        raise AbpError(f"int8 outputs differ from PyTorch by up to {report.max_abs_diff:.3g}, more than "
                       f"{INT8_REGRESSION_RTOL:.0%} of the spread of PyTorch's outputs ({atol:.3g}) on "
                       f"{report.examples} examples: export without int8 quantisation instead")
    if precision == "int8" and not by_value and report.argmax_agreement < INT8_MIN_AGREEMENT:
        raise AbpError(f"int8 model agrees with PyTorch on {report.argmax_agreement:.1%} of {report.examples} "
                       f"examples (< {INT8_MIN_AGREEMENT:.0%}): export without int8 quantisation instead")
    return report
