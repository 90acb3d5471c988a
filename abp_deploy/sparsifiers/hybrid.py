"""Hybrid: structure gates for speed, plus the paper's weight mask inside the units they keep.

The gates buy onnxruntime speed (whole heads and neurons go); the inner mask gives the task back
its many small keep/drop decisions. The inner top-k ranks only the weights of *open* units, so
`inner_sparsity` is exactly the fraction zeroed inside what survives (closed units' scores never
move, and would otherwise take keep slots).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from abp_deploy.masking import cubic_sparsity
from abp_deploy.sparsifiers.base import Sparsifier
from abp_deploy.sparsifiers.gates import GateSparsifier, OpenUnits
from abp_deploy.sparsifiers.scores import ScoreSparsifier


class HybridSparsifier(Sparsifier):
    """Head + neuron gates at `target` weights removed, and an inner score mask at `inner` inside kept units."""

    granularity = "hybrid"

    def __init__(self, gates: GateSparsifier, inner: ScoreSparsifier):
        super().__init__(gates.target)
        self.gates, self.inner = gates, inner
        self._final_eligible: dict[str, torch.Tensor] = {}
        self._open_key: torch.Tensor | None = None  # open units at the last step, and their weight maps
        self._open_eligible: dict[str, torch.Tensor] = {}
        self.headline = gates.headline  # weights or FLOPs removed: the gates' budget

    def attach(self, model: PreTrainedModel, layers: dict[str, nn.Linear]) -> None:
        self.inner.attach(model, layers)  # first: the score mask is each layer's parametrization 0
        self.gates.attach(model, layers)

    def calibrate(self, model: PreTrainedModel, batches: Callable[[], list[dict]]) -> None:
        self.gates.calibrate(model, batches)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return self.inner.param_groups(model) + self.gates.param_groups(model)

    def _eligible(self, opened: OpenUnits) -> dict[str, torch.Tensor]:
        eligible = {}
        for name, layer in self.inner.layers.items():
            owned = self.gates.owned_weights(opened, name, tuple(layer.parametrizations.weight.original.shape))
            if owned is not None:
                eligible[name] = owned
        return eligible

    def set_progress(self, step: int, total: int) -> float:
        sparsity = self.gates.set_progress(step, total)
        opened = self.gates.open_units()
        key = torch.cat([flags for layers in opened.values() for flags in layers.values()])
        if self._open_key is None or not torch.equal(key, self._open_key):  # open units change rarely: reuse the maps
            self._open_key, self._open_eligible = key, self._eligible(opened)
        self.inner.set_keep(1.0 - cubic_sparsity(step, total, self.inner.target), self._open_eligible)
        return sparsity

    def final_masks(self) -> dict[str, torch.Tensor]:
        self._final_eligible = self._eligible(self.gates.exact_open_units(1.0 - self.target))
        return self.inner.exact_masks(1.0 - self.inner.target, self._final_eligible)

    def unit_scales(self) -> dict[str, torch.Tensor]:
        return self.gates.unit_scales()

    def detach(self) -> None:
        self.inner.detach()
        self.gates.detach()

    def extra_fields(self, masks: dict[str, torch.Tensor]) -> dict:
        eligible = self._final_eligible  # weights of the units final_masks kept open
        open_total = sum(int(eligible[n].sum()) if n in eligible else m.numel() for n, m in masks.items())
        kept = sum(int(m.sum()) for m in masks.values())
        return (self.inner.extra_fields(masks) | self.gates.extra_fields(masks)
                | {"inner_sparsity": self.inner.target, "inner_sparsity_achieved": 1.0 - kept / open_total})
