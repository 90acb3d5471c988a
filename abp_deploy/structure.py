"""What a masked encoder no longer needs: dead attention heads and FFN neurons, read off exact zeros.

Pure functions of the weights; `bake` decides how to cut. Which slices a unit owns comes from the
structure map (`units.py`); indices are positions in the layer's current modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from abp_deploy.sublayers import BiasOnlyOutput, attention_removed, attention_width, ffn_removed
from abp_deploy.units import HEAD, NEURON, UnitKind, unit_status

OUT_ZERO = "out_zero"  # the unit's slice of the output matrix is zero: it contributes nothing
VALUE_ZERO = "value_zero"  # a head's value rows are zero: it outputs the constant value bias
IN_ZERO = "in_zero"  # a neuron's input row is zero: it outputs the constant act(bias)
KEPT_AS_ZERO = "kept_as_zero"  # dead, but kept (output zeroed, constant folded) so the layer is not empty


@dataclass(frozen=True)
class LayerDead:
    """The dead heads and FFN neurons of one layer, each mapped to the reason it is dead."""

    heads: dict[int, str]
    neurons: dict[int, str]

    @property
    def removable_heads(self) -> list[int]:
        return sorted(h for h, why in self.heads.items() if why != KEPT_AS_ZERO)

    @property
    def removable_neurons(self) -> list[int]:
        return sorted(i for i, why in self.neurons.items() if why != KEPT_AS_ZERO)


@dataclass(frozen=True)
class DeadStructure:
    """Dead structure of every encoder layer, in layer order."""

    layers: tuple[LayerDead, ...]


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks of a BERT or RoBERTa model (task wrapper or bare)."""
    return model.base_model.encoder.layer


def _dead_units(out_alive: torch.Tensor, source_alive: torch.Tensor, source_reason: str) -> dict[int, str]:
    """Reasons for the dead units; if all are dead, the first is kept (onnxruntime rejects empty layers)."""
    dead = {}
    for i, (out_ok, source_ok) in enumerate(zip(out_alive.tolist(), source_alive.tolist())):
        if not out_ok:
            dead[i] = OUT_ZERO
        elif not source_ok:
            dead[i] = source_reason
    if len(dead) == len(out_alive):
        dead[0] = KEPT_AS_ZERO
    return dead


def _weights_nonzero(layer: nn.Module) -> Callable[[str], torch.Tensor]:
    return lambda relative: layer.get_submodule(relative).weight.ne(0)


@torch.no_grad()
def find_dead_structure(model: PreTrainedModel) -> DeadStructure:
    """Heads and FFN neurons whose removal (after folding their constant output) leaves the model exact."""
    layers = []
    for layer in encoder_layers(model):  # a removed sublayer (sublayers.py) has no units left to find dead
        heads = {} if attention_removed(layer) else _dead_units(
            *unit_status(HEAD, _weights_nonzero(layer), HEAD.width(layer)), VALUE_ZERO)
        neurons = {} if ffn_removed(layer) else _dead_units(
            *unit_status(NEURON, _weights_nonzero(layer), NEURON.width(layer)), IN_ZERO)
        layers.append(LayerDead(heads=heads, neurons=neurons))
    return DeadStructure(layers=tuple(layers))


def count_params_and_flops(model: PreTrainedModel, seq_len: int = 128) -> dict[str, int]:
    """Parameter counts and dense-equivalent FLOPs per token, from the modules' actual (ragged) shapes.

    flops_per_token = Σ_encoder Linear 2·in·out  +  Σ_layers 2·2·seq_len·heads·head_dim
    (a multiply-add is 2 FLOPs; the second term is the Q·Kᵀ scores and the probs·V context of one
    query token against `seq_len` keys). Zeros inside a matrix are counted: this is dense cost.
    Returns encoder_linear_params (weights + biases of the encoder's Linear layers, and the output biases
    of removed sublayers), total_params,
    flops_per_token and the seq_len used.
    """
    linears = [m for m in model.base_model.encoder.modules() if isinstance(m, nn.Linear)]
    folded = [m.bias for m in model.base_model.encoder.modules() if isinstance(m, BiasOnlyOutput)]
    linear_params = sum(p.numel() for m in linears for p in m.parameters()) + sum(b.numel() for b in folded)
    linear_flops = sum(2 * m.in_features * m.out_features for m in linears)
    attention_flops = sum(2 * 2 * seq_len * attention_width(layer) for layer in encoder_layers(model))
    return {
        "encoder_linear_params": linear_params,
        "total_params": sum(p.numel() for p in model.parameters()),
        "flops_per_token": linear_flops + attention_flops,
        "seq_len": seq_len,
    }


def unit_flops(layer: nn.Module, kind: UnitKind, seq_len: int) -> int:
    """Dense FLOPs per token one unit of a layer costs: 2 per owned weight, plus a head's attention term."""
    attention = 2 * 2 * seq_len * kind.width(layer) if kind is HEAD else 0
    return 2 * kind.params_owned(layer) + attention


@torch.no_grad()
def surviving_structure(model: PreTrainedModel, seq_len: int = 128) -> dict:
    """Heads and FFN neurons alive per layer, and the kept fractions of encoder Linear weights and FLOPs.

    Each figure is named by its definition: `encoder_weights_kept` counts the weight-matrix entries
    that alive units own; `encoder_flops_kept` the dense FLOPs per token at `seq_len` they cost.
    """
    dead = find_dead_structure(model).layers
    layers = encoder_layers(model)
    heads = [HEAD.count(layer) - len(d.heads) for layer, d in zip(layers, dead)]
    neurons = [NEURON.count(layer) - len(d.neurons) for layer, d in zip(layers, dead)]
    full_w = sum(HEAD.count(l) * HEAD.params_owned(l) + NEURON.count(l) * NEURON.params_owned(l) for l in layers)
    kept_w = sum(h * HEAD.params_owned(l) + n * NEURON.params_owned(l) for l, h, n in zip(layers, heads, neurons))
    full_f = sum(HEAD.count(l) * unit_flops(l, HEAD, seq_len) + NEURON.count(l) * unit_flops(l, NEURON, seq_len)
                 for l in layers)
    kept_f = sum(h * unit_flops(l, HEAD, seq_len) + n * unit_flops(l, NEURON, seq_len)
                 for l, h, n in zip(layers, heads, neurons))
    return {"heads_kept": heads, "neurons_kept": neurons, "encoder_weights_kept": kept_w / full_w,
            "encoder_flops_kept": kept_f / full_f, "flops_seq_len": seq_len}
