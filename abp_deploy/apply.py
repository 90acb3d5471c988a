"""Rebuild a run's task model from its artefacts: fresh pretrained base + mask (+ unit scales) + task head."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from abp_deploy.artifacts import (HEAD_FILE, MASK_FILE, SCALES_FILE, WEIGHTS_FILE, load_mask, load_tensors,
                                  read_manifest)
from abp_deploy.errors import AbpError
from abp_deploy.models import load_classifier, load_tokenizer, prunable_linears, weights_hash
from abp_deploy.tasks import TaskSpec, get_task


@torch.no_grad()
def apply_masks(model: PreTrainedModel, masks: dict[str, torch.Tensor]) -> None:
    """Multiply each mask into its weight matrix, after checking names and shapes match the model."""
    layers = prunable_linears(model)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise AbpError(f"the mask does not match the model: it has matrices {unknown[:3]} the model lacks; "
                       "pass the --model it was pruned from")
    for name, mask in masks.items():
        weight = layers[name].weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise AbpError(f"the mask does not match the model: {name} is {tuple(mask.shape)} in the mask but "
                           f"{tuple(weight.shape)} in the model; pass the --model it was pruned from")
        weight.mul_(mask.to(weight.device, weight.dtype))


@torch.no_grad()
def apply_unit_scales(model: PreTrainedModel, scales: dict[str, torch.Tensor]) -> None:
    """Multiply each unit's scale into its input columns of the output matrix (a head's scale into all its columns)."""
    layers = prunable_linears(model)
    for name, scale in scales.items():
        weight = layers[name].weight if name in layers else None
        if weight is None or scale.dim() != 1 or scale.numel() == 0 or weight.shape[1] % scale.numel():
            shape = None if weight is None else tuple(weight.shape)
            raise AbpError(f"the unit scales do not match the model: {name} has {scale.numel()} scales for a matrix "
                           f"of shape {shape}; pass the --model the run was pruned from")
        width = weight.shape[1] // scale.numel()
        weight.mul_(scale.to(weight.device, weight.dtype).repeat_interleave(width)[None, :])


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_base(model: PreTrainedModel, initialised: set[str], name: str, manifest: dict) -> None:
    """Refuse a base model other than the run's, saying what differs: the weights its checkpoint provides, or their values.

    Weights the checkpoint lacked (`initialised`, e.g. a missing pooler) are random on every load: the run
    keeps them in its head file, and they are compared by name only, not hashed.
    """
    recorded, pruned_from = manifest.get("initialised_weights"), manifest["base_model"]
    same_name = name == pruned_from
    fix = ("restore that checkpoint, or re-run abp-deploy prune" if same_name
           else f"pass --model {pruned_from}, the model it was pruned from")
    base_initialised = sorted(k for k in initialised if k.startswith(model.base_model_prefix + "."))
    if recorded is None and base_initialised:
        raise AbpError(f"{name} lacks {_some(base_initialised)}, and this run (older than the record of initialised "
                       "weights in manifest.json) hashed their random values, so its base cannot be checked: "
                       "re-run abp-deploy prune")
    if recorded is not None and set(recorded) != initialised:
        lacks, has = sorted(initialised - set(recorded)), sorted(set(recorded) - initialised)
        differs = "; ".join([f"it lacks {_some(lacks)}"] * bool(lacks) + [f"it provides {_some(has)}"] * bool(has))
        raise AbpError(f"base model {name} does not provide the weights the run's base did ({differs}): {fix}")
    digest, expected = weights_hash(model, skip=initialised), manifest["base_model_sha256"]
    if digest != expected:
        what = (f"the weights of {name} changed since this run was pruned" if same_name
                else f"base model {name} is not the one this run was pruned from")
        raise AbpError(f"{what} (sha256 of its weights {digest[:12]} != {expected[:12]}): {fix}")


@torch.no_grad()
def load_run_model(run_dir: str | Path, base_model: str | None = None) -> tuple[PreTrainedModel, object, TaskSpec, dict]:
    """The masked task model of a finished run, built from a freshly loaded base model.

    The base's weights hash must equal the one recorded at prune time: a mask is meaningless on
    any other backbone, even one of the same shape.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    task = get_task(manifest["task"])
    name = base_model or manifest["base_model"]
    model, initialised = load_classifier(name, task)
    check_base(model, initialised, name, manifest)
    if (run_dir / WEIGHTS_FILE).exists():
        model.base_model.load_state_dict(load_tensors(run_dir / WEIGHTS_FILE))
    head = load_tensors(run_dir / HEAD_FILE)
    missing = set(head) - set(model.state_dict())
    if missing:
        raise AbpError(f"{run_dir / HEAD_FILE} has weights {sorted(missing)[:3]} this model lacks: re-run abp-deploy prune")
    model.load_state_dict(head, strict=False)
    if (run_dir / MASK_FILE).exists():
        apply_masks(model, load_mask(run_dir / MASK_FILE))
    if (run_dir / SCALES_FILE).exists():
        apply_unit_scales(model, load_tensors(run_dir / SCALES_FILE))
    return model.eval(), load_tokenizer(name), task, manifest
