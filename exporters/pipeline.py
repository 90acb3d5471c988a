"""Export -> optimise -> (fp16 | int8) -> verify -> model card, into a folder that appears only once verified."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from transformers import PreTrainedModel

from abp_deploy.atomic import atomic_dir
from abp_deploy.errors import AbpError
from abp_deploy.versions import versions
from abp_deploy.exporters.fp16 import convert_fp16
from abp_deploy.exporters.loading import REPORT_FILE
from abp_deploy.exporters.model_card import CARD_FILE, model_card
from abp_deploy.exporters.onnx_export import export_onnx, input_names
from abp_deploy.exporters.optimize import LEVELS, FusionReport, Level, optimize_onnx
from abp_deploy.exporters.quantize import quantize_int8
from abp_deploy.exporters.sparsity import sparsify_initializers
from abp_deploy.exporters.verify import (APPROX_GELU_ATOL, FP16_ATOL, FP32_ATOL, ProviderCannotRun, VerifyReport,
                                         verify_onnx)
from abp_deploy.structure import encoder_layers
from abp_deploy.sublayers import ffn_width, head_count

_SAMPLE_TEXTS = (
    "a gripping, beautifully acted film", "the plot falls apart in the second half", "not bad at all",
    "i would not watch this again", "one of the best movies of the year, funny and moving",
    "dull", "the soundtrack is great but the dialogue is awful", "it is what it is",
    "a total waste of two hours and a good cast", "charming", "the director knows exactly what he is doing",
    "boring, predictable and far too long", "an honest little story told with care",
    "i laughed, i cried, i left happy", "the effects cannot save a script this thin", "fine",
)


@dataclass(frozen=True)
class ExportReport:
    """What was shipped: the graph's fusions, the model's shape, file sizes and the verification figures."""

    optimize: str | None
    precision: str
    quantize: str | None
    sparse_storage: bool
    opset: int
    fusion: FusionReport | None
    heads: list[int]
    intermediate_sizes: list[int]
    file_bytes: dict[str, int]
    verification: list[VerifyReport]
    unverified: list[str]
    versions: dict[str, str]


def sample_batch(tokenizer, texts: tuple[str, ...] = _SAMPLE_TEXTS) -> dict[str, np.ndarray]:
    """A padded int64 batch of `texts` with the inputs the export takes."""
    batch = tokenizer(list(texts), padding=True, return_tensors="np")
    return {name: batch[name].astype(np.int64) for name in input_names(tokenizer)}


def _checked(path: Path, model: PreTrainedModel, batch: dict[str, np.ndarray], precision: str, atol: float,
             checks: list[VerifyReport], unverified: list[str]) -> None:
    """Verify `path` into `checks`; an fp16 graph the provider here cannot run goes to `unverified`, never passed."""
    try:
        checks.append(verify_onnx(path, model, batch, precision, atol=atol))
    except ProviderCannotRun as exc:
        if precision != "fp16":
            raise
        unverified.append(str(exc))


def _build(model: PreTrainedModel, tokenizer, work: Path, optimize: Level | None, precision: str,
           quantize: str | None, sparse_storage: bool, batch: dict[str, np.ndarray], strict_fusion: bool,
           opset: int) -> ExportReport:
    """Run every stage in `work`, replacing model.onnx after each, and verify after each change of the graph."""
    path = export_onnx(model, tokenizer, work, opset=opset)
    sizes = {"exported": path.stat().st_size}
    fusion = None
    if optimize:
        staged = work / "model.optimized.onnx"
        fusion = optimize_onnx(path, optimize, staged, strict=strict_fusion)
        os.replace(staged, path)
        sizes["optimized"] = path.stat().st_size
    atol = APPROX_GELU_ATOL if optimize == "O3" else FP32_ATOL
    checks: list[VerifyReport] = []
    unverified: list[str] = []
    _checked(path, model, batch, "fp32", atol, checks, unverified)
    final = "int8" if quantize else precision
    if precision == "fp16":
        staged = work / "model.fp16.onnx"
        convert_fp16(path, staged)
        os.replace(staged, path)
        sizes["fp16"] = path.stat().st_size
        atol = FP16_ATOL
        _checked(path, model, batch, "fp16", atol, checks, unverified)
    if quantize:
        staged = work / "model.int8.onnx"
        quantize_int8(path, staged)
        os.replace(staged, path)
        sizes["quantized"] = path.stat().st_size
        _checked(path, model, batch, "int8", atol, checks, unverified)
    if sparse_storage:
        staged = work / "model.sparse.onnx"
        sparsify_initializers(path, staged)
        os.replace(staged, path)
        sizes["sparse_storage"] = path.stat().st_size
        _checked(path, model, batch, final, atol, checks, unverified)
    layers = encoder_layers(model)
    return ExportReport(
        optimize=optimize, precision=precision, quantize=quantize, sparse_storage=sparse_storage, opset=opset,
        fusion=fusion, heads=[head_count(layer) for layer in layers],
        intermediate_sizes=[ffn_width(layer) for layer in layers],
        file_bytes=sizes | {"model.onnx": path.stat().st_size}, verification=checks, unverified=unverified,
        versions=versions(),
    )


def export_artifact(model: PreTrainedModel, tokenizer, out_dir: str | Path, optimize: Level | None = "O2",
                    quantize: Literal["int8"] | None = None, verify_batch: dict[str, np.ndarray] | None = None,
                    sparse_storage: bool = False, strict_fusion: bool = False, overwrite: bool = False,
                    opset: int = 17, extra_report: dict | None = None,
                    precision: Literal["fp32", "fp16"] = "fp32") -> ExportReport:
    """Write a verified ONNX folder (model.onnx, config, tokenizer, export_report.json, README.md model card),
    all or nothing.

    Work happens in a temporary sibling folder renamed to `out_dir` only after verification passed,
    so a failed or interrupted export leaves no folder that looks like a valid artefact.
    `verify_batch` defaults to a few built-in sentences; pass real examples of the task when you have them.
    `sparse_storage` stores matrices that are more than 2/3 zero as sparse initializers: a smaller file,
    but no speed gain and more memory at load (see exporters/sparsity.py for the measurements).
    `extra_report` (provenance, bake summary) is stored in export_report.json beside the figures.
    `precision="fp16"` converts weights and activations for the CUDA provider (fp32 inputs and outputs);
    it is verified on CUDA when onnxruntime has it, else on the CPU if that can run it, else reported unverified.
    """
    if optimize not in (None, *LEVELS):
        raise AbpError(f"unknown optimisation level {optimize!r}: use one of {', '.join(LEVELS)} or none")
    if quantize not in (None, "int8"):
        raise AbpError(f"unknown quantization {quantize!r}: use int8 or none")
    if precision not in ("fp32", "fp16"):
        raise AbpError(f"unknown precision {precision!r}: use fp32 or fp16")
    if precision == "fp16" and quantize:
        raise AbpError("fp16 precision and int8 quantization exclude each other: drop --precision fp16 or --quantize int8")
    batch = verify_batch if verify_batch is not None else sample_batch(tokenizer)
    with atomic_dir(out_dir, overwrite) as work:
        report = _build(model, tokenizer, work, optimize, precision, quantize, sparse_storage, batch, strict_fusion,
                        opset)
        written = asdict(report) | (extra_report or {})
        (work / REPORT_FILE).write_text(json.dumps(written, indent=2) + "\n")
        (work / CARD_FILE).write_text(model_card(written, model.config))
    return report
