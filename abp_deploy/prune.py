"""Stage one: learn a task mask over a frozen pretrained encoder (or run a comparison method).

One training loop serves every method of `methods.py`; Accelerate places it on CPU, one GPU or
many (`accelerate launch`), and handles mixed precision and resumable state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
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
from abp_deploy.artifacts import (
    HEAD_FILE,
    LOG_FILE,
    MASK_FILE,
    SCALES_FILE,
    WEIGHTS_FILE,
    save_mask,
    write_manifest,
)
from abp_deploy.apply import apply_masks, apply_unit_scales
from abp_deploy.atomic import check_output_path, incomplete_dir
from abp_deploy.batching import LengthGroupedBatches, by_length, token_lengths
from abp_deploy.checkpoints import (
    checkpoint_step,
    finish_run,
    load_checkpoint,
    prepare_work_dir,
    run_lock,
    save_checkpoint,
)
from abp_deploy.data import load_split, skipped_rows
from abp_deploy.distill import distill_loss, load_teacher
from abp_deploy.errors import AbpError, RunInterrupted
from abp_deploy.evaluation import dev_loader, evaluate
from abp_deploy.methods import Method, get_method
from abp_deploy.models import (
    DEFAULT_MODEL,
    load_classifier,
    load_tokenizer,
    position_limit,
    pooler_unused_by_checkpoint,
    prunable_linears,
    weights_hash,
)
from abp_deploy.progress import step_progress
from abp_deploy.regression import TargetScaler
from abp_deploy.sparsifiers import Sparsifier, build_sparsifier
from abp_deploy.tasks import get_task
from abp_deploy.token_cache import cached_tokenize, default_cache_dir
from abp_deploy.versions import versions

# Settings that may differ between an interrupted run and its --resume.
CALIBRATION_EXAMPLES = 2048  # Kwon et al. 2022 search masks with 2k examples
_RESUME_FREE = {"resume", "overwrite", "progress", "checkpoint_every", "token_cache"}


@dataclass
class PruneConfig:
    """Every setting of a prune run; written to the run folder so `--resume` can check it."""

    task: str = "rotten_tomatoes"
    model: str = DEFAULT_MODEL
    method: str = "abp"
    sparsity: float | None = None  # None: 0.5 for pruning methods, 0 for finetune
    scope: str = "per-matrix"  # top-k per matrix, or "global" across all masked matrices
    granularity: str = "unstructured"  # or block / head / neuron / structured / hybrid, see sparsifiers/
    inner_sparsity: float | None = None  # hybrid only: unstructured sparsity inside the kept units [default 0.3]
    block_size: int | None = None  # tile side of the fine mask: block [default 32] and hybrid [default 1] only
    output: str = "runs/abp"
    data_dir: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 128
    batch_size: int = 32
    group_by_length: bool = True  # batches of similar lengths (batching.py): far less padding, same examples
    token_cache: bool = True  # keep tokenised splits on disk (token_cache.py; $ABP_DEPLOY_CACHE)
    eval_batch_size: int = 64
    epochs: float = 3.0
    max_steps: int | None = None
    lr: float = 5e-5  # pretrained weights (methods that train them)
    score_lr: float = 1e-2  # mask scores
    gate_lr: float | None = None  # head/neuron gate scores [default: sparsifiers.DEFAULT_GATE_LR]
    gate_init: str = "magnitude"  # or "fisher": head fitted, then gates start from their Fisher information
    gate_budget: str = "per-kind"  # or "flops": heads and neurons ranked together against one FLOPs budget
    unit_scales: bool = False  # learn one output scale per kept head/neuron (an extension of the paper)
    score_init: str = "magnitude"  # "magnitude" (|W|, normalised) or "constant"
    head_lr: float = 1e-3  # the new task head
    distill_from: str | None = None  # finished dense run whose logits teach the mask (distill.py)
    distill_alpha: float = 0.5  # weight of the soft-target loss
    distill_temperature: float = 2.0
    warmup_ratio: float = 0.1
    mask_pooler: bool = True
    # Train the pretrained pooler with the head instead of masking it. For checkpoints whose pooler was never trained
    # (sentence-transformers models read a mean of the tokens, not [CLS] through the pooler), a frozen pooler is a
    # fixed random-like projection between the masked encoder and the classifier.
    train_pooler: bool = False
    pooler_lr: float | None = None  # --train-pooler's learning rate [default: --lr, as fine-tuning trains it]
    seed: int = 42
    device: str = "auto"
    mixed_precision: str = "auto"
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


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


def _logger(work: Path) -> logging.Logger:
    log = logging.getLogger(f"abp_deploy.prune.{work}")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    handler = logging.FileHandler(work / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return log



def _check_settings(cfg: PruneConfig) -> None:
    """Every option that can be wrong on its own, checked before any data loads or folder exists."""
    check_output_path(Path(cfg.output))
    at_least_one = {"--max-steps": cfg.max_steps, "--batch-size": cfg.batch_size,
                    "--eval-batch-size": cfg.eval_batch_size, "--max-train-samples": cfg.max_train_samples,
                    "--max-eval-samples": cfg.max_eval_samples}
    for option, value in at_least_one.items():
        if value is not None and value < 1:
            raise AbpError(f"{option} {value} must be at least 1" +
                           (" (drop it to train for --epochs)" if option == "--max-steps" else ""))
    if cfg.epochs <= 0:
        raise AbpError(f"--epochs {cfg.epochs} must be positive, e.g. 3")
    if cfg.max_length < 2:
        raise AbpError(f"--max-length {cfg.max_length} leaves no room for a token between [CLS] and [SEP]: "
                       "pass e.g. 128")
    if cfg.checkpoint_every < 0:
        raise AbpError(f"--checkpoint-every {cfg.checkpoint_every} must be 0 (never) or a positive number of steps")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise AbpError(f"--warmup-ratio {cfg.warmup_ratio} is outside [0, 1)")
    if not 0.0 <= cfg.distill_alpha <= 1.0 or cfg.distill_temperature <= 0:
        raise AbpError(f"--distill-alpha {cfg.distill_alpha} / --distill-temperature {cfg.distill_temperature} out of "
                       "range: alpha in [0, 1], temperature > 0")
    if cfg.train_pooler and get_method(cfg.method).trains_weights:
        raise AbpError(f"--train-pooler is for masks over frozen weights; --method {cfg.method} already trains the "
                       "pooler with the rest: drop --train-pooler")
    if cfg.pooler_lr is not None and not cfg.train_pooler:
        raise AbpError(f"--pooler-lr {cfg.pooler_lr} needs --train-pooler "
                       "(without it the pooler is masked, not trained)")
    if cfg.mixed_precision not in ("auto", "no", "fp16", "bf16"):
        raise AbpError(f"--mixed-precision {cfg.mixed_precision} is unknown: choose auto, no, fp16 or bf16")


def _resolved(cfg: PruneConfig) -> PruneConfig:
    """Folder options made absolute, so bake, export and bench find them from any working directory."""
    absolute = {k: str(Path(v).resolve()) for k in ("data_dir", "distill_from") if (v := getattr(cfg, k))}
    return dataclasses.replace(cfg, **absolute)


def _param_groups(model, method: Method, head_keys: set[str], pooler_keys: set[str], sparsifier: Sparsifier,
                  cfg: PruneConfig) -> list[dict]:
    """Optimizer groups: task head, a trained pretrained pooler, the sparsifier's scores, and (for tuning methods)
    the pretrained weights."""
    own = [g for g in sparsifier.param_groups(model) if g["params"]]
    taken = {id(p) for g in own for p in g["params"]}
    head, pooler, weights = [], [], []
    for name, param in model.named_parameters():
        if name in pooler_keys:
            pooler.append(param)
        elif name in head_keys:
            head.append(param)
        elif id(param) in taken:
            continue
        elif method.trains_weights:
            weights.append(param)
        else:
            param.requires_grad_(False)  # adapting by pruning: pretrained weights never change (nor get a gradient)
    groups = [{"params": head, "lr": cfg.head_lr, "weight_decay": 0.0}, *own]
    if pooler:
        groups.append({"params": pooler, "lr": cfg.lr if cfg.pooler_lr is None else cfg.pooler_lr, "weight_decay": 0.0})
    if weights:
        groups.append({"params": weights, "lr": cfg.lr, "weight_decay": 0.01})
    return groups


def _train_loader(train, tokenizer, cfg: PruneConfig) -> tuple[DataLoader, LengthGroupedBatches | None]:
    """Shuffled batches padded to their longest example; length-grouped (sampler returned too) unless switched off."""
    collate = DataCollatorWithPadding(tokenizer)
    if not cfg.group_by_length:
        return DataLoader(train, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate), None
    batches = LengthGroupedBatches(token_lengths(train), cfg.batch_size, cfg.seed)
    return DataLoader(train, batch_sampler=batches, collate_fn=collate), batches


def _calibration_batches(train, tokenizer, cfg: PruneConfig, scaler: TargetScaler | None, device) -> list[dict]:
    """Up to CALIBRATION_EXAMPLES training examples (a seeded subset) in length-sorted batches, labels as trained."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:CALIBRATION_EXAMPLES]
    subset = train.select(order.tolist())
    subset = subset.select(by_length(token_lengths(subset)))
    batches = [{k: v.to(device) for k, v in b.items()}
               for b in DataLoader(subset, batch_size=cfg.batch_size, collate_fn=DataCollatorWithPadding(tokenizer))]
    return [b | {"labels": scaler.scale(b["labels"])} for b in batches] if scaler is not None else batches


