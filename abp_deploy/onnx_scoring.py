"""Score an exported ONNX artefact on its task's dev set through onnxruntime: what ships is what is scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

from abp_deploy.data import load_split, tokenize
from abp_deploy.errors import AbpError
from abp_deploy.exporters.onnx_export import OUTPUT_NAME
from abp_deploy.exporters.pipeline import REPORT_FILE
from abp_deploy.metrics import compute_metrics
from abp_deploy.tasks import get_task


def read_export_report(folder: str | Path) -> dict:
    """The export_report.json of an artefact folder, with a one-line error when it is missing or damaged."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        raise AbpError(f"{folder} is not an abp-deploy ONNX artefact ({REPORT_FILE} missing): run abp-deploy export")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AbpError(f"{path} is corrupted ({exc.msg}): re-run abp-deploy export") from exc
    if "provenance" not in report:
        raise AbpError(f"{path} names no task (no provenance): export from a run or baked folder with abp-deploy export")
    return report


def score_onnx(folder: str | Path, session: ort.InferenceSession, data_dir: str | None = None,
               max_samples: int | None = None, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Official metrics per dev split of the artefact's task, from onnxruntime logits."""
    provenance = read_export_report(folder)["provenance"]
    task = get_task(provenance["task"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    wanted = [i.name for i in session.get_inputs()]
    results = {}
    for split in task.dev_splits:
        ds = tokenize(load_split(task, split, data_dir or provenance.get("data_dir"), max_samples),
                      tokenizer, provenance["max_length"])
        logits = []
        for start in range(0, len(ds), batch_size):
            rows = ds[start:start + batch_size]
            batch = tokenizer.pad({k: rows[k] for k in wanted}, return_tensors="np")
            logits.append(session.run([OUTPUT_NAME], {k: batch[k].astype(np.int64) for k in wanted})[0])
        results[split] = compute_metrics(task, np.concatenate(logits), np.asarray(list(ds["labels"])))
    return results
