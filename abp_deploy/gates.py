"""Structure gates: one learned keep/drop decision per attention head or FFN neuron, over frozen weights.

A head gate multiplies the head's column block of the attention output matrix, a neuron gate the
neuron's column of the FFN output matrix, so a closed gate makes that unit contribute exactly
nothing and bake cuts it (with its query/key/value rows or FFN input row). The gates are trained
like the unstructured ABP mask: real-valued scores, hard top-k in the forward pass, straight-through
gradient (Ramanujan et al. 2020), with one global budget per unit kind so layers compete for it.
Heads and neurons keep the same fraction, which is then exactly the kept fraction of the encoder's
Linear parameters (a head owns 4·hidden·head_dim of them, a neuron 2·hidden).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from abp_deploy.masking import _kth_largest_threshold, _topk_mask, straight_through_mask
from abp_deploy.structure import encoder_layers

# block: the paper's mask on square tiles (masking.py); hybrid: structured gates plus the paper's
# unstructured (or tiled) mask inside the kept units (prune.py adds the latter)
GRANULARITIES = ("unstructured", "block", "head", "neuron", "structured", "hybrid")
_KINDS = {"head": ("head",), "neuron": ("neuron",), "structured": ("head", "neuron"), "hybrid": ("head", "neuron")}
GATED = tuple(_KINDS)


class GateMask(nn.Module):
    """Parametrization `W ↦ W ⊙ g(S)` with one score per group of `width` consecutive input columns."""

    def __init__(self, weight: torch.Tensor, width: int, init: str, noise: float, generator: torch.Generator):
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

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        gate = straight_through_mask(self.scores, self.threshold).repeat_interleave(self.width)
        return weight * gate.to(weight.dtype)[None, :]


def gated_linears(model: nn.Module, granularity: str) -> dict[str, dict[str, nn.Linear]]:
    """Kind ("head"/"neuron") -> {prunable-linear name: the output Linear its gates sit on}."""
    out: dict[str, dict[str, nn.Linear]] = {}
    for i, layer in enumerate(encoder_layers(model)):
        for kind in _KINDS[granularity]:
            if kind == "head":
                out.setdefault(kind, {})[f"encoder.layer.{i}.attention.output.dense"] = layer.attention.output.dense
            else:
                out.setdefault(kind, {})[f"encoder.layer.{i}.output.dense"] = layer.output.dense
    return out


def attach_gates(model: nn.Module, granularity: str, score_init: str = "magnitude", noise: float = 1e-4,
                 seed: int = 0) -> dict[str, dict[str, nn.Linear]]:
    """Attach head and/or neuron gates (fixed order, seeded tie-breaking noise); returns gated_linears."""
    generator = torch.Generator().manual_seed(seed)
    gated = gated_linears(model, granularity)
    head_size = encoder_layers(model)[0].attention.self.attention_head_size
    for kind, layers in gated.items():
        for name in sorted(layers):
            width = head_size if kind == "head" else 1
            parametrize.register_parametrization(layers[name], "weight",
                                                 GateMask(layers[name].weight, width, score_init, noise, generator))
    return gated


def _gate(layer: nn.Linear) -> GateMask:
    return next(p for p in layer.parametrizations.weight if isinstance(p, GateMask))


def gate_scores(gated: dict[str, dict[str, nn.Linear]]) -> list[nn.Parameter]:
    """The gates' learnable scores (their own optimizer group: they may want another learning rate)."""
    return [_gate(layer).scores for layers in gated.values() for layer in layers.values()]


@torch.no_grad()
def set_gate_keep_ratio(gated: dict[str, dict[str, nn.Linear]], keep: float) -> None:
    """Open the top `keep` fraction of gates of each kind, ranked globally across layers."""
    for layers in gated.values():
        scores = torch.cat([_gate(layer).scores.float().flatten() for layer in layers.values()])
        tau = _kth_largest_threshold(scores, round(keep * scores.numel()))
        for layer in layers.values():
            _gate(layer).threshold.copy_(tau)


@torch.no_grad()
def final_gate_masks(gated: dict[str, dict[str, nn.Linear]], keep: float) -> dict[str, torch.Tensor]:
    """Exact top-k gates per kind, expanded to boolean weight masks of the gated matrices."""
    masks = {}
    for layers in gated.values():
        names = sorted(layers)
        scores = [_gate(layers[n]).scores.detach().float().cpu() for n in names]
        opened = _topk_mask(torch.cat(scores), round(keep * sum(s.numel() for s in scores)))
        start = 0
        for name, s in zip(names, scores):
            gate = opened[start:start + s.numel()]
            start += s.numel()
            layer = layers[name]
            masks[name] = gate.repeat_interleave(_gate(layer).width)[None, :].expand(layer.out_features, -1).clone()
    return masks

