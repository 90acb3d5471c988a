"""Score a PyTorch classifier on a task's dev split(s) with the official metrics."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedModel

from abp_deploy.batching import by_length, token_lengths
from abp_deploy.metrics import compute_metrics
from abp_deploy.tasks import TaskSpec


def dev_loader(ds: datasets.Dataset, tokenizer, batch_size: int) -> DataLoader:
    """Length-sorted, dynamically padded batches; labels travel with their examples, so metrics are unchanged."""
    ordered = ds.select(by_length(token_lengths(ds)))
    return DataLoader(ordered, batch_size=batch_size, shuffle=False, collate_fn=DataCollatorWithPadding(tokenizer))


@torch.no_grad()
def predict(model: PreTrainedModel, loader: DataLoader, accelerator=None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every example of a loader; gathers across processes under Accelerate."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        y = batch["labels"]
        if accelerator is not None:
            out, y = accelerator.gather_for_metrics((out, y))
        logits.append(out.cpu().numpy())
        labels.append(y.cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(model: PreTrainedModel, task: TaskSpec, loaders: dict[str, DataLoader],
             accelerator=None) -> dict[str, dict[str, float]]:
    """Official metrics per dev split, e.g. {"dev": {"accuracy": 0.85, "score": 0.85}}."""
    return {split: compute_metrics(task, *predict(model, loader, accelerator)) for split, loader in loaders.items()}
