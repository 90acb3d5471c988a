"""The mask math in one place: binary masks over frozen weights, relaxed so the task loss trains them.

A mask is attached to a Linear layer with `torch.nn.utils.parametrize`, so `layer.weight` becomes
`W ⊙ m` while the pretrained `W` stays stored, untouched, as the parametrization's `original`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from abp_deploy.errors import AbpError


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

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (weight.abs() >= self.threshold).to(weight.dtype)


def attach(layers: dict[str, nn.Linear], kind: str, score_init: str = "magnitude", noise: float = 1e-4,
           seed: int = 0, block: int = 1) -> None:
    """Attach a `score` (per weight or per `block`² tile) or `magnitude` mask to every layer, in sorted order."""
    generator = torch.Generator().manual_seed(seed)
    for name in sorted(layers):
        layer = layers[name]
        if block > 1 and any(d % block for d in layer.weight.shape):
            raise AbpError(f"--block-size {block} does not divide {name} {tuple(layer.weight.shape)}: "
                           "pick a block size that divides the hidden and FFN sizes")
        mask = (ScoreMask(layer.weight, score_init, noise, generator, block) if kind == "score"
                else MagnitudeMask(layer.weight))
        parametrize.register_parametrization(layer, "weight", mask)


def _mask_module(layer: nn.Linear) -> ScoreMask | MagnitudeMask:
    return layer.parametrizations.weight[0]


def _original(layer: nn.Linear) -> torch.Tensor:
    return layer.parametrizations.weight.original


def _kth_largest_threshold(values: torch.Tensor, keep: int) -> torch.Tensor:
    if keep >= values.numel():
        return values.new_tensor(float("-inf"))
    return torch.kthvalue(values.float().cpu(), values.numel() - keep + 1).values.to(values.device)


@torch.no_grad()
def set_keep_ratio(layers: dict[str, nn.Linear], keep: float, scope: str) -> None:
    """Set every mask's threshold so a fraction `keep` of weights (or tiles) survives, per matrix or globally.

    Tiles of one run are all the same size, so counting tiles counts weights.
    """
    if scope == "per-matrix":
        for layer in layers.values():
            imp = _mask_module(layer).importance(_original(layer)).flatten()
            _mask_module(layer).threshold.copy_(_kth_largest_threshold(imp, round(keep * imp.numel())))
        return
    imps = torch.cat([_mask_module(l).importance(_original(l)).flatten().float() for l in layers.values()])
    tau = _kth_largest_threshold(imps, round(keep * imps.numel()))
    for layer in layers.values():
        _mask_module(layer).threshold.copy_(tau)


@torch.no_grad()
def final_masks(layers: dict[str, nn.Linear], keep: float, scope: str) -> dict[str, torch.Tensor]:
    """Exact top-k boolean masks, so the achieved sparsity equals the target to within one weight."""
    imps = {n: _mask_module(l).importance(_original(l)).detach().float().cpu() for n, l in layers.items()}
    if scope == "per-matrix":
        units = {n: _topk_mask(v, round(keep * v.numel())) for n, v in imps.items()}
    else:
        flat = torch.cat([v.flatten() for v in imps.values()])
        mask = _topk_mask(flat, round(keep * flat.numel()))
        units, start = {}, 0
        for n, v in imps.items():
            units[n] = mask[start:start + v.numel()].view_as(v)
            start += v.numel()
    return {n: _mask_module(layers[n]).expand(m) for n, m in units.items()}


def _topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[torch.topk(values.flatten(), k, sorted=False).indices] = True
    return mask.view_as(values)


def detach_masks(layers: dict[str, nn.Linear]) -> None:
    """Remove the parametrizations, leaving each masked layer with its original (unmasked) weight."""
    for layer in layers.values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


def cubic_sparsity(step: int, total: int, target: float, warmup: float = 0.1, reach: float = 0.7) -> float:
    """Cubic schedule (Zhu & Gupta 2017): dense until `warmup`, target reached at `reach` of training."""
    start, end = warmup * total, reach * total
    if step <= start:
        return 0.0
    if step >= end:
        return target
    return target * (1.0 - (1.0 - (step - start) / (end - start)) ** 3)
