"""The README.md of every exported folder: a Hugging Face model card built from the export report alone.

It says what the artefact does (task, labels, dev score), where it comes from (base model and the
sha256 of its weights, method, sparsity), what pruning left (heads, FFN neurons, FLOPs), how the
graph was checked, and how to load it. The YAML header is written by huggingface_hub's ModelCardData,
so the hub reads the dev score as a model-index result.
"""

from __future__ import annotations

import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PretrainedConfig

from abp_deploy.tasks import get_task

CARD_FILE = "README.md"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_LOADING = '''## How to load

Tokenisation runs in the client: the graph takes the tokenizer's int64 ids and masks (batch × sequence) and
returns fp32 `logits`.

```python
from abp_deploy.runtime import Classifier          # onnxruntime + tokenizers + numpy; no torch
Classifier("THIS_FOLDER").predict(["a first text", "a second one"], batch_size=32)

from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline
classify = pipeline("text-classification", model=ORTModelForSequenceClassification.from_pretrained("THIS_FOLDER"),
                    tokenizer=AutoTokenizer.from_pretrained("THIS_FOLDER"))
```
'''


def _metadata(prov: dict, task, name: str) -> ModelCardData:
    """The YAML header: pipeline, base model (hub ids only), data set, and the dev score as model-index results."""
    results = [EvalResult(task_type="text-classification", dataset_type=task.hub_path or task.name,
                          dataset_name=task.name, dataset_split=split, metric_type=metric, metric_value=value)
               for split, metrics in (prov.get("dev_metrics") or {}).items()
               for metric, value in metrics.items() if metric in task.metrics] if task else []
    base = prov.get("base_model", "")
    return ModelCardData(library_name="onnx", pipeline_tag="text-classification", model_name=name,
                         base_model=base if _HUB_ID.match(base) else None,
                         datasets=[task.hub_path] if task and task.hub_path else None,
                         metrics=list(task.metrics) if task else None,
                         tags=["onnx", "pruning", "adapting-by-pruning", "abp-deploy"], eval_results=results or None)


def _dev_score(prov: dict, task) -> str:
    """'accuracy 0.7948 on dev' per split, or why there is none."""
    if not prov.get("dev_metrics"):
        return "not recorded in this export's provenance: measure it with `abp-deploy bench`"
    scores = "; ".join(", ".join(f"{m} {v:.4f}" for m, v in metrics.items() if m in task.metrics) + f" on {split}"
                       for split, metrics in prov["dev_metrics"].items())
    return f"{scores} (PyTorch, max length {prov.get('max_length')}, measured when the mask was learned)"


def _speed(bake: dict) -> str:
    """Dense FLOPs per token after/before the bake: the export's own measurement of speed against dense."""
    if not bake.get("flops_per_token_before"):
        return "not recorded (no bake summary); measure latency with `abp-deploy bench ... --baseline DENSE`"
    return (f"{bake['flops_per_token_after'] / bake['flops_per_token_before']:.2f}× the dense model's FLOPs per "
            f"token at sequence {bake['seq_len']} ({bake['flops_per_token_after']:,} of "
            f"{bake['flops_per_token_before']:,}); wall-clock latency is not measured at export: "
            "`abp-deploy bench THIS_FOLDER --baseline DENSE_FOLDER`")


def _checks(report: dict) -> str:
    """Each verification as it happened, and every precision that could not be checked here."""
    lines = [f"{c['precision']} on {c['provider']}: max abs Δlogits {c['max_abs_diff']:.2e}, argmax agreement "
             f"{c['argmax_agreement']:.1%} on {c['examples']} examples" for c in report["verification"]]
    return "; ".join(lines + [f"**not verified**: {note}" for note in report.get("unverified", [])])


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a bare | would end the cell)."""
    return text.replace("|", r"\|")


def model_card(report: dict, config: PretrainedConfig) -> str:
    """The model card text for an export report (export_report.json's content) and the model's config."""
    prov, bake = report.get("provenance") or {}, report.get("bake") or {}
    task = get_task(prov["task"]) if prov.get("task") else None
    layers = len(report["heads"])
    name = "-".join(str(x) for x in (prov.get("base_model", "model").rstrip("/").split("/")[-1], prov.get("task"),
                                     prov.get("method")) if x)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    graph = "+".join(x for x in (report.get("optimize"), report.get("precision"), report.get("quantize")) if x)
    rows = {
        "task": f"{task.name} ({'regression' if task.is_regression else 'labels: ' + ', '.join(labels)})"
        if task else f"not recorded (labels: {', '.join(labels)})",
        "dev score": _dev_score(prov, task) if task else "not recorded",
        "base model": f"{prov['base_model']} (weights sha256 `{prov.get('base_model_sha256')}`)"
        if prov.get("base_model") else "not recorded",
        "method": f"{prov['method']}, sparsity {prov.get('sparsity') or 0:.2f} of the prunable weights, seed "
                  f"{prov.get('seed')}" if prov.get("method") else "not recorded",
        "heads kept": f"{sum(report['heads'])} of {config.num_attention_heads * layers} ({report['heads']} per layer)",
        "FFN neurons kept": f"{sum(report['intermediate_sizes'])} of {config.intermediate_size * layers}",
        "parameters": f"{bake['params_after']:,} (dense {bake['params_before']:,})" if bake.get("params_after")
        else "not recorded",
        "speed vs dense": _speed(bake),
        "graph": f"{graph or 'raw export'}, opset {report['opset']}, model.onnx "
                 f"{report['file_bytes']['model.onnx'] / 1e6:.1f} MB",
        "verified": _checks(report),
    }
    body = "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows.items())
    return str(ModelCard(f"---\n{_metadata(prov, task, name).to_yaml()}\n---\n# {name}\n\nA text classifier made by "
                         "abp-deploy (prune, bake, ONNX export); the method row says how its weights were chosen."
                         f"\n\n| | |\n|---|---|\n{body}\n\n{_LOADING}"))
