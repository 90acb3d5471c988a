"""The mask math in one place: binary masks over frozen weights, relaxed so the task loss trains them.

Each mask is a parametrization (`torch.nn.utils.parametrize`), so `layer.weight` becomes `W ⊙ m`
while the pretrained `W` stays stored, untouched, as the parametrization's `original`. Which
layers get which mask, and on what schedule, is the sparsifiers' business (`sparsifiers/`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def straight_through_mask(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 mask `1[s ≥ τ]` in the forward pass, identity gradient to the scores in the backward.

    This is the top-k straight-through binarizer of edge-popup (Ramanujan et al. 2020) as used for
    masking frozen BERT by Zhao et al. 2020 and SMP (Jiang et al. 2022): with `W' = W ⊙ m` the score
    gradient is `∂L/∂W' ⊙ W`, so a connection's score rises when keeping it lowers the task loss.
    """
    hard = (scores >= threshold).to(scores.dtype)
    return hard + scores - scores.detach()


class ScoreMask(nn.Module):
    """Parametrization `W ↦ W ⊙ m(S)` with one learned real-valued score per weight, or per `block`² tile.

    Tiles (block movement pruning, Lagunas et al. 2021) are the mask's unit for `block` > 1: the
    scores, their ranking and the final mask live on the tile grid, and the forward pass expands them.
    """

    def __init__(self, weight: torch.Tensor, init: str, noise: float, generator: torch.Generator, block: int = 1):
        super().__init__()
        rows, cols = weight.shape
        self.block = block
        scores = initial_scores(weight, init)
        if block > 1:  # a tile's score starts at its mean (|W| / mean |W| for magnitude)
            scores = scores.reshape(rows // block, block, cols // block, block).mean(dim=(1, 3))
        # Tiny seeded noise breaks ties (all of them, for a constant init), so top-k picks are reproducible.
        scores = scores + noise * torch.randn(scores.shape, generator=generator)
        self.scores = nn.Parameter(scores.to(weight.device))
        self.register_buffer("threshold", torch.tensor(float("-inf"), device=weight.device))

    def importance(self, weight: torch.Tensor) -> torch.Tensor:
        return self.scores

    def expand(self, unit_mask: torch.Tensor) -> torch.Tensor:
        """A mask over the scores' units (weights or tiles) as a mask over the weights."""
        if self.block == 1:
            return unit_mask
        return unit_mask.repeat_interleave(self.block, 0).repeat_interleave(self.block, 1)

    def contract(self, weight_flags: torch.Tensor) -> torch.Tensor:
        """A boolean map over the weights as one over the scores' units (a tile counts if any weight of it does)."""
        if self.block == 1:
            return weight_flags
        rows, cols = weight_flags.shape
        return weight_flags.reshape(rows // self.block, self.block, cols // self.block, self.block).any(3).any(1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.expand(straight_through_mask(self.scores, self.threshold)).to(weight.dtype)


def initial_scores(weight: torch.Tensor, init: str) -> torch.Tensor:
    """Starting scores: `constant` (every weight equal; Zhao et al. 2020) or `magnitude` (|W| / mean |W|).

    With `magnitude` the first mask is the magnitude ranking, and the task loss then moves scores
    away from it; normalising per matrix keeps scores of different matrices comparable for `global`.
    """
    if init == "constant":
        return torch.zeros(weight.shape)
    if init == "magnitude":
        w = weight.detach().float().abs().cpu()
        return w / w.mean().clamp_min(1e-12)
    raise ValueError(f"unknown score init {init!r}")


class MagnitudeMask(nn.Module):
    """Parametrization `W ↦ W ⊙ 1[|W| ≥ τ]` (gradual magnitude pruning, Zhu & Gupta 2017)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float("-inf"), device=weight.device))

    def importance(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.abs()

    def expand(self, unit_mask: torch.Tensor) -> torch.Tensor:
        return unit_mask

    def contract(self, weight_flags: torch.Tensor) -> torch.Tensor:
        return weight_flags

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (weight.abs() >= self.threshold).to(weight.dtype)


class GateMask(nn.Module):
    """Parametrization `W ↦ W ⊙ g(S)` with one score per group of `width` consecutive input columns.

    One gate per attention head (a column block of the attention output matrix) or FFN neuron (a
    column of the FFN output matrix): the same straight-through top-k binarizer as `ScoreMask`, on
    structure (as head/neuron masks in CoFi, Xia et al. 2022, and Kwon et al. 2022), over frozen weights.
    """

    def __init__(self, weight: torch.Tensor, width: int, init: str, noise: float, generator: torch.Generator,
                 scales: bool = False):
        super().__init__()
        units = weight.shape[1] // width
        if init == "magnitude":  # mean |W| of the unit's columns, relative to the layer's mean: comparable across layers
            w = weight.detach().float().abs().cpu().reshape(weight.shape[0], units, width).mean(dim=(0, 2))
            scores = w / w.mean().clamp_min(1e-12)
        else:
            scores = torch.zeros(units)
        self.width = width
        self.scores = nn.Parameter((scores + noise * torch.randn(units, generator=generator)).to(weight.device))
        self.register_buffer("threshold", torch.tensor(float("-inf"), device=weight.device))
        # Optional real-valued scale per unit (Kwon et al. 2022's mask tuning, learned): multiplies an open
        # unit's output columns; bake folds it into the weights (apply.apply_unit_scales).
        self.scales = nn.Parameter(torch.ones(units, device=weight.device)) if scales else None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        gate = straight_through_mask(self.scores, self.threshold)
        if self.scales is not None:
            gate = gate * self.scales
        return weight * gate.repeat_interleave(self.width).to(weight.dtype)[None, :]


def kth_largest_threshold(values: torch.Tensor, keep: int) -> torch.Tensor:
    """The threshold that keeps the `keep` largest of `values` (−inf keeps everything).

    numpy's introselect finds the same order statistic as `torch.kthvalue`, much faster on CPU; it
    runs for every masked matrix at every step (benchmarks/train_throughput.py, "before" vs "random
    batches", shows what it bought).
    """
    if keep >= values.numel():
        return values.new_tensor(float("-inf"))
    flat = values.detach().float().cpu().numpy().reshape(-1)
    index = values.numel() - keep
    return torch.tensor(np.partition(flat, index)[index], device=values.device)


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly the `k` largest values (an exact top-k: the stored masks hit their budget)."""
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[torch.topk(values.flatten(), k, sorted=False).indices] = True
    return mask.view_as(values)


def cubic_sparsity(step: int, total: int, target: float, warmup: float = 0.1, reach: float = 0.7) -> float:
    """Cubic schedule (Zhu & Gupta 2017): dense until `warmup`, target reached at `reach` of training."""
    start, end = warmup * total, reach * total
    if step <= start:
        return 0.0
    if step >= end:
        return target
    return target * (1.0 - (1.0 - (step - start) / (end - start)) ** 3)
