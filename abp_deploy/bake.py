"""Bake a masked model: cut its dead heads and FFN neurons out exactly, save it, load it back.

A baked folder is a `save_pretrained` folder (model.safetensors, config.json, tokenizer) plus
bake_summary.json. Its config records the cuts: `pruned_heads` (the library's own key, re-applied by
every `from_pretrained`), `abp_intermediate_sizes` (the FFN width of each layer) and
`abp_removed_sublayers` (layers whose attention or FFN had no live unit left, sublayers.py); only
`load_baked` knows how to re-create the last two.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_utils import no_init_weights
from transformers.pytorch_utils import prune_linear_layer
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from abp_deploy.atomic import atomic_dir
from abp_deploy.errors import AbpError
from abp_deploy.structure import KEPT_AS_ZERO, count_params_and_flops, encoder_layers, find_dead_structure
from abp_deploy.sublayers import ATTENTION, FFN, REMOVED_KEY, ffn_width, head_count, remove_attention, remove_ffn
from abp_deploy.units import HEAD, NEURON, UnitKind, owned_positions

SUMMARY_FILE = "bake_summary.json"
FFN_SIZES_KEY = "abp_intermediate_sizes"


@dataclass(frozen=True)
class BakeSummary:
    """What baking removed: sizes and dense FLOPs before/after, and per-layer cuts and survivors."""

    seq_len: int
    params_before: int
    params_after: int
    encoder_params_before: int
    encoder_params_after: int
    flops_per_token_before: int
    flops_per_token_after: int
    heads_removed: list[int]
    neurons_removed: list[int]
    heads: list[int]
    intermediate_sizes: list[int]
    sublayers_removed: dict[str, list[int]]  # layer indices whose attention / FFN bake removed whole


@torch.no_grad()
def _fold_constants(out: nn.Linear, columns: torch.Tensor, constant: torch.Tensor, kept: torch.Tensor) -> None:
    """Add `out.weight[:, columns] @ constant` to `out.bias`, then zero the kept columns.

    `constant` is what the dead units feed into `out` for every token; an out_zero unit's columns
    are zero, so it adds exactly nothing. The sum is taken in float64 to add no rounding of its own.
    """
    columns, kept = columns.to(out.weight.device), kept.to(out.weight.device)
    out.bias += (out.weight[:, columns].double() @ constant.double()).to(out.bias.dtype)
    out.weight[:, kept] = 0


def _fold_dead(layer: nn.Module, kind: UnitKind, dead: dict[int, str], constant: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Fold the dead units' constant output into the bias of their output matrix; zero a kept-as-zero unit.

    A dead unit with a live output slice has an all-zero source (a head's value rows, a neuron's
    input row), so it feeds `constant(source bias)` into the output matrix at every token: for a
    head the value bias (each softmax row sums to one, in eval mode without a head_mask), for a
    neuron act(bias).
    """
    width = kind.width(layer)
    columns = owned_positions(sorted(dead), width)
    kept = owned_positions([u for u, why in dead.items() if why == KEPT_AS_ZERO], width)
    _fold_constants(layer.get_submodule(kind.output), columns, constant(layer.get_submodule(kind.source).bias[columns]),
                    kept)


def _cut_neurons(layer: nn.Module, removed: list[int]) -> None:
    """Drop FFN neurons: their rows of the input matrices and columns of the output matrix (the structure map's)."""
    if not removed:
        return
    keep = owned_positions(sorted(set(range(NEURON.count(layer))) - set(removed)), NEURON.width(layer))
    for name, dim in [(n, 0) for n in NEURON.inputs] + [(NEURON.output, 1)]:
        parent, _, attr = name.rpartition(".")
        setattr(layer.get_submodule(parent), attr, prune_linear_layer(layer.get_submodule(name), keep, dim=dim))


def _all_dead(dead: dict[int, str]) -> bool:
    """Every unit of the kind is dead (one of them is then kept as zero, `structure._dead_units`)."""
    return KEPT_AS_ZERO in dead.values()


def _original_head_ids(model: PreTrainedModel, layer: nn.Module) -> list[int]:
    """Original head id of each current head position (`prune_heads` wants original ids)."""
    return sorted(set(range(model.config.num_attention_heads)) - layer.attention.pruned_heads)


