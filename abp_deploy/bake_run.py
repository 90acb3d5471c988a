"""Stage two, first half: turn a finished prune run into a smaller model folder, checked for exactness."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from abp_deploy.apply import load_run_model
from abp_deploy.bake import BakeSummary, bake_model, save_baked
from abp_deploy.data import load_split
from abp_deploy.errors import AbpError

EXACTNESS_ATOL = 1e-4  # fp32 logits of the baked model against the masked model
CHECK_EXAMPLES = 32


def real_batch(run_dir: Path, tokenizer, manifest: dict) -> dict[str, torch.Tensor]:
    """A padded batch of the task's own dev examples (real text, real padding) for checks."""
    from abp_deploy.tasks import get_task

    task = get_task(manifest["task"])
    ds = load_split(task, task.dev_splits[0], manifest["config"].get("data_dir"), max_samples=CHECK_EXAMPLES)
    pair = list(ds["text_b"]) if task.is_pair else None
    return dict(tokenizer(list(ds["text_a"]), pair, truncation=True, max_length=manifest["max_length"], padding=True,
                          return_tensors="pt"))


@torch.no_grad()
def bake_run(run_dir: str | Path, out_dir: str | Path, base_model: str | None = None,
             overwrite: bool = False) -> BakeSummary:
    """Apply the run's mask, cut dead heads and neurons, check logits are unchanged, then save."""
    run_dir = Path(run_dir)
    masked, tokenizer, _, manifest = load_run_model(run_dir, base_model)
    batch = real_batch(run_dir, tokenizer, manifest)
    expected = masked(**batch).logits
    baked = copy.deepcopy(masked)
    summary = bake_model(baked, seq_len=manifest["max_length"])
    got = baked.eval()(**batch).logits
    delta = (got - expected).abs().max().item()
    if delta > EXACTNESS_ATOL:
        raise AbpError(f"baking changed the logits by {delta:.2e} (> {EXACTNESS_ATOL}): nothing was written; "
                       "please report this run")
    baked.config.abp_provenance = {k: manifest[k] for k in ("base_model", "base_model_sha256", "task", "method",
                                                            "sparsity", "seed", "max_length")}
    save_baked(baked, tokenizer, out_dir, summary, overwrite=overwrite)
    (Path(out_dir) / "bake_check.json").write_text(json.dumps({"max_abs_logit_delta": delta,
                                                               "examples": len(expected)}, indent=2))
    return summary
