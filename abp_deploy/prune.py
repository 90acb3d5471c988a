"""Stage one: learn a task mask over a frozen pretrained encoder (or run a comparison method).

One training loop serves every method of `methods.py`; Accelerate places it on CPU, one GPU or
many (`accelerate launch`), and handles mixed precision and resumable state.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

from abp_deploy import __version__
from abp_deploy.artifacts import (HEAD_FILE, LOG_FILE, MASK_FILE, WEIGHTS_FILE, finish, incomplete_dir, save_mask,
                                  write_manifest)
from abp_deploy.data import load_split, tokenize
from abp_deploy.errors import AbpError
from abp_deploy.evaluation import dev_loader, evaluate
from abp_deploy.distill import distill_loss, load_teacher
from abp_deploy.gates import GATED, GRANULARITIES, attach_gates, final_gate_masks, gate_scores, set_gate_keep_ratio
from abp_deploy.masking import attach, cubic_sparsity, detach_masks, final_masks, set_keep_ratio
from abp_deploy.methods import Method, get_method
from abp_deploy.models import DEFAULT_MODEL, load_classifier, load_tokenizer, prunable_linears, weights_hash
from abp_deploy.progress import step_progress
from abp_deploy.structure import surviving_structure
from abp_deploy.tasks import get_task

CHECKPOINT = "checkpoint"
RUN_CONFIG = "prune_config.json"
# Settings that may differ between an interrupted run and its --resume.
_RESUME_FREE = {"resume", "overwrite", "progress", "checkpoint_every"}
# Gates are few (one per head or neuron) and each sums many weights' gradients, yet they learned best
# at 5x the weight scores' rate: +4.0 pt (structured 50%) and +0.9 pt (hybrid 70%), benchmarks/RESULTS.md.
DEFAULT_GATE_LR = 5e-2


@dataclass
class PruneConfig:
    """Every setting of a prune run; written to the run folder so `--resume` can check it."""

    task: str = "rotten_tomatoes"
    model: str = DEFAULT_MODEL
    method: str = "abp"
    sparsity: float | None = None  # None: 0.5 for pruning methods, 0 for finetune
    scope: str = "per-matrix"  # top-k per matrix, or "global" across all masked matrices
    granularity: str = "unstructured"  # or block / head / neuron / structured / hybrid, see gates.py
    inner_sparsity: float | None = None  # hybrid only: unstructured sparsity inside the kept units [default 0.3]
    block_size: int | None = None  # tile side of the fine mask: block [default 32] and hybrid [default 1] only
    output: str = "runs/abp"
    data_dir: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: float = 3.0
    max_steps: int | None = None
    lr: float = 5e-5  # pretrained weights (methods that train them)
    score_lr: float = 1e-2  # mask scores
    gate_lr: float | None = None  # head/neuron gate scores [default: DEFAULT_GATE_LR]
    score_init: str = "magnitude"  # "magnitude" (|W|, normalised) or "constant"
    head_lr: float = 1e-3  # the new task head
    distill_from: str | None = None  # finished dense run whose logits teach the mask (distill.py)
    distill_alpha: float = 0.5  # weight of the soft-target loss
    distill_temperature: float = 2.0
    warmup_ratio: float = 0.1
    mask_pooler: bool = True
    seed: int = 42
    device: str = "auto"
    mixed_precision: str = "auto"
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def resolved_sparsity(cfg: PruneConfig, method: Method) -> float:
    """The sparsity target, checked against the method (finetune is dense by definition)."""
    if method.mask is None:
        if cfg.sparsity not in (None, 0, 0.0):
            raise AbpError(f"--method finetune trains densely: drop --sparsity {cfg.sparsity} or pick a pruning method")
        return 0.0
    sparsity = 0.5 if cfg.sparsity is None else cfg.sparsity
    if not 0.0 <= sparsity < 1.0:
        raise AbpError(f"--sparsity {sparsity} is outside [0, 1): pass the fraction of weights to zero, e.g. 0.5")
    return sparsity


def resolved_block_size(cfg: PruneConfig) -> int:
    """Tile side of the fine mask: 32 for block, 1 (single weights) for hybrid unless set; refused elsewhere."""
    if cfg.block_size is None:
        return 32 if cfg.granularity == "block" else 1
    if cfg.granularity not in ("block", "hybrid"):
        raise AbpError(f"--block-size applies to --granularity block or hybrid, not {cfg.granularity}: drop it")
    if cfg.block_size < 1:
        raise AbpError(f"--block-size {cfg.block_size} must be a positive tile side, e.g. 32")
    return cfg.block_size


def resolved_gate_lr(cfg: PruneConfig) -> float:
    """The gates' learning rate: the user's, or DEFAULT_GATE_LR."""
    return DEFAULT_GATE_LR if cfg.gate_lr is None else cfg.gate_lr


def _accelerator(cfg: PruneConfig) -> Accelerator:
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise AbpError(f"--device {cfg.device} is unknown: choose auto, cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise AbpError("--device cuda was asked for but no CUDA device is visible: use --device cpu or auto")
    on_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "no" if on_cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return Accelerator(cpu=on_cpu, mixed_precision=precision,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def _prepare_work_dir(cfg: PruneConfig, out: Path) -> Path:
    work = incomplete_dir(out)
    saved = work / RUN_CONFIG
    if cfg.resume:
        if not (work / CHECKPOINT).is_dir():
            raise AbpError(f"nothing to resume at {work}: run without --resume to start a new run")
        old = json.loads(saved.read_text())
        defaults = dataclasses.asdict(PruneConfig())  # a setting newer than the interrupted run had its default
        changed = [k for k, v in dataclasses.asdict(cfg).items()
                   if k not in _RESUME_FREE and old.get(k, defaults[k]) != v]
        if changed:
            raise AbpError(f"--resume with settings that differ from the interrupted run ({', '.join(changed)}): "
                           "resume with the original settings or start over with --overwrite")
        return work
    if out.exists() and not cfg.overwrite:
        raise AbpError(f"{out} already exists: pass --overwrite or choose another --output")
    if work.exists():
        if not cfg.overwrite:
            raise AbpError(f"an interrupted run is at {work}: pass --resume to continue it or --overwrite to start over")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    saved.write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return work


def _logger(work: Path) -> logging.Logger:
    log = logging.getLogger(f"abp_deploy.prune.{work}")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    handler = logging.FileHandler(work / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return log


def _param_groups(model, method: Method, head_keys: set[str], gate_params: set[int], cfg: PruneConfig) -> list[dict]:
    """Optimizer groups: task head, mask scores, gate scores, and (for tuning methods) the pretrained weights."""
    head, scores, gates, weights = [], [], [], []
    for name, param in model.named_parameters():
        if name in head_keys:
            head.append(param)
        elif id(param) in gate_params:
            gates.append(param)
        elif name.endswith(".scores"):
            scores.append(param)
        elif method.trains_weights:
            weights.append(param)
        else:
            param.requires_grad_(False)  # adapting by pruning: pretrained weights never change
    groups = [{"params": head, "lr": cfg.head_lr, "weight_decay": 0.0}]
    if scores:
        groups.append({"params": scores, "lr": cfg.score_lr, "weight_decay": 0.0})
    if gates:
        groups.append({"params": gates, "lr": resolved_gate_lr(cfg), "weight_decay": 0.0})
    if weights:
        groups.append({"params": weights, "lr": cfg.lr, "weight_decay": 0.01})
    return groups


def _save_checkpoint(accelerator: Accelerator, work: Path, step: int) -> None:
    tmp = work / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(work / CHECKPOINT, ignore_errors=True)
    tmp.replace(work / CHECKPOINT)


def _sparsity_report(masks: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    per = {n: 1.0 - m.float().mean().item() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    zeros = sum((~m).sum().item() for m in masks.values())
    return (zeros / total if total else 0.0), per


def prune(cfg: PruneConfig) -> dict:
    """Run one prune (or baseline) job and return its manifest; the run folder appears only when done."""
    started = time.time()
    task, method = get_task(cfg.task), get_method(cfg.method)
    target = resolved_sparsity(cfg, method)
    if cfg.score_init not in ("magnitude", "constant"):
        raise AbpError(f"--score-init {cfg.score_init} is unknown: choose magnitude or constant")
    if cfg.scope not in ("per-matrix", "global"):
        raise AbpError(f"--scope {cfg.scope} is unknown: choose per-matrix or global")
    if cfg.granularity not in GRANULARITIES:
        raise AbpError(f"--granularity {cfg.granularity} is unknown: choose {', '.join(GRANULARITIES)}")
    gated_run = cfg.granularity in GATED
    hybrid = cfg.granularity == "hybrid"
    block = resolved_block_size(cfg)
    inner = (0.3 if cfg.inner_sparsity is None else cfg.inner_sparsity) if hybrid else 0.0
    if cfg.inner_sparsity is not None and not hybrid:
        raise AbpError("--inner-sparsity applies to --granularity hybrid only: drop it or use hybrid")
    if not 0.0 <= inner < 1.0:
        raise AbpError(f"--inner-sparsity {inner} is outside [0, 1): pass the fraction of kept units' weights to zero")
    if cfg.gate_lr is not None and not gated_run:
        raise AbpError("--gate-lr applies to gated granularities (head, neuron, structured, hybrid): drop it")
    if not 0.0 <= cfg.distill_alpha <= 1.0 or cfg.distill_temperature <= 0:
        raise AbpError(f"--distill-alpha {cfg.distill_alpha} / --distill-temperature {cfg.distill_temperature} out of "
                       "range: alpha in [0, 1], temperature > 0")
    if cfg.granularity != "unstructured" and method.mask != "score":
        raise AbpError(f"--granularity {cfg.granularity} learns scores, which --method {method.name} has none of: "
                       "use --method abp or movement")
    out = Path(cfg.output)
    accelerator = _accelerator(cfg)
    set_seed(cfg.seed)
    # Load everything that can fail on bad input before any folder is created.
    tokenizer = load_tokenizer(cfg.model)
    train = tokenize(load_split(task, "train", cfg.data_dir, cfg.max_train_samples), tokenizer, cfg.max_length)
    devs = {s: tokenize(load_split(task, s, cfg.data_dir, cfg.max_eval_samples), tokenizer, cfg.max_length)
            for s in task.dev_splits}
    model, new_keys = load_classifier(cfg.model, task)
    teacher = load_teacher(cfg.distill_from, task, tokenizer) if cfg.distill_from else None
    base_hash = weights_hash(model)
    head_keys = new_keys  # weights the checkpoint lacked are the new task head
    pooler_is_pretrained = not any(".pooler." in k for k in new_keys)
    layers = prunable_linears(model, include_pooler=cfg.mask_pooler and pooler_is_pretrained)
    if method.mask is not None and (hybrid or not gated_run):  # first, so masking's helpers find it at index 0
        attach(layers, method.mask, score_init=cfg.score_init, seed=cfg.seed, block=block)
    gated = attach_gates(model, cfg.granularity, cfg.score_init, seed=cfg.seed) if gated_run else {}
    work = _prepare_work_dir(cfg, out) if accelerator.is_main_process else incomplete_dir(out)
    accelerator.wait_for_everyone()
    log = _logger(work)

    optimizer = torch.optim.AdamW(_param_groups(model, method, head_keys, {id(p) for p in gate_scores(gated)}, cfg))
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer))
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size / accelerator.num_processes)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if teacher is not None:
        teacher.to(accelerator.device)

    step = json.loads((work / CHECKPOINT / "step.json").read_text())["step"] if cfg.resume else 0
    pending_restore = cfg.resume
    log.info("start: %s", json.dumps(dataclasses.asdict(cfg)))
    model.train()
    with step_progress(f"{method.name} {task.name}", total, enabled=cfg.progress and accelerator.is_main_process) as bar:
        bar.advance(step)
        while step < total:
            epoch, skip = divmod(step, steps_per_epoch)
            loader.set_epoch(epoch)
            batches = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
            if pending_restore:
                # The checkpointed RNG state (dropout) must be the one the uninterrupted run had here.
                # Accelerate's loader starts its inner iterator, which draws a seed from the global RNG,
                # at the first next(). Mid-epoch the uninterrupted run made that draw at the epoch's
                # start, before the checkpoint: so draw it now and restore after; at an epoch
                # boundary both runs draw after the checkpoint.
                if skip:
                    batches = itertools.chain([next(batches)], batches)
                accelerator.load_state(str(work / CHECKPOINT))
                pending_restore = False
                log.info("resumed at step %d", step)
            for batch in batches:
                sparsity = cubic_sparsity(step, total, target)
                if gated:
                    set_gate_keep_ratio(gated, 1.0 - sparsity)
                if hybrid:
                    set_keep_ratio(layers, 1.0 - cubic_sparsity(step, total, inner), cfg.scope)
                elif method.mask is not None and not gated:
                    set_keep_ratio(layers, 1.0 - sparsity, cfg.scope)
                outputs = model(**batch)
                loss = outputs.loss
                if teacher is not None:
                    with torch.no_grad(), accelerator.autocast():
                        teacher_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
                    loss = distill_loss(outputs.logits, teacher_logits, batch["labels"], cfg.distill_alpha,
                                        cfg.distill_temperature)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                bar.update(loss=loss.item(), sparsity=sparsity)
                if step % 10 == 0 or step == total:
                    log.info("step %d/%d loss %.4f sparsity %.3f", step, total, loss.item(), sparsity)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    accelerator.wait_for_everyone()
                    if accelerator.is_main_process:
                        _save_checkpoint(accelerator, work, step)
                if step >= total:
                    break

    model = accelerator.unwrap_model(model)
    if hybrid:
        unstructured, gates = final_masks(layers, 1.0 - inner, cfg.scope), final_gate_masks(gated, 1.0 - target)
        masks = {n: m & gates[n] if n in gates else m for n, m in unstructured.items()}
    elif gated:
        masks = final_gate_masks(gated, 1.0 - target)
    else:
        masks = final_masks(layers, 1.0 - target, cfg.scope) if method.mask is not None else {}
    if method.mask is not None:
        detach_masks(layers)
    frozen_ok = weights_hash(model) == base_hash  # pretrained weights untouched (abp), checked, not assumed
    state = model.state_dict()
    head = {k: state[k].detach().cpu().contiguous() for k in sorted(head_keys)}
    trained_weights = ({k: v.detach().cpu().contiguous() for k, v in model.base_model.state_dict().items()}
                       if method.trains_weights else None)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask.to(layers[name].weight.device, layers[name].weight.dtype))
    metrics = evaluate(model, task, {s: dev_loader(d, tokenizer, cfg.eval_batch_size) for s, d in devs.items()})
    achieved, per_matrix = _sparsity_report(masks)
    mask_zeros = achieved
    structure = surviving_structure(model)
    if gated:  # a closed gate also kills the unit's q/k/v rows or FFN input row, unmasked but unused
        achieved = 1.0 - structure["encoder_weights_kept"]
    log.info("dev metrics %s; sparsity %.4f", json.dumps(metrics), achieved)

    if accelerator.is_main_process:
        from safetensors.torch import save_file

        if masks:
            save_mask(masks, work / MASK_FILE)
        save_file(head, str(work / HEAD_FILE))
        if trained_weights is not None:
            save_file(trained_weights, str(work / WEIGHTS_FILE))
        manifest = {
            "abp_deploy_version": __version__,
            "base_model": cfg.model,
            "base_model_sha256": base_hash,
            "model_type": model.config.model_type,
            "task": task.name,
            "labels": list(task.labels),
            "max_length": cfg.max_length,
            "method": method.name,
            "scope": cfg.scope,
            "granularity": cfg.granularity,
            "pretrained_weights_unchanged": frozen_ok,
            "target_sparsity": target,
            "sparsity": achieved,
            "mask_sparsity": mask_zeros,
            "inner_sparsity": inner,
            "block_size": block,
            "gate_lr": resolved_gate_lr(cfg) if gated_run else None,
            "sparsity_per_matrix": per_matrix,
            "structure": structure,
            "masked_weights": int(sum(m.numel() for m in masks.values())),
            "seed": cfg.seed,
            "steps": total,
            "train_examples": len(train),
            "dev_metrics": metrics,
            "config": dataclasses.asdict(cfg),
            "device": str(accelerator.device),
            "num_processes": accelerator.num_processes,
            "wall_time_s": round(time.time() - started, 1),
            "versions": _versions(),
        }
        shutil.rmtree(work / CHECKPOINT, ignore_errors=True)
        write_manifest(work, manifest)
        for handler in log.handlers:
            handler.close()
        finish(work, out, cfg.overwrite)
        return manifest
    return {}


def _versions() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "accelerate": accelerate.__version__}
