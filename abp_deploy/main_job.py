"""The main job: prune -> bake -> export -> bench for a task mask and its dense fine-tuned baseline.

Everything lands under one folder (runs/, baked/, onnx/, report/). Re-running the same command
continues where it stopped: finished stages are reused, an interrupted prune resumes from its last
checkpoint; different settings on an existing folder are refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from abp_deploy.artifacts import MANIFEST_FILE
from abp_deploy.atomic import check_output_path, incomplete_dir, read_json, refuse_existing, write_json
from abp_deploy.bake import SUMMARY_FILE
from abp_deploy.bake_run import bake_run
from abp_deploy.bench import BenchConfig, bench
from abp_deploy.bench_report import write_report
from abp_deploy.errors import AbpError
from abp_deploy.export_run import export_model
from abp_deploy.exporters.pipeline import REPORT_FILE
from abp_deploy.models import DEFAULT_MODEL
from abp_deploy.checkpoints import CHECKPOINT
from abp_deploy.prune import PruneConfig, prune
from abp_deploy.sparsifiers import GATED

JOB_FILE = "job.json"
BASELINE = "dense"
ABP_INT8 = "abp-int8"


@dataclass
class JobConfig:
    """Defaults: the best measured operating point (benchmarks/RESULTS.md, issue 11) on the offline default.

    MiniLM-L6 on rotten_tomatoes, 3 epochs; hybrid 70% with Fisher-initialised gates: 2.2x the dense
    model's batch-32 throughput at O2 (1.8x dense int8 in int8) at -1.6 pt dev accuracy, mean of 3 seeds.
    """

    task: str = "rotten_tomatoes"
    model: str = DEFAULT_MODEL
    method: str = "abp"
    sparsity: float = 0.7
    granularity: str = "hybrid"
    gate_init: str | None = None  # None: fisher for gated granularities (measured best), unused otherwise
    gate_budget: str = "per-kind"
    unit_scales: bool = False
    data_dir: str | None = None
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    max_length: int = 64
    max_eval_samples: int | None = None
    seed: int = 42
    device: str = "auto"
    optimize: str | None = "O2"
    quantize: str | None = None
    batch_sizes: tuple[int, ...] = (1, 32)
    seq_lens: tuple[int, ...] = (128,)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    repeats: int = 20
    output: str = "runs/main"


def _check_job_file(out: Path, cfg: JobConfig, overwrite: bool) -> None:
    """Start fresh, or continue a folder made by the same settings; never mix two configurations.

    `overwrite` deletes only a folder abp-deploy wrote, and never the working directory or a parent of it.
    """
    check_output_path(out)
    if overwrite and out.exists():
        refuse_existing(out, overwrite=True)
        shutil.rmtree(out)
    saved = out / JOB_FILE
    current = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as stored
    if saved.is_file():
        old = read_json(saved, "start afresh with --overwrite")
        changed = sorted(k for k in current if old.get(k) != current[k] and k != "threads")
        if changed:
            raise AbpError(f"{out} holds a job with other settings ({', '.join(changed)}): pass --overwrite "
                           "or choose another --output")
    elif out.exists() and any(out.iterdir()):
        raise AbpError(f"{out} exists and is not an abp-deploy job folder: choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    write_json(saved, current)


def _prune_stage(cfg: JobConfig, method: str, run_dir: Path, progress: bool) -> None:
    """Prune (or continue) one of the job's two runs: the task mask with the job's settings, or the dense baseline."""
    work = incomplete_dir(run_dir)
    resume = (work / CHECKPOINT).is_dir()
    mask = {} if method == "finetune" else {
        "sparsity": cfg.sparsity, "granularity": cfg.granularity,
        "gate_init": cfg.gate_init or ("fisher" if cfg.granularity in GATED else "magnitude"),
        "gate_budget": cfg.gate_budget, "unit_scales": cfg.unit_scales}
    prune(PruneConfig(task=cfg.task, model=cfg.model, method=method, **mask, output=str(run_dir),
                      data_dir=cfg.data_dir, max_eval_samples=cfg.max_eval_samples, max_length=cfg.max_length,
                      batch_size=cfg.batch_size, epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed, device=cfg.device,
                      checkpoint_every=50, resume=resume, overwrite=work.exists() and not resume, progress=progress))


def _export_stage(cfg: JobConfig, baked: Path, onnx: Path, quantize: str | None, say: Callable[[str], None]) -> None:
    if not (onnx / REPORT_FILE).is_file():
        say(f"export: {baked} -> {onnx} ({cfg.optimize or 'no optimisation'}{', ' + quantize if quantize else ''})")
        export_model(baked, onnx, optimize=cfg.optimize, quantize=quantize, data_dir=cfg.data_dir, overwrite=True)


def run_job(cfg: JobConfig, overwrite: bool = False, progress: bool = True,
            say: Callable[[str], None] = print) -> dict:
    """Run (or continue) every stage and return the bench result; the report is in OUTPUT/report.

    Without `quantize`, the task mask is exported in fp32 and in int8 (ABP_INT8), and bench adds the
    dense model in int8: the report then compares both precisions on both sides.
    """
    out = Path(cfg.output)
    _check_job_file(out, cfg, overwrite)
    for name, method in {"abp": cfg.method, BASELINE: "finetune"}.items():
        run_dir, baked = out / "runs" / name, out / "baked" / name
        if (run_dir / MANIFEST_FILE).is_file():
            say(f"reusing {run_dir}")
        else:
            say(f"prune: {method} on {cfg.task} -> {run_dir}")
            _prune_stage(cfg, method, run_dir, progress)
        if not (baked / SUMMARY_FILE).is_file():
            say(f"bake: {run_dir} -> {baked}")
            bake_run(run_dir, baked, overwrite=True)
        _export_stage(cfg, baked, out / "onnx" / name, cfg.quantize, say)
        if name == "abp" and cfg.quantize is None:
            _export_stage(cfg, baked, out / "onnx" / ABP_INT8, "int8", say)
    artefacts = [out / "onnx" / "abp"] + ([out / "onnx" / ABP_INT8] if cfg.quantize is None else [])
    report = out / "report"
    say(f"bench: {', '.join(str(a) for a in artefacts)} against {out / 'onnx' / BASELINE} -> {report}")
    result = bench(artefacts, baseline=out / "onnx" / BASELINE,
                   cfg=BenchConfig(batch_sizes=cfg.batch_sizes, seq_lens=cfg.seq_lens, threads=cfg.threads,
                                   repeats=cfg.repeats, data_dir=cfg.data_dir, max_eval_samples=cfg.max_eval_samples,
                                   progress=progress))
    write_report(result, report, overwrite=True)
    return result
