"""Regression heads learn standardised targets; the scale is folded back into the head, exactly.

A fresh head maps bounded pooled features (tanh, in [-1, 1]) to raw STS-B scores 0–5: at the head's
learning rate it spends its whole budget shifting the mean, and with frozen weights (adapting by
pruning) the loss stayed at the label variance. Training on z = (y − mean) / std, as regression
heads usually are, removes that; afterwards `W ← std·W`, `b ← std·b + mean` makes the head predict
y itself, so the saved artefact needs no extra step at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True)
class TargetScaler:
    """The train split's label mean and standard deviation."""

    mean: float
    std: float

    @classmethod
    def fit(cls, labels: list[float]) -> TargetScaler:
        values = torch.tensor(labels, dtype=torch.float64)
        return cls(float(values.mean()), float(values.std(unbiased=False).clamp_min(1e-12)))

    def scale(self, values: torch.Tensor) -> torch.Tensor:
        """Original units -> standardised."""
        return (values - self.mean) / self.std

    @torch.no_grad()
    def fold_into(self, model: PreTrainedModel) -> None:
        """Make the head output original units: its last Linear computes std·z + mean."""
        out = output_layer(model)
        out.weight.mul_(self.std)
        out.bias.mul_(self.std).add_(self.mean)


def output_layer(model: PreTrainedModel) -> nn.Linear:
    """The task head's final Linear (BERT: `classifier`; RoBERTa: `classifier.out_proj`)."""
    head = model.classifier
    return head if isinstance(head, nn.Linear) else head.out_proj
