"""No mask: dense fine-tuning, the baseline every pruning method is measured against."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from abp_deploy.sparsifiers.base import Sparsifier


class DenseSparsifier(Sparsifier):
    """Keeps every weight (`--method finetune`)."""

    granularity = "unstructured"

    def __init__(self):
        super().__init__(0.0)

    def attach(self, model: PreTrainedModel, layers: dict[str, nn.Linear]) -> None:
        """Nothing to attach: every connection stays."""
