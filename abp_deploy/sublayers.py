"""Whole-sublayer removal: an attention (or FFN) sublayer whose units are all dead becomes `LayerNorm(x + b)`.

When a mask closes every head (or every FFN neuron) of a layer, bake folds their constant output
into the output bias and zeroes the last unit's slice; what the sublayer then computes is exactly
`LayerNorm(x + bias)`. transformers has no module for that (a Linear of width 0 breaks the ONNX
exporter and onnxruntime), so these two small modules stand in for the removed parts and the
exported graph holds just an Add and a LayerNorm (fused to SkipLayerNormalization) for them.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION, FFN = "attention", "ffn"
REMOVED_KEY = "abp_removed_sublayers"  # config key: {"attention": [layer indices], "ffn": [layer indices]}


class PassThrough(nn.Module):
    """Stands in for a removed sublayer's inner part: hands its input on (the next module ignores it)."""

    def __init__(self, tuple_output: bool):
        super().__init__()
        self.tuple_output = tuple_output  # attention.self returns (context, attention probabilities)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (hidden_states, None) if self.tuple_output else hidden_states


class BiasOnlyOutput(nn.Module):
    """`LayerNorm(input_tensor + bias)`: a residual sublayer whose every unit is dead (constants folded into `bias`)."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.bias)


def remove_attention(layer: nn.Module) -> None:
    """Replace a layer's attention by `LayerNorm(x + attention.output.dense.bias)` (its weights must be all zero)."""
    out = layer.attention.output
    layer.attention.self = PassThrough(tuple_output=True)
    layer.attention.output = BiasOnlyOutput(out.dense.bias, out.LayerNorm)


def remove_ffn(layer: nn.Module) -> None:
    """Replace a layer's FFN by `LayerNorm(x + output.dense.bias)` (its output weights must be all zero)."""
    out = layer.output
    layer.intermediate = PassThrough(tuple_output=False)
    layer.output = BiasOnlyOutput(out.dense.bias, out.LayerNorm)


def attention_removed(layer: nn.Module) -> bool:
    return isinstance(layer.attention.output, BiasOnlyOutput)


def ffn_removed(layer: nn.Module) -> bool:
    return isinstance(layer.output, BiasOnlyOutput)


def head_count(layer: nn.Module) -> int:
    """Attention heads the layer computes (0 once its attention is removed)."""
    return 0 if attention_removed(layer) else layer.attention.self.num_attention_heads


def ffn_width(layer: nn.Module) -> int:
    """FFN neurons the layer computes (0 once its FFN is removed)."""
    return 0 if ffn_removed(layer) else layer.intermediate.dense.out_features


def attention_width(layer: nn.Module) -> int:
    """Width of the layer's concatenated heads (0 once its attention is removed)."""
    return 0 if attention_removed(layer) else layer.attention.self.query.out_features
