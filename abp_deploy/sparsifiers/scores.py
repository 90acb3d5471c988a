"""Weight masks: the paper's learned scores (per weight or per square tile), and magnitude pruning.

Both rank every masked matrix's entries (or tiles) and keep the top fraction the cubic schedule
allows, per matrix or across all of them (`scope`). `eligible` restricts the ranking to some
entries (hybrid: the weights of open heads and neurons); the others are never kept.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel

from abp_deploy.errors import AbpError
from abp_deploy.masking import MagnitudeMask, ScoreMask, cubic_sparsity, kth_largest_threshold, topk_mask
from abp_deploy.sparsifiers.base import Sparsifier, own_parameters

Eligible = dict[str, torch.Tensor] | None  # boolean weight maps by matrix name; None: every weight


class ScoreSparsifier(Sparsifier):
    """Adapting by pruning's mask: one learned score per weight (`block` 1) or per block² tile, top-k kept."""

    def __init__(self, target: float, scope: str, score_init: str, seed: int, lr: float, block: int = 1,
                 granularity: str = "unstructured"):
        super().__init__(target)
        self.granularity, self.scope, self.score_init, self.seed, self.lr, self.block = (
            granularity, scope, score_init, seed, lr, block)
        self.layers: dict[str, nn.Linear] = {}
        self._index_for: Eligible = None  # the eligible maps the cached flat indices below were made from
        self._index: dict[str, torch.Tensor | None] = {}

    def _mask_for(self, weight: torch.Tensor, generator: torch.Generator) -> nn.Module:
        return ScoreMask(weight, self.score_init, 1e-4, generator, self.block)

    def attach(self, model: PreTrainedModel, layers: dict[str, nn.Linear]) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        for name in sorted(layers):
            if self.block > 1 and any(d % self.block for d in layers[name].weight.shape):
                raise AbpError(f"--block-size {self.block} does not divide {name} {tuple(layers[name].weight.shape)}: "
                               "pick a block size that divides the hidden and FFN sizes")
        for name in sorted(layers):  # first mask on each layer, so `_mask` finds it at index 0
            parametrize.register_parametrization(layers[name], "weight", self._mask_for(layers[name].weight, generator))
        self.layers = layers

    def param_groups(self, model: nn.Module) -> list[dict]:
        scores = [self._mask(layer).scores for layer in self.layers.values()]
        return [{"params": own_parameters(model, scores), "lr": self.lr, "weight_decay": 0.0}]

    def set_progress(self, step: int, total: int) -> float:
        sparsity = cubic_sparsity(step, total, self.target)
        self.set_keep(1.0 - sparsity)
        return sparsity

    @staticmethod
    def _mask(layer: nn.Linear) -> ScoreMask | MagnitudeMask:
        return layer.parametrizations.weight[0]

    def _importances(self) -> dict[str, torch.Tensor]:
        return {n: self._mask(l).importance(l.parametrizations.weight.original) for n, l in self.layers.items()}

    def _eligible_units(self, eligible: Eligible) -> dict[str, torch.Tensor] | None:
        if eligible is None:
            return None
        return {n: self._mask(l).contract(eligible[n]) if n in eligible else None for n, l in self.layers.items()}

    def _eligible_index(self, eligible: Eligible) -> dict[str, torch.Tensor | None] | None:
        """Flat positions of the eligible units per matrix, kept while the caller passes the same maps."""
        if eligible is None:
            return None
        if self._index_for is not eligible:
            units = self._eligible_units(eligible)
            self._index = {n: None if u is None else u.flatten().nonzero().squeeze(1) for n, u in units.items()}
            self._index_for = eligible
        return self._index

    @torch.no_grad()
    def set_keep(self, keep: float, eligible: Eligible = None) -> None:
        """Thresholds that keep a fraction `keep` of the (eligible) weights or tiles, per matrix or globally."""
        index = self._eligible_index(eligible)
        values = {n: _ranked(imp, None if index is None else index[n]) for n, imp in self._importances().items()}
        if self.scope == "per-matrix":
            for name, v in values.items():
                self._mask(self.layers[name]).threshold.copy_(kth_largest_threshold(v, round(keep * v.numel())))
            return
        flat = torch.cat([v.float() for v in values.values()])
        tau = kth_largest_threshold(flat, round(keep * flat.numel()))
        for layer in self.layers.values():
            self._mask(layer).threshold.copy_(tau)

    @torch.no_grad()
    def exact_masks(self, keep: float, eligible: Eligible = None) -> dict[str, torch.Tensor]:
        """Exact top-k boolean weight masks among the eligible entries: the achieved fraction is `keep` to one unit."""
        units = self._eligible_units(eligible)
        imps = {n: v.detach().float().cpu() for n, v in self._importances().items()}
        if units is not None:
            imps = {n: v.masked_fill(~units[n].cpu(), float("-inf")) if units[n] is not None else v
                    for n, v in imps.items()}
        counts = {n: (v.numel() if units is None or units[n] is None else int(units[n].sum())) for n, v in imps.items()}
        if self.scope == "per-matrix":
            kept = {n: topk_mask(v, round(keep * counts[n])) for n, v in imps.items()}
        else:
            flat = torch.cat([v.flatten() for v in imps.values()])
            mask, kept, start = topk_mask(flat, round(keep * sum(counts.values()))), {}, 0
            for n, v in imps.items():
                kept[n] = mask[start:start + v.numel()].view_as(v)
                start += v.numel()
        out = {n: self._mask(self.layers[n]).expand(m) for n, m in kept.items()}
        if eligible is not None:
            out = {n: m & eligible[n].cpu() if n in eligible else m for n, m in out.items()}
        return out

    def final_masks(self) -> dict[str, torch.Tensor]:
        return self.exact_masks(1.0 - self.target)

    def detach(self) -> None:
        for layer in self.layers.values():
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)

    def extra_fields(self, masks: dict[str, torch.Tensor]) -> dict:
        return {"scope": self.scope, "block_size": self.block}


class MagnitudeSparsifier(ScoreSparsifier):
    """Gradual magnitude pruning (Zhu & Gupta 2017): the mask keeps the largest |W| of weights that train."""

    def _mask_for(self, weight: torch.Tensor, generator: torch.Generator) -> nn.Module:
        return MagnitudeMask(weight)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return []


def _ranked(importance: torch.Tensor, eligible_index: torch.Tensor | None) -> torch.Tensor:
    """The importances that compete for keep slots: all of them, or only the eligible units' (flat positions)."""
    return importance.flatten() if eligible_index is None else importance.flatten()[eligible_index]