def _train_step(model, batch: dict, teacher, cfg: PruneConfig, accelerator: Accelerator,
                scaler: TargetScaler | None = None) -> torch.Tensor:
    """One forward and backward pass; the loss is the task's, or blended with a teacher's soft targets.

    For regression the head learns standardised targets (`scaler`), the teacher's scores scaled alike.
    """
    if scaler is not None:
        batch = batch | {"labels": scaler.scale(batch["labels"])}
    outputs = model(**batch)
    loss = outputs.loss
    if teacher is not None:
        with torch.no_grad(), accelerator.autocast():
            teacher_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        if scaler is not None:
            teacher_logits = scaler.scale(teacher_logits)
        loss = distill_loss(outputs.logits, teacher_logits, batch["labels"], cfg.distill_alpha, cfg.distill_temperature)
    accelerator.backward(loss)
    return loss


def _interrupted(work: Path, step: int, total: int) -> RunInterrupted:
    """What to tell a user who pressed Ctrl-C (a run with no checkpoint is then removed by `prune`)."""
    saved = checkpoint_step(work) if work.exists() else None
    if saved is None:
        return RunInterrupted(f"interrupted at step {step} of {total}, before the first checkpoint: nothing was "
                              "kept; run the same command again to start over")
    return RunInterrupted(f"interrupted at step {step} of {total}; the last checkpoint is step {saved} in {work}")


