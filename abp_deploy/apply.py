"""Rebuild a run's task model from its artefacts: fresh pretrained base + mask + task head."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from abp_deploy.artifacts import HEAD_FILE, MASK_FILE, WEIGHTS_FILE, load_mask, load_tensors, read_manifest
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
def load_run_model(run_dir: str | Path, base_model: str | None = None) -> tuple[PreTrainedModel, object, TaskSpec, dict]:
    """The masked task model of a finished run, built from a freshly loaded base model.

    The base's weights hash must equal the one recorded at prune time: a mask is meaningless on
    any other backbone, even one of the same shape.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    task = get_task(manifest["task"])
    name = base_model or manifest["base_model"]
    model, _ = load_classifier(name, task)
    digest = weights_hash(model)
    if digest != manifest["base_model_sha256"]:
        raise AbpError(f"base model {name} is not the one this run was pruned from (weights sha256 {digest[:12]} "
                       f"!= {manifest['base_model_sha256'][:12]}): pass --model {manifest['base_model']}")
    if (run_dir / WEIGHTS_FILE).exists():
        model.base_model.load_state_dict(load_tensors(run_dir / WEIGHTS_FILE))
    head = load_tensors(run_dir / HEAD_FILE)
    missing = set(head) - set(model.state_dict())
    if missing:
        raise AbpError(f"{run_dir / HEAD_FILE} has weights {sorted(missing)[:3]} this model lacks: re-run abp-deploy prune")
    model.load_state_dict(head, strict=False)
    if (run_dir / MASK_FILE).exists():
        apply_masks(model, load_mask(run_dir / MASK_FILE))
    return model.eval(), load_tokenizer(name), task, manifest
