"""What a masked encoder no longer needs: dead attention heads and FFN neurons, read off exact zeros.

Pure functions of the weights; `bake` decides how to cut. Indices are positions in the layer's
current modules (head h = rows/columns h*d..(h+1)*d of the attention matrices).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

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


def _dead_units(out_alive: torch.Tensor, in_alive: torch.Tensor, in_reason: str) -> dict[int, str]:
    """Reasons for the dead units; if all are dead, the first is kept (onnxruntime rejects empty layers)."""
    dead = {}
    for i, (out_ok, in_ok) in enumerate(zip(out_alive.tolist(), in_alive.tolist())):
        if not out_ok:
            dead[i] = OUT_ZERO
        elif not in_ok:
            dead[i] = in_reason
    if len(dead) == len(out_alive):
        dead[0] = KEPT_AS_ZERO
    return dead


@torch.no_grad()
def find_dead_structure(model: PreTrainedModel) -> DeadStructure:
    """Heads and FFN neurons whose removal (after folding their constant output) leaves the model exact."""
    layers = []
    for layer in encoder_layers(model):
        n_heads = layer.attention.self.num_attention_heads
        w_o = layer.attention.output.dense.weight  # (hidden, heads*d): head h owns a column block
        w_v = layer.attention.self.value.weight  # (heads*d, hidden): head h owns a row block
        heads = _dead_units(w_o.t().reshape(n_heads, -1).ne(0).any(1), w_v.reshape(n_heads, -1).ne(0).any(1),
                            VALUE_ZERO)
        w_in = layer.intermediate.dense.weight  # (ffn, hidden)
        w_out = layer.output.dense.weight  # (hidden, ffn)
        neurons = _dead_units(w_out.ne(0).any(0), w_in.ne(0).any(1), IN_ZERO)
        layers.append(LayerDead(heads=heads, neurons=neurons))
    return DeadStructure(layers=tuple(layers))


def count_params_and_flops(model: PreTrainedModel, seq_len: int = 128) -> dict[str, int]:
    """Parameter counts and dense-equivalent FLOPs per token, from the modules' actual (ragged) shapes.

    flops_per_token = Σ_encoder Linear 2·in·out  +  Σ_layers 2·2·seq_len·heads·head_dim
    (a multiply-add is 2 FLOPs; the second term is the Q·Kᵀ scores and the probs·V context of one
    query token against `seq_len` keys). Zeros inside a matrix are counted: this is dense cost.
    Returns encoder_linear_params (weights + biases of the encoder's Linear layers), total_params,
    flops_per_token and the seq_len used.
    """
    linears = [m for m in model.base_model.encoder.modules() if isinstance(m, nn.Linear)]
    linear_params = sum(p.numel() for m in linears for p in m.parameters())
    linear_flops = sum(2 * m.in_features * m.out_features for m in linears)
    attention_flops = sum(2 * 2 * seq_len * layer.attention.self.query.out_features for layer in encoder_layers(model))
    return {
        "encoder_linear_params": linear_params,
        "total_params": sum(p.numel() for p in model.parameters()),
        "flops_per_token": linear_flops + attention_flops,
        "seq_len": seq_len,
    }


@torch.no_grad()
def surviving_structure(model: PreTrainedModel) -> dict:
    """Heads and FFN neurons per layer that are not dead, and the fraction of encoder Linear weights they own."""
    dead = find_dead_structure(model).layers
    layers = encoder_layers(model)
    heads = [layer.attention.self.num_attention_heads - len(d.heads) for layer, d in zip(layers, dead)]
    neurons = [layer.intermediate.dense.out_features - len(d.neurons) for layer, d in zip(layers, dead)]
    hidden = model.config.hidden_size
    head_dim = layers[0].attention.self.attention_head_size
    full = sum(4 * hidden * layer.attention.self.all_head_size + 2 * hidden * layer.intermediate.dense.out_features
               for layer in layers)
    kept = sum(4 * hidden * head_dim * h + 2 * hidden * n for h, n in zip(heads, neurons))
    return {"heads_kept": heads, "neurons_kept": neurons, "encoder_weights_kept": kept / full}