def prune(cfg: PruneConfig) -> dict:
    """Run one prune (or baseline) job and return its manifest; the run folder appears only when done."""
    started = time.time()
    cfg = _resolved(cfg)
    task, method = get_task(cfg.task), get_method(cfg.method)
    _check_settings(cfg)
    sparsifier = build_sparsifier(cfg, method)
    out = Path(cfg.output)
    accelerator = _accelerator(cfg)
    set_seed(cfg.seed)
    # Load everything that can fail on bad input before any folder is created.
    tokenizer = load_tokenizer(cfg.model)
    limit = position_limit(cfg.model)
    if cfg.max_length > limit:
        raise AbpError(f"--max-length {cfg.max_length} is longer than {cfg.model} can read ({limit} positions): "
                       f"pass --max-length {limit} or less")
    cache = default_cache_dir() if cfg.token_cache else None
    train = cached_tokenize(load_split(task, "train", cfg.data_dir, cfg.max_train_samples), tokenizer, cfg.max_length,
                            cache)
    devs = {s: cached_tokenize(load_split(task, s, cfg.data_dir, cfg.max_eval_samples), tokenizer, cfg.max_length,
                               cache) for s in task.dev_splits}
    skipped = {"train": skipped_rows(train), **{s: skipped_rows(d) for s, d in devs.items()}}
    scaler = TargetScaler.fit(list(train["labels"])) if task.is_regression else None
    model, new_keys = load_classifier(cfg.model, task)
    teacher = load_teacher(cfg.distill_from, task, tokenizer) if cfg.distill_from else None
    base_hash = weights_hash(model, skip=new_keys)  # only the weights the checkpoint provides
    # The task head: the weights the checkpoint lacked, and the pretrained pooler when --train-pooler
    pooler_keys = {k for k, _ in model.named_parameters() if ".pooler." in k}
    trained_pooler = pooler_keys - new_keys if cfg.train_pooler else set()  # pretrained, trained like fine-tuning
    head_keys = new_keys | trained_pooler
    frozen_hash = base_hash if head_keys == new_keys else weights_hash(model, skip=head_keys)  # hash once if same
    pooler_is_pretrained = not pooler_keys & new_keys
    masks_pooler = cfg.mask_pooler and pooler_is_pretrained and not cfg.train_pooler
    layers = prunable_linears(model, include_pooler=masks_pooler)
    if masks_pooler and not method.trains_weights and pooler_unused_by_checkpoint(cfg.model):
        logging.getLogger(__name__).warning(
            "%s pools tokens without [CLS] (sentence-transformers), so its pooler was never trained and is masked "
            "and frozen here; `abp-deploy prune --train-pooler` trains it with the head (it helped CoLA and MRPC, "
            "not rotten_tomatoes: benchmarks/RESULTS.md)", cfg.model)
    sparsifier.attach(model, layers)
    if not cfg.resume:  # a resumed run restores its scores and head from the checkpoint
        model.to(accelerator.device)
        sparsifier.calibrate(model, lambda: _calibration_batches(train, tokenizer, cfg, scaler, accelerator.device))
    with run_lock(out) if accelerator.is_main_process else contextlib.nullcontext():
        config = dataclasses.asdict(cfg)
        if accelerator.is_main_process:
            work, step = prepare_work_dir(config, out, cfg.resume, cfg.overwrite, _RESUME_FREE,
                                          dataclasses.asdict(PruneConfig()))
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            work = incomplete_dir(out)
            step = (checkpoint_step(work) or 0) if cfg.resume else 0
        log = _logger(work)
        optimizer = torch.optim.AdamW(_param_groups(model, method, head_keys, trained_pooler, sparsifier, cfg))
        loader, grouped = _train_loader(train, tokenizer, cfg)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size / accelerator.num_processes)
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        if teacher is not None:
            teacher.to(accelerator.device)
        log.info("start: %s", json.dumps(config))
        if any(skipped.values()):
            log.info("malformed tsv rows skipped (GLUE's rule): %s", skipped)
        try:
            training = _train(model, optimizer, loader, scheduler, sparsifier, teacher, cfg, accelerator, work, log,
                              step, total, steps_per_epoch, f"{method.name} {task.name}", scaler, grouped)
        except BaseException:
            if checkpoint_step(work) is None:  # nothing resumable: leave nothing behind
                shutil.rmtree(work, ignore_errors=True)
            raise

        model = accelerator.unwrap_model(model)
        if scaler is not None:
            scaler.fold_into(model)  # the saved head predicts original units
        masks = sparsifier.final_masks()
        scales = sparsifier.unit_scales()
        sparsifier.detach()
        # pretrained weights untouched (abp): checked, not assumed
        frozen_ok = weights_hash(model, skip=head_keys) == frozen_hash
        state = model.state_dict()
        head = {k: state[k].detach().cpu().contiguous() for k in sorted(head_keys)}
        trained_weights = ({k: v.detach().cpu().contiguous() for k, v in model.base_model.state_dict().items()}
                           if method.trains_weights else None)
        apply_masks(model, masks)
        apply_unit_scales(model, scales)
        metrics = evaluate(model, task, {s: dev_loader(d, tokenizer, cfg.eval_batch_size) for s, d in devs.items()})
        fields = sparsifier.manifest_fields(masks, model, cfg.max_length)
        log.info("dev metrics %s; sparsity %.4f (%s)", json.dumps(metrics), fields["sparsity"],
                 fields["sparsity_definition"])
        if not accelerator.is_main_process:
            return {}
        from safetensors.torch import save_file

        if masks:
            save_mask(masks, work / MASK_FILE)
        save_file(head, str(work / HEAD_FILE))
        if scales:
            save_file(scales, str(work / SCALES_FILE))
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
            "pretrained_weights_unchanged": frozen_ok,
            **fields,
            "seed": cfg.seed,
            "steps": total,
            "train_examples": len(train),
            "dev_metrics": metrics,
            "initialised_weights": sorted(new_keys),
            "head_weights": sorted(head_keys),
            "skipped_rows": skipped,
            "training": training | {"steps_per_epoch": steps_per_epoch},
            "regression_targets": dataclasses.asdict(scaler) if scaler is not None else None,
            "config": config,
            "device": str(accelerator.device),
            "num_processes": accelerator.num_processes,
            "wall_time_s": round(time.time() - started, 1),
            "versions": versions(),
        }
        write_manifest(work, manifest)
        for handler in log.handlers:
            handler.close()
        finish_run(work, out, cfg.overwrite)
        return manifest


