"""The structure map: which slices of which matrices an attention head and an FFN neuron own.

This is the only place that knows unit ownership. Gates (what a closed unit zeroes), dead-unit
detection (what a mask made dead), `analyze` (what survives in a stored mask) and bake (what to
cut and which bias to fold into) all read it from here.

A unit of kind K in an encoder layer owns `width` consecutive *input columns* of K's output
matrix (its contribution to the residual stream) and `width` consecutive *output rows* of each of
K's input matrices (what computes it). Names are relative to the layer module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LAYER_PREFIX = "encoder.layer."


@dataclass(frozen=True)
class UnitKind:
    """One kind of prunable unit and the matrices whose slices it owns."""

    name: str
    output: str  # the unit owns `width` input columns of this matrix
    inputs: tuple[str, ...]  # the unit owns `width` output rows of each of these
    source: str  # the input whose zero rows leave the unit outputting a constant (its bias, transformed)

    def count(self, layer: nn.Module) -> int:
        """How many units of this kind the layer has now."""
        return layer.get_submodule(self.output).in_features // self.width(layer)

    def width(self, layer: nn.Module) -> int:
        """Columns (rows) per unit: the head size for heads, 1 for neurons."""
        return layer.attention.self.attention_head_size if self.name == "head" else 1

    def params_owned(self, layer: nn.Module) -> int:
        """Weight-matrix entries one unit owns across its matrices (4·hidden·head_dim a head, 2·hidden a neuron)."""
        w = self.width(layer)
        return w * (layer.get_submodule(self.output).out_features
                    + sum(layer.get_submodule(name).in_features for name in self.inputs))


HEAD = UnitKind("head", "attention.output.dense",
                ("attention.self.query", "attention.self.key", "attention.self.value"), "attention.self.value")
NEURON = UnitKind("neuron", "output.dense", ("intermediate.dense",), "intermediate.dense")
UNIT_KINDS = {HEAD.name: HEAD, NEURON.name: NEURON}


def matrix_name(layer_index: int, relative: str) -> str:
    """Full prunable-linear name of a layer-relative matrix, as masks are keyed."""
    return f"{LAYER_PREFIX}{layer_index}.{relative}"


def split_matrix_name(name: str) -> tuple[int, str] | None:
    """(layer index, layer-relative name) of an encoder matrix name; None for other matrices (pooler)."""
    if not name.startswith(LAYER_PREFIX):
        return None
    index, _, relative = name[len(LAYER_PREFIX):].partition(".")
    return int(index), relative


def columns_alive(nonzero: torch.Tensor, width: int) -> torch.Tensor:
    """Per unit: does any weight of its column block of an output matrix survive?"""
    return nonzero.any(0).reshape(-1, width).any(1)


def rows_alive(nonzero: torch.Tensor, width: int) -> torch.Tensor:
    """Per unit: does any weight of its row block of an input matrix survive?"""
    return nonzero.any(1).reshape(-1, width).any(1)


def unit_status(kind: UnitKind, nonzero: Callable[[str], torch.Tensor],
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(output alive, source alive) per unit, from `nonzero(relative name)` -> boolean weight map.

    A unit whose output slice is all zero contributes nothing; one whose source rows are all zero
    outputs a constant. Either way it is dead.
    """
    return columns_alive(nonzero(kind.output), width), rows_alive(nonzero(kind.source), width)


def owned_positions(units: list[int] | torch.Tensor, width: int) -> torch.Tensor:
    """Column (or row) positions of the given units in their matrix, in unit order."""
    units = torch.as_tensor(units, dtype=torch.long).sort().values
    return (units[:, None] * width + torch.arange(width)).reshape(-1)


def owned_weights(kind: UnitKind, relative: str, alive: torch.Tensor, width: int,
                  shape: tuple[int, int]) -> torch.Tensor | None:
    """The boolean weight map of `relative` that the units flagged in `alive` own; None if the kind owns none of it."""
    flags = alive.repeat_interleave(width)
    if relative == kind.output:
        return flags[None, :].expand(shape).clone()
    if relative in kind.inputs:
        return flags[:, None].expand(shape).clone()
    return None
