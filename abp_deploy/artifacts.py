"""The run directory: mask, task head, manifest. Read and written here only, atomically.

Layout of a finished run (a folder is valid only if `manifest.json` exists, written last):
  mask.safetensors     one bit-packed uint8 tensor per masked matrix (np.packbits of the flat
                       boolean mask; shapes in the file's metadata): 1 bit per weight
  head.safetensors     the task head (classifier, and the pooler when the checkpoint had none)
  weights.safetensors  only for methods that change pretrained weights (finetune, magnitude, movement)
  unit_scales.safetensors  only with --unit-scales: one learned scale per head/neuron of each gated
                       output matrix (an extension of the paper; pretrained weights stay untouched)
  manifest.json        base model and its weights hash, task, method, sparsity, metrics, versions, hashes
  train.log            the training log
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from abp_deploy.atomic import incomplete_dir, write_json
from abp_deploy.errors import AbpError

MASK_FILE, HEAD_FILE, WEIGHTS_FILE, MANIFEST_FILE, LOG_FILE = (
    "mask.safetensors", "head.safetensors", "weights.safetensors", "manifest.json", "train.log")
SCALES_FILE = "unit_scales.safetensors"
MASK_FORMAT = "abp-mask-packbits-v1"


def save_mask(masks: dict[str, torch.Tensor], path: Path) -> None:
    """Write boolean masks bit-packed (8 weights a byte); shapes go in the safetensors metadata."""
    packed = {n: torch.from_numpy(np.packbits(m.cpu().numpy().reshape(-1))) for n, m in masks.items()}
    meta = {"format": MASK_FORMAT, "shapes": json.dumps({n: list(m.shape) for n, m in masks.items()})}
    save_file(packed, str(path), metadata=meta)


def load_mask(path: Path) -> dict[str, torch.Tensor]:
    """Read a bit-packed mask file back to boolean tensors; one line when it is damaged or its bytes do not
    fit the shapes it records (unpacking would silently pad the missing bits with zeros)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            packed = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AbpError(f"mask file {path} is unreadable (truncated or corrupted?): re-run abp-deploy prune") from exc
    if meta.get("format") != MASK_FORMAT:
        raise AbpError(f"{path} is not an abp-deploy mask (format {meta.get('format')!r}): pass a run folder made by prune")
    try:
        shapes = {name: [int(d) for d in shape] for name, shape in json.loads(meta["shapes"]).items()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise AbpError(f"mask file {path} has no readable shapes in its metadata: re-run abp-deploy prune") from exc
    if set(shapes) != set(packed):
        odd = sorted(set(shapes) ^ set(packed))
        raise AbpError(f"mask file {path} records shapes and bits for different matrices ({', '.join(odd[:3])}): "
                       "re-run abp-deploy prune")
    out = {}
    for name, bits in packed.items():
        count = math.prod(shapes[name])
        if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (count + 7) // 8:
            raise AbpError(f"mask file {path}: {name} holds {bits.numel()} bytes but its shape {shapes[name]} needs "
                           f"{(count + 7) // 8}: the file is damaged; re-run abp-deploy prune")
        out[name] = torch.from_numpy(np.unpackbits(bits.numpy(), count=count).astype(bool)).view(*shapes[name])
    return out


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file with the same one-line error for damage as the mask."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AbpError(f"{path} is unreadable (truncated or corrupted?): re-run abp-deploy prune") from exc


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(run_dir: Path, manifest: dict) -> None:
    """Write the manifest last, with the sha256 of every artefact file, so a complete run is detectable."""
    files = [p for p in (MASK_FILE, HEAD_FILE, WEIGHTS_FILE, SCALES_FILE) if (run_dir / p).exists()]
    write_json(run_dir / MANIFEST_FILE, {**manifest, "files": {p: file_sha256(run_dir / p) for p in files}})


def read_manifest(run_dir: Path, verify_files: bool = True) -> dict:
    """Read a finished run's manifest; check that the files it lists are the ones it was written with."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        hint = " (an interrupted run: continue it with prune --resume)" if incomplete_dir(run_dir).exists() else ""
        raise AbpError(f"{run_dir} is not a finished abp-deploy run: {MANIFEST_FILE} is missing{hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AbpError(f"{path} is corrupted ({exc.msg}): re-run abp-deploy prune") from exc
    if verify_files:
        for name, digest in manifest.get("files", {}).items():
            f = run_dir / name
            if not f.is_file() or file_sha256(f) != digest:
                raise AbpError(f"{f} is missing or changed since the run finished (sha256 mismatch): re-run abp-deploy prune")
    return manifest