def _train(model, optimizer, loader, scheduler, sparsifier: Sparsifier, teacher, cfg: PruneConfig,
           accelerator: Accelerator, work: Path, log: logging.Logger, step: int, total: int, steps_per_epoch: int,
           description: str, scaler: TargetScaler | None, grouped: LengthGroupedBatches | None) -> dict:
    """The training loop: schedule the sparsifier, step, log, checkpoint; resumes at `step` mid-epoch.

    Returns what this process trained: steps, seconds, and real vs padded tokens (throughput figures).
    """
    pending_restore = cfg.resume
    model.train()
    done = {"steps": 0, "seconds": 0.0, "real_tokens": 0, "padded_tokens": 0}
    try:
        with step_progress(description, total, enabled=cfg.progress and accelerator.is_main_process) as bar:
            bar.advance(step)
            while step < total:
                epoch, skip = divmod(step, steps_per_epoch)
                loader.set_epoch(epoch)
                if grouped is not None:  # our batch order is a pure function of (seed, epoch)
                    grouped.set_epoch(epoch)
                batches = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
                if pending_restore:
                    # The checkpointed RNG state (dropout) must be the one the uninterrupted run had here.
                    # Accelerate's loader starts its inner iterator, which draws a seed from the global RNG,
                    # at the first next(). Mid-epoch the uninterrupted run made that draw at the epoch's
                    # start, before the checkpoint: so draw it now and restore after; at an epoch
                    # boundary both runs draw after the checkpoint.
                    if skip:
                        batches = itertools.chain([next(batches)], batches)
                    load_checkpoint(accelerator, work)
                    pending_restore = False
                    log.info("resumed at step %d", step)
                for batch in batches:
                    started = time.perf_counter()
                    sparsity = sparsifier.set_progress(step, total)
                    loss = _train_step(model, batch, teacher, cfg, accelerator, scaler)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    step += 1
                    loss_value = loss.item()  # waits for the step on an accelerator
                    done["steps"] += 1
                    done["seconds"] += time.perf_counter() - started
                    done["real_tokens"] += int(batch["attention_mask"].sum())
                    done["padded_tokens"] += batch["attention_mask"].numel()
                    bar.update(loss=loss_value, sparsity=sparsity)
                    if step % 10 == 0 or step == total:
                        log.info("step %d/%d loss %.4f sparsity %.3f", step, total, loss_value, sparsity)
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                        accelerator.wait_for_everyone()
                        if accelerator.is_main_process:
                            save_checkpoint(accelerator, work, step)
                    if step >= total:
                        break
    except KeyboardInterrupt:
        log.info("interrupted at step %d", step)
        raise _interrupted(work, step, total) from None
    return done