@torch.no_grad()
def bake_model(model: PreTrainedModel, seq_len: int = 128) -> BakeSummary:
    """Remove the dead heads and FFN neurons of a masked model in place; its outputs stay the same.

    A layer whose heads (or neurons) are all dead loses its whole attention (or FFN) sublayer.
    FLOPs in the summary are per token for sequences of `seq_len` (see count_params_and_flops).
    """
    before = count_params_and_flops(model, seq_len)
    dtype = model.dtype
    dead = find_dead_structure(model)
    heads_to_prune = {}
    for index, (layer, layer_dead) in enumerate(zip(encoder_layers(model), dead.layers)):
        if layer_dead.heads:
            _fold_dead(layer, HEAD, layer_dead.heads, lambda value_bias: value_bias)
        if layer_dead.neurons:
            _fold_dead(layer, NEURON, layer_dead.neurons, layer.intermediate.intermediate_act_fn)
        _cut_neurons(layer, layer_dead.removable_neurons)
        if layer_dead.removable_heads:
            ids = _original_head_ids(model, layer)
            heads_to_prune[index] = [ids[h] for h in layer_dead.removable_heads]
    model.prune_heads(heads_to_prune)  # also records them in config.pruned_heads
    layers = encoder_layers(model)
    removed = {ATTENTION: [i for i, d in enumerate(dead.layers) if _all_dead(d.heads)],
               FFN: [i for i, d in enumerate(dead.layers) if _all_dead(d.neurons)]}
    for i in removed[ATTENTION]:  # the unit kept as zero is all that is left: the sublayer is LayerNorm(x + b)
        remove_attention(layers[i])
    for i in removed[FFN]:
        remove_ffn(layers[i])
    model.to(dtype)  # prune_linear_layer builds its new layers in torch's default dtype
    model.config.abp_intermediate_sizes = [ffn_width(layer) for layer in layers]
    previous = getattr(model.config, REMOVED_KEY, None) or {ATTENTION: [], FFN: []}
    setattr(model.config, REMOVED_KEY, {k: sorted(set(previous[k]) | set(v)) for k, v in removed.items()})
    after = count_params_and_flops(model, seq_len)
    return BakeSummary(
        seq_len=seq_len,
        params_before=before["total_params"],
        params_after=after["total_params"],
        encoder_params_before=before["encoder_linear_params"],
        encoder_params_after=after["encoder_linear_params"],
        flops_per_token_before=before["flops_per_token"],
        flops_per_token_after=after["flops_per_token"],
        heads_removed=[len(d.heads) if _all_dead(d.heads) else len(d.removable_heads) for d in dead.layers],
        neurons_removed=[len(d.neurons) if _all_dead(d.neurons) else len(d.removable_neurons) for d in dead.layers],
        heads=[head_count(layer) for layer in layers],
        intermediate_sizes=list(model.config.abp_intermediate_sizes),
        sublayers_removed=removed,
    )


def save_baked(model: PreTrainedModel, tokenizer, out_dir: str | Path, summary: BakeSummary,
               overwrite: bool = False, extra_json: dict[str, dict] | None = None) -> Path:
    """Write model (one safetensors file), tokenizer, summary and `extra_json` files to `out_dir`, all or nothing.

    Everything is written to a temporary sibling folder that is renamed into place only when
    complete, so an interrupted save never leaves a half-written model at `out_dir`.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite) as work:
        model.save_pretrained(work, safe_serialization=True, max_shard_size="1000GB")
        tokenizer.save_pretrained(work)
        (work / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2) + "\n")
        for name, content in (extra_json or {}).items():
            (work / name).write_text(json.dumps(content, indent=2) + "\n")
    return out_dir


def _resize_ffn(layer: nn.Module, width: int) -> None:
    """Give a freshly built layer an FFN of `width` neurons (weights are loaded afterwards)."""
    w_in = layer.intermediate.dense.weight
    factory = {"dtype": w_in.dtype, "device": w_in.device}
    layer.intermediate.dense = nn.Linear(layer.intermediate.dense.in_features, width, **factory)
    layer.output.dense = nn.Linear(width, layer.output.dense.out_features, **factory)


def load_baked(path: str | Path, attn_implementation: str | None = None) -> PreTrainedModel:
    """Load a baked folder in eval mode: rebuild its ragged shape from the config, then load weights strictly."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise AbpError(f"{path} is not a baked model folder ({CONFIG_NAME} missing): run abp-deploy bake to create it")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise AbpError(f"{path / CONFIG_NAME} is unreadable ({type(exc).__name__}): re-run abp-deploy bake") from exc
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with no_init_weights():  # every weight is overwritten by the strict load below
        model = AutoModelForSequenceClassification.from_config(config, **kwargs)  # applies config.pruned_heads
    layers = encoder_layers(model)
    sizes = getattr(config, FFN_SIZES_KEY, None) or [config.intermediate_size] * len(layers)
    if len(sizes) != len(layers):
        raise AbpError(f"{path / CONFIG_NAME}: {FFN_SIZES_KEY} has {len(sizes)} entries for {len(layers)} layers: "
                       "re-run abp-deploy bake")
    removed = getattr(config, REMOVED_KEY, None) or {ATTENTION: [], FFN: []}
    for i, (layer, width) in enumerate(zip(layers, sizes)):
        if i in removed[FFN]:
            remove_ffn(layer)
        elif width != layer.intermediate.dense.out_features:
            _resize_ffn(layer, width)
        if i in removed[ATTENTION]:
            remove_attention(layer)
    weights = path / SAFE_WEIGHTS_NAME
    if not weights.is_file():
        raise AbpError(f"{weights} is missing: re-run abp-deploy bake")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AbpError(f"{weights} is unreadable (truncated or corrupted?): re-run abp-deploy bake") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].strip()
        raise AbpError(f"{weights} does not match the shapes in {CONFIG_NAME} ({detail}): re-run abp-deploy bake") from exc
    return model.eval()
