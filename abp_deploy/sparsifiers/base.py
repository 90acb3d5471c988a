"""The interface the training loop drives, whatever the granularity: attach, train, finalise, describe.

`prune()` never asks which granularity it runs: it calls `attach`, hands `param_groups` to the
optimizer, calls `set_progress` before every step (the schedule sets thresholds), and at the end
takes `final_masks` (exact top-k), `detach`es, and records `manifest_fields`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from abp_deploy.structure import surviving_structure

# Every sparsity figure is named by its definition, so no table or plot mixes two of them.
MASKED_WEIGHTS_ZERO = "masked_weights_zero"  # fraction of the masked matrices' entries that are zero
WEIGHTS_REMOVED = "encoder_linear_weights_removed"  # fraction of encoder Linear weights owned by dead units
FLOPS_REMOVED = "encoder_flops_removed"  # fraction of encoder dense FLOPs per token owned by dead units


class Sparsifier(ABC):
    """A way of choosing which pretrained connections to keep; one instance per run."""

    granularity: str
    headline: str = MASKED_WEIGHTS_ZERO  # the definition `--sparsity` targets

    def __init__(self, target: float):
        self.target = target

    @abstractmethod
    def attach(self, model: PreTrainedModel, layers: dict[str, nn.Linear]) -> None:
        """Put the masks on the model (`layers`: the prunable Linears, keyed as masks are)."""

    def calibrate(self, model: PreTrainedModel, batches: Callable[[], list[dict]]) -> None:
        """Set starting scores from the model's behaviour on some training batches (none by default)."""

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimizer groups of the parameters this sparsifier learns (none by default)."""
        return []

    def set_progress(self, step: int, total: int) -> float:
        """Move the thresholds to the schedule's point at `step`; returns the scheduled headline sparsity."""
        return 0.0

    def final_masks(self) -> dict[str, torch.Tensor]:
        """Exact boolean masks (top-k at the target), keyed by prunable-linear name."""
        return {}

    def unit_scales(self) -> dict[str, torch.Tensor]:
        """Learned per-unit output scales, keyed by output matrix (none unless the run learns them)."""
        return {}

    def detach(self) -> None:
        """Remove the masks, leaving every layer with its original, unmasked weight."""

    def extra_fields(self, masks: dict[str, torch.Tensor]) -> dict:
        """Settings and figures of this granularity for the manifest."""
        return {}

    def manifest_fields(self, masks: dict[str, torch.Tensor], masked_model: PreTrainedModel, seq_len: int) -> dict:
        """Every sparsity figure of the run under its definition, the headline one, and the survivors.

        `masked_model` is the model with `masks` multiplied in; FLOPs are counted at `seq_len` tokens.
        """
        total = sum(m.numel() for m in masks.values())
        zeros = sum(int((~m).sum()) for m in masks.values())
        structure = surviving_structure(masked_model, seq_len)
        sparsities = {MASKED_WEIGHTS_ZERO: zeros / total if total else 0.0,
                      WEIGHTS_REMOVED: 1.0 - structure["encoder_weights_kept"],
                      FLOPS_REMOVED: 1.0 - structure["encoder_flops_kept"]}
        return {
            "granularity": self.granularity,
            "target_sparsity": self.target,
            "sparsity_definition": self.headline,
            "sparsity": sparsities[self.headline],
            "sparsities": sparsities,
            "mask_sparsity": sparsities[MASKED_WEIGHTS_ZERO],
            "sparsity_per_matrix": {n: 1.0 - m.float().mean().item() for n, m in masks.items()},
            "structure": structure,
            "masked_weights": total,
        } | self.extra_fields(masks)


def own_parameters(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """`params` in the model's parameter order (so optimizer state lines up across runs and resumes)."""
    wanted = {id(p) for p in params}
    return [p for _, p in model.named_parameters() if id(p) in wanted]
