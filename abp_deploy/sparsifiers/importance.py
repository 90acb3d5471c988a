"""Importance-initialised gates: start the gate scores from each head's and neuron's Fisher information.

Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers") rank heads and FFN
neurons by the Fisher information of a multiplicative gate at 1: Σ over batches of (∂L/∂g)². Here
that ranking becomes the gates' starting scores, so the first top-k is already their mask search
and training moves the scores from there. The loss needs a sensible head first: a fresh head gives
gradients of noise, so the head is fitted on the frozen model's cached head inputs beforehand.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PreTrainedModel

HEAD_FIT_STEPS = 300
HEAD_FIT_LR = 1e-2
SCORE_SPREAD = 0.5  # scores = 1 + SPREAD · z(log Fisher): the same scale as magnitude-initialised scores


@torch.no_grad()
def _head_inputs(model: PreTrainedModel, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the task head sees for each example (the pooled [CLS] features), and the labels."""
    seen: list[torch.Tensor] = []
    hook = model.classifier.register_forward_pre_hook(lambda _, args: seen.append(args[0][:, :1] if args[0].dim() == 3
                                                                                   else args[0]))
    labels = []
    try:
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
            labels.append(batch["labels"])
    finally:
        hook.remove()
    return torch.cat(seen), torch.cat(labels)


def _task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss the model itself uses: cross-entropy for classes, squared error for one regression output."""
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)


def fit_head(model: PreTrainedModel, batches: list[dict]) -> None:
    """Train the task head alone on cached head inputs of the frozen model (full batch, Adam)."""
    was_training = model.training
    model.eval()
    features, labels = _head_inputs(model, batches)
    head = model.classifier
    optimizer = torch.optim.Adam(head.parameters(), lr=HEAD_FIT_LR)
    for _ in range(HEAD_FIT_STEPS):
        optimizer.zero_grad()
        _task_loss(head(features), labels).backward()
        optimizer.step()
    model.train(was_training)


def fisher_scores(model: PreTrainedModel, batches: list[dict], scores: list[nn.Parameter]) -> list[torch.Tensor]:
    """Σ over batches of the squared loss gradient of each gate score (gates open, no dropout)."""
    was_training = model.training
    model.eval()
    fisher = [torch.zeros_like(s, dtype=torch.float64) for s in scores]
    for batch in batches:
        for s in scores:
            s.grad = None
        model(**batch).loss.backward()
        for f, s in zip(fisher, scores):
            f += s.grad.double() ** 2
    for s in scores:
        s.grad = None
    model.train(was_training)
    return fisher


def scores_from_fisher(fisher: list[torch.Tensor]) -> list[torch.Tensor]:
    """1 + SPREAD · z-score of log Fisher over all units of one kind: higher for units the loss needs more."""
    logs = [torch.log(f + 1e-30) for f in fisher]
    flat = torch.cat(logs)
    z = [(l - flat.mean()) / flat.std().clamp_min(1e-12) for l in logs]
    return [(1.0 + SCORE_SPREAD * v).float() for v in z]
