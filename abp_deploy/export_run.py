"""Stage two, second half: export a prune run or a baked folder to a verified ONNX artefact or Triton repository."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedModel

from abp_deploy.artifacts import MANIFEST_FILE
from abp_deploy.atomic import atomic_dir
from abp_deploy.bake import SUMMARY_FILE, load_baked
from abp_deploy.bake_run import bake_checked, real_batch
from abp_deploy.errors import AbpError
from abp_deploy.exporters.optimize import Level
from abp_deploy.exporters.pipeline import ExportReport, export_artifact, sample_batch
from abp_deploy.exporters.triton import VERSION as TRITON_VERSION
from abp_deploy.exporters.triton import check_name, write_triton_entry

FORMATS = ("onnx", "triton")


@dataclass
class ExportSource:
    """A baked model ready to export, where it came from, and the batch its export is verified on."""

    model: PreTrainedModel
    tokenizer: object
    provenance: dict
    bake_summary: dict
    verify_batch: dict[str, np.ndarray]
    verify_data: str


def _described(batch: dict, task: str) -> tuple[dict[str, np.ndarray], str]:
    """A tokenized torch batch as the int64 arrays onnxruntime takes, and how to name it in reports."""
    return {k: v.numpy().astype(np.int64) for k, v in batch.items()}, f"{len(batch['input_ids'])} {task} dev examples"


def _verify_batch(provenance: dict, data_dir: str | None, tokenizer) -> tuple[dict[str, np.ndarray], str]:
    """Real dev examples of the model's task when its data can be read; the built-in sentences otherwise."""
    source = data_dir or provenance.get("data_dir")
    try:
        batch = real_batch(provenance["task"], source, tokenizer, provenance["max_length"])
    except AbpError as exc:
        return sample_batch(tokenizer), f"built-in sentences (task data unavailable: {exc})"
    return _described(batch, provenance["task"])


def _from_baked(path: Path, data_dir: str | None) -> ExportSource:
    """A folder written by `abp-deploy bake`."""
    model = load_baked(path, attn_implementation="eager")  # the graph onnxruntime fuses
    provenance = getattr(model.config, "abp_provenance", None)
    if not provenance:
        raise AbpError(f"{path} has no abp_provenance in its config.json: pass a folder written by abp-deploy bake")
    tokenizer = AutoTokenizer.from_pretrained(path)
    summary = path / SUMMARY_FILE
    batch, described = _verify_batch(provenance, data_dir, tokenizer)
    return ExportSource(model, tokenizer, provenance, json.loads(summary.read_text()) if summary.is_file() else {},
                        batch, described)


def load_source(source: str | Path, base_model: str | None = None, data_dir: str | None = None) -> ExportSource:
    """Bake a prune run in memory (checked exact), or load a baked folder, for export."""
    source = Path(source)
    if (source / MANIFEST_FILE).is_file():
        baked = bake_checked(source, base_model)
        if data_dir:
            batch, described = _verify_batch(baked.model.config.abp_provenance, data_dir, baked.tokenizer)
        else:
            batch, described = _described(baked.check_batch, baked.manifest["task"])
        return ExportSource(baked.model, baked.tokenizer, baked.model.config.abp_provenance, asdict(baked.summary),
                            batch, described)
    if (source / "config.json").is_file():
        return _from_baked(source, data_dir)
    raise AbpError(f"{source} is neither a prune run ({MANIFEST_FILE}) nor a baked model folder (config.json): "
                   "pass a folder written by abp-deploy prune or abp-deploy bake")


def export_model(source: str | Path, out_dir: str | Path, fmt: str = "onnx", optimize: Level | None = "O2",
                 quantize: str | None = None, sparse_storage: bool = False, base_model: str | None = None,
                 data_dir: str | None = None, strict_fusion: bool = False, overwrite: bool = False,
                 opset: int = 17, precision: str = "fp32", name: str | None = None) -> tuple[ExportReport, ExportSource]:
    """Export `source` (run or baked folder) to `out_dir`, verified on the task's own dev examples.

    `fmt="triton"` makes `out_dir` a Triton model repository and writes the model `name` (default: the
    source folder's name) into it as OUT/<name>/config.pbtxt + OUT/<name>/1/, the exported folder.
    """
    if fmt not in FORMATS:
        raise AbpError(f"unknown export format {fmt!r}: use {', '.join(FORMATS)}")
    if name is not None and fmt != "triton":
        raise AbpError("--name names a model in a Triton repository: use it with --format triton")
    if fmt == "triton":
        name = check_name(name or Path(source).resolve().name)
    src = load_source(source, base_model, data_dir)

    def export_to(folder: Path, exists_ok: bool) -> ExportReport:
        return export_artifact(
            src.model, src.tokenizer, folder, optimize=optimize, quantize=quantize, verify_batch=src.verify_batch,
            sparse_storage=sparse_storage, strict_fusion=strict_fusion, overwrite=exists_ok, opset=opset,
            precision=precision, extra_report={"source": str(source), "provenance": src.provenance,
                                               "bake": src.bake_summary, "verify_data": src.verify_data})

    if fmt == "onnx":
        return export_to(Path(out_dir), overwrite), src
    with atomic_dir(Path(out_dir) / name, overwrite) as model_dir:
        report = export_to(model_dir / TRITON_VERSION, False)
        labels = [src.model.config.id2label[i] for i in range(src.model.config.num_labels)]
        write_triton_entry(model_dir, name, labels, "int8" if quantize else precision)
    return report, src
