"""Stage two, first half: turn a finished prune run into a smaller model, checked for exactness."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from abp_deploy.apply import load_run_model
from abp_deploy.bake import BakeSummary, bake_model, save_baked
from abp_deploy.data import load_split
from abp_deploy.errors import AbpError
from abp_deploy.tasks import get_task

EXACTNESS_ATOL = 1e-4  # fp32 logits of the baked model against the masked model
CHECK_EXAMPLES = 32
CHECK_FILE = "bake_check.json"
PROVENANCE_KEYS = ("base_model", "base_model_sha256", "task", "method", "sparsity", "seed", "max_length", "dev_metrics")


@dataclass
class BakedRun:
    """A run's baked model in memory, with what is needed to save, export or score it."""

    model: PreTrainedModel
    tokenizer: object
    manifest: dict
    summary: BakeSummary
    max_abs_logit_delta: float
    check_batch: dict[str, torch.Tensor]


def real_batch(task_name: str, data_dir: str | None, tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """A padded batch of the task's own dev examples (real text, real padding) for checks."""
    task = get_task(task_name)
    ds = load_split(task, task.dev_splits[0], data_dir, max_samples=CHECK_EXAMPLES)
    pair = list(ds["text_b"]) if task.is_pair else None
    return dict(tokenizer(list(ds["text_a"]), pair, truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt"))


@torch.no_grad()
def bake_checked(run_dir: str | Path, base_model: str | None = None) -> BakedRun:
    """Apply the run's mask, cut dead heads and neurons, and check the logits are unchanged on real dev examples."""
    masked, tokenizer, _, manifest = load_run_model(Path(run_dir), base_model)
    data_dir = manifest["config"].get("data_dir")
    batch = real_batch(manifest["task"], data_dir, tokenizer, manifest["max_length"])
    expected = masked(**batch).logits
    baked = copy.deepcopy(masked)
    summary = bake_model(baked, seq_len=manifest["max_length"])
    delta = (baked.eval()(**batch).logits - expected).abs().max().item()
    if delta > EXACTNESS_ATOL:
        raise AbpError(f"baking changed the logits by {delta:.2e} (> {EXACTNESS_ATOL}): nothing was written; "
                       "please report this run")
    baked.config.abp_provenance = {k: manifest[k] for k in PROVENANCE_KEYS} | {"data_dir": data_dir}
    return BakedRun(baked, tokenizer, manifest, summary, delta, batch)


def bake_run(run_dir: str | Path, out_dir: str | Path, base_model: str | None = None,
             overwrite: bool = False) -> BakeSummary:
    """Bake a run (see bake_checked) and save it as a model folder with its exactness check."""
    baked = bake_checked(run_dir, base_model)
    check = {"max_abs_logit_delta": baked.max_abs_logit_delta, "examples": len(baked.check_batch["input_ids"])}
    save_baked(baked.model, baked.tokenizer, out_dir, baked.summary, overwrite=overwrite, extra_json={CHECK_FILE: check})
    return baked.summary
