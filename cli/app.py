"""The `abp-deploy` command line: parse, call one library function per command, print."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from abp_deploy import __version__
from abp_deploy.errors import AbpError, RunInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adapting by pruning for BERT: learn task masks over a frozen model, bake, export to ONNX, bench.")
# Piped into a log (CI, nohup), rich would wrap the bench tables at 80 columns; COLUMNS still wins when set.
LOG_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=LOG_WIDTH)
err = Console(stderr=True)


def _resume_command(needs_flag: bool) -> str:
    """The command line that was run, with --resume added where the command needs it (prune; `run` resumes by itself)."""
    argv = ["abp-deploy", *sys.argv[1:]]
    return shlex.join(argv if not needs_flag or "--resume" in argv else [*argv, "--resume"])


def user_errors(fn: Callable) -> Callable:
    """Turn AbpError into one red line on stderr and exit code 1 (no traceback for bad input); Ctrl-C into exit 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AbpError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except RunInterrupted as exc:
            err.print(f"[yellow]stopped:[/yellow] {exc}", highlight=False, soft_wrap=True)
            if "last checkpoint" in str(exc):
                err.print(f"resume with: {_resume_command(fn.__name__ == 'prune')}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            err.print("[yellow]stopped:[/yellow] interrupted; nothing was written", highlight=False)
            raise typer.Exit(130) from None
    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"abp-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Show the version and exit.")) -> None:
    """Adapting by pruning for BERT-family encoders."""


@app.command()
def tasks() -> None:
    """List the tasks, their official metrics and label names."""
    from abp_deploy.tasks import TASKS

    table = Table("task", "metric(s)", "labels", "inputs", "GLUE folder")
    for t in TASKS.values():
        table.add_row(t.name, ", ".join(t.metrics), ", ".join(t.labels) or "(regression)",
                      "pair" if t.is_pair else "single", t.tsv_dir or "(offline package or hub)")
    console.print(table)


@app.command()
@user_errors
def prune(
    task: str = typer.Option("rotten_tomatoes", help="GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, "
                             "wnli) or offline task (rotten_tomatoes, imdb)."),
    model: str = typer.Option("minilm-l6", help="Hub id, local save_pretrained folder, or 'minilm-l6' (packaged)."),
    method: str = typer.Option("abp", help="abp (adapting by pruning), movement, magnitude or finetune."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of prunable weights set to zero [default: 0.5; "
                                             "0 for finetune]."),
    scope: str = typer.Option("per-matrix", help="Top-k per weight matrix, or 'global' across all matrices."),
    granularity: str = typer.Option("unstructured", help="unstructured (the paper), block (square tiles), head, "
                                    "neuron, structured (head + neuron gates; sparsity = fraction of encoder weights "
                                    "removed), or hybrid (structured + unstructured inside the kept units)."),
    inner_sparsity: Optional[float] = typer.Option(None, help="hybrid: unstructured sparsity inside kept units "
                                                   "[default: 0.3]."),
    block_size: Optional[int] = typer.Option(None, help="Tile side of the mask: block [default: 32], hybrid "
                                             "[default: 1, single weights]."),
    output: Path = typer.Option(Path("runs/abp"), "--output", "-o", help="Run folder to create."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder in the GLUE tsv layout (DIR/QNLI/train.tsv, dev.tsv)."),
    max_train_samples: Optional[int] = typer.Option(None, help="Subsample the train split (fixed seed)."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Subsample the dev split(s) (fixed seed)."),
    max_length: int = typer.Option(128, help="Maximum tokens per example."),
    batch_size: int = typer.Option(32),
    group_by_length: bool = typer.Option(True, help="Batch examples of similar length (less padding, same examples "
                                         "per epoch; order fixed by --seed)."),
    token_cache: bool = typer.Option(True, help="Keep tokenised splits on disk ($ABP_DEPLOY_CACHE, default "
                                     "~/.cache/abp_deploy) so sweeps tokenise once."),
    epochs: float = typer.Option(3.0),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps (overrides epochs)."),
    lr: float = typer.Option(5e-5, help="Learning rate of pretrained weights (methods that train them)."),
    score_lr: float = typer.Option(1e-2, help="Learning rate of mask scores."),
    gate_lr: Optional[float] = typer.Option(None, help="Learning rate of head/neuron gate scores "
                                            "[default: 0.05]."),
    gate_init: str = typer.Option("magnitude", help="Starting gate scores: magnitude (mean |W| of the unit), or "
                                  "fisher (head fitted first, then each unit's Fisher information on 2,048 "
                                  "training examples: Kwon et al. 2022's mask search as the first top-k)."),
    gate_budget: str = typer.Option("per-kind", help="per-kind: heads and neurons each keep 1 - --sparsity of their "
                                    "units (--sparsity = encoder weights removed); flops: heads and neurons of all "
                                    "layers ranked together against one FLOPs budget (--sparsity = encoder FLOPs "
                                    "removed). flops needs --granularity structured or hybrid."),
    unit_scales: bool = typer.Option(False, help="Also learn one output scale per kept head and neuron, folded into "
                                     "the weights at bake (an extension of the paper: Kwon et al. 2022's mask "
                                     "tuning; pretrained weights stay untouched in the run). Gated granularities."),
    head_lr: float = typer.Option(1e-3, help="Learning rate of the new task head."),
    distill_from: Optional[Path] = typer.Option(None, help="A finished dense run (--method finetune) of the same task "
                                                "whose logits teach the mask (knowledge distillation)."),
    distill_alpha: float = typer.Option(0.5, help="Weight of the teacher's soft-target loss (1 - it: the labels)."),
    distill_temperature: float = typer.Option(2.0, help="Softmax temperature of the soft targets."),
    score_init: str = typer.Option("magnitude", help="Initial mask scores: magnitude (|W|) or constant."),
    mask_pooler: bool = typer.Option(True, help="Also mask the pretrained pooler matrix."),
    train_pooler: bool = typer.Option(False, help="Train the pretrained pooler as part of the task head instead of "
                                      "masking it (for backbones whose pooler was never trained, e.g. "
                                      "sentence-transformers models; an extension of the paper)."),
    pooler_lr: Optional[float] = typer.Option(None, help="Learning rate of --train-pooler's pooler [default: --lr, "
                                              "the rate fine-tuning trains it at]."),
    seed: int = typer.Option(42),
    device: str = typer.Option("auto", help="auto, cpu or cuda (multi-GPU: accelerate launch -m abp_deploy.cli.app)."),
    mixed_precision: str = typer.Option("auto", help="auto (bf16/fp16 on CUDA, none on CPU), no, fp16, bf16."),
    checkpoint_every: int = typer.Option(100, help="Save a resumable checkpoint every N steps (0: never)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run of the same --output."),
    overwrite: bool = typer.Option(False, help="Replace an existing run folder."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Learn a task mask over a frozen pretrained model (or run a comparison method)."""
    from abp_deploy.prune import PruneConfig
    from abp_deploy.prune import prune as run_prune

    cfg = PruneConfig(task=task, model=model, method=method, sparsity=sparsity, scope=scope,
                      granularity=granularity, inner_sparsity=inner_sparsity, block_size=block_size,
                      output=str(output),
                      data_dir=str(data_dir) if data_dir else None, max_train_samples=max_train_samples,
                      max_eval_samples=max_eval_samples, max_length=max_length, batch_size=batch_size, epochs=epochs,
                      group_by_length=group_by_length, token_cache=token_cache,
                      max_steps=max_steps, lr=lr, score_lr=score_lr, gate_lr=gate_lr, gate_init=gate_init,
                      gate_budget=gate_budget, unit_scales=unit_scales, head_lr=head_lr,
                      distill_from=str(distill_from) if distill_from else None, distill_alpha=distill_alpha,
                      distill_temperature=distill_temperature, score_init=score_init, mask_pooler=mask_pooler,
                      train_pooler=train_pooler, pooler_lr=pooler_lr,
                      seed=seed, device=device, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every,
                      resume=resume, overwrite=overwrite, progress=progress)
    manifest = run_prune(cfg)
    if manifest:
        metrics = "; ".join(f"{s}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
                            for s, m in manifest["dev_metrics"].items())
        console.print(f"[green]done[/green] {output}  sparsity {manifest['sparsity']:.4f}  {metrics}  "
                      f"({manifest['wall_time_s']:.0f}s)")


@app.command()
@user_errors
def bake(
    run_dir: Path = typer.Argument(..., help="A finished prune run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write (save_pretrained layout)."),
    model: Optional[str] = typer.Option(None, help="Base model, if not the one recorded in the run's manifest."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Multiply the mask into the weights and remove dead heads and FFN neurons exactly."""
    from abp_deploy.bake_run import bake_run

    s = bake_run(run_dir, output, base_model=model, overwrite=overwrite)
    table = Table("layer", "heads kept", "heads removed", "FFN kept", "FFN removed")
    for i, (h, hr, f, fr) in enumerate(zip(s.heads, s.heads_removed, s.intermediate_sizes, s.neurons_removed)):
        table.add_row(str(i), str(h), str(hr), str(f), str(fr))
    console.print(table)
    console.print(f"params {s.params_before:,} -> {s.params_after:,}; dense FLOPs/token (seq {s.seq_len}) "
                  f"{s.flops_per_token_before:,} -> {s.flops_per_token_after:,}; written to {output}")


@app.command()
@user_errors
def export(
    source: Path = typer.Argument(..., help="A finished prune run folder, or a folder written by abp-deploy bake."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (model.onnx, config, tokenizer, report, "
                                "model card); with --format triton, the model repository."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (a folder), or triton (a model repository entry "
                            "OUTPUT/NAME/config.pbtxt + OUTPUT/NAME/1/)."),
    name: Optional[str] = typer.Option(None, help="Triton model name [default: the source folder's name]."),
    optimize: str = typer.Option("O2", help="onnxruntime graph optimisation: O1 (basic), O2 (+ transformer "
                                 "fusions), O3 (+ tanh GELU approximation), or none."),
    precision: str = typer.Option("fp32", help="fp32, or fp16 for the CUDA execution provider (inputs and outputs "
                                  "stay int64/fp32)."),
    quantize: str = typer.Option("none", help="int8 (dynamic, per-channel weights) or none."),
    sparse_storage: bool = typer.Option(False, help="Store matrices more than 2/3 zero as sparse initializers "
                                        "(smaller file; no speed gain; more memory at load)."),
    strict_fusion: bool = typer.Option(False, help="Fail if attention does not fuse in every layer."),
    model: Optional[str] = typer.Option(None, help="Base model of a run, if not the one in its manifest."),
    data_dir: Optional[Path] = typer.Option(None, help="GLUE tsv folder for the verification examples."),
    opset: int = typer.Option(17, help="ONNX opset (17: onnxruntime >= 1.14)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Bake (if given a run), export to ONNX, optimise, optionally fp16/int8, verify against PyTorch, write a model card."""
    from abp_deploy.export_run import export_model

    with console.status("exporting, optimising and verifying..."):
        report, src = export_model(source, output, fmt=fmt, optimize=None if optimize.lower() == "none" else optimize,
                                   quantize=None if quantize.lower() == "none" else quantize,
                                   sparse_storage=sparse_storage, base_model=model,
                                   data_dir=str(data_dir) if data_dir else None, strict_fusion=strict_fusion,
                                   overwrite=overwrite, opset=opset, precision=precision, name=name)
    if report.fusion:
        f = report.fusion
        fused = ", ".join(f"{op} {n}" for op, n in f.fused.items() if n)
        console.print(f"{f.level}: attention fused in {f.attention} of {f.layers} layers; fused nodes: {fused or 'none'}")
        for layer, reason in f.missing_attention.items():
            console.print(f"[yellow]layer {layer} attention not fused:[/yellow] {reason}", soft_wrap=True)
    for check in report.verification:
        bar = f"max |Δ| <= {check.atol:g}" if check.atol is not None else f"agreement >= {check.min_agreement:.0%}"
        by_value_int8 = check.precision == "int8" and check.atol is not None  # a regression model: argmax says nothing
        agreement = "" if by_value_int8 else f", argmax agreement {check.argmax_agreement:.1%}"
        console.print(f"verified {check.precision} on {src.verify_data} ({check.provider}): max |Δlogits| "
                      f"{check.max_abs_diff:.2e}{agreement} ({bar})")
    for note in report.unverified:
        console.print(f"[yellow]not verified:[/yellow] {note}", soft_wrap=True)
    console.print(f"heads per layer {report.heads}, FFN per layer {report.intermediate_sizes}; "
                  f"model.onnx {report.file_bytes['model.onnx'] / 1e6:.1f} MB; written to {output}")
    if fmt == "triton":
        console.print(f"Triton model repository {output}: tritonserver --model-repository {output.resolve()}")


@app.command()
@user_errors
def analyze(
    runs: list[Path] = typer.Argument(..., help="Prune run folders (any tasks, methods or seeds over one backbone)."),
    output: Path = typer.Option(Path("reports/analyze"), "--output", "-o", help="Folder for analyze.json and PNGs."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Sparsity per layer and matrix type, surviving heads/neurons, and pairwise mask overlap (Jaccard)."""
    from abp_deploy.analyze import analyze as run_analyze
    from abp_deploy.analyze import write_analysis

    result = run_analyze(runs)
    write_analysis(result, output, overwrite=overwrite)
    table = Table("run", "task", "method", "sparsity", "heads alive / layer", "FFN alive / layer")
    for r in result["runs"]:
        table.add_row(r["label"], r["task"], f"{r['method']} ({r['granularity']})", f"{r['sparsity']:.3f}",
                      " ".join(map(str, r["heads_alive"])), " ".join(map(str, r["neurons_alive"])))
    console.print(table)
    label = {r["run"]: r["label"] for r in result["runs"]}
    for p in result["overlap"]:
        console.print(f"{label[p['a']]} ∩ {label[p['b']]}: weights {p['weights_jaccard']:.3f}, "
                      f"heads {p['heads_jaccard']:.3f}, neurons {p['neurons_jaccard']:.3f} (Jaccard)")
    console.print(f"written to {output}")


def _ints(text: str, option: str) -> tuple[int, ...]:
    """Parse '1,32' into (1, 32) with a one-line error naming the option."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise AbpError(f"{option} takes positive integers separated by commas (e.g. 1,32), not {text!r}")
    return values


@app.command()
@user_errors
def bench(
    artifacts: list[Path] = typer.Argument(..., help="Folders written by abp-deploy export."),
    baseline: Optional[Path] = typer.Option(None, help="The dense fine-tuned model's export folder: every figure "
                                            "gets a ratio against it."),
    output: Path = typer.Option(Path("reports/bench"), "--output", "-o", help="Report folder (JSON, Markdown, PNG)."),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes of the latency grid."),
    seq_lens: str = typer.Option("128", help="Sequence lengths of the latency grid."),
    threads: int = typer.Option(os.cpu_count() or 1, help="onnxruntime intra-op threads (fixed for all artefacts)."),
    warmup: int = typer.Option(3, help="Untimed calls per cell and artefact."),
    repeats: int = typer.Option(20, help="Timed calls per cell and artefact."),
    data_dir: Optional[Path] = typer.Option(None, help="GLUE tsv folder, if not the one recorded at prune time."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Score on a fixed subsample of the dev set."),
    memory: bool = typer.Option(True, help="Measure peak memory in a child process per artefact."),
    int8_reference: bool = typer.Option(True, help="Also bench the baseline quantised to int8 (made on the fly "
                                        "unless an int8 export of it is passed): what a user who does not prune ships."),
    traffic: bool = typer.Option(False, help="Also time real traffic: the dev texts at their own lengths through "
                                 "abp_deploy.runtime, in length-sorted batches and one request at a time, and (CPU) "
                                 "THREADS one-thread sessions against one THREADS-thread session."),
    traffic_batch_size: int = typer.Option(32, min=1, help="Batch size of the real-traffic batches."),
    traffic_repeats: int = typer.Option(2, min=1, help="Real-traffic passes over the dev texts (batches, session layouts)."),
    overwrite: bool = typer.Option(False, help="Replace an existing report folder."),
) -> None:
    """Dev-set score via onnxruntime, latency/throughput grid, size and memory, side by side with a baseline."""
    from abp_deploy.atomic import refuse_existing
    from abp_deploy.bench import BenchConfig
    from abp_deploy.bench import bench as run_bench
    from abp_deploy.bench_report import MD_FILE, write_report

    refuse_existing(output, overwrite)
    cfg = BenchConfig(batch_sizes=_ints(batch_sizes, "--batch-sizes"), seq_lens=_ints(seq_lens, "--seq-lens"),
                      threads=threads, warmup=warmup, repeats=repeats, data_dir=str(data_dir) if data_dir else None,
                      max_eval_samples=max_eval_samples, memory=memory, int8_reference=int8_reference,
                      traffic=traffic, traffic_batch=traffic_batch_size, traffic_repeats=traffic_repeats)
    result = run_bench(artifacts, baseline, cfg)
    write_report(result, output, overwrite=overwrite)
    console.print(Markdown((output / MD_FILE).read_text()))
    console.print(f"report written to {output}")


@app.command("run")
@user_errors
def run_main_job(
    task: str = typer.Option("rotten_tomatoes", help="Task to adapt to (see abp-deploy tasks)."),
    model: str = typer.Option("minilm-l6", help="Hub id, local save_pretrained folder, or 'minilm-l6' (packaged)."),
    method: str = typer.Option("abp", help="Pruning method of the task model (abp, movement, magnitude)."),
    sparsity: float = typer.Option(0.7, help="Target sparsity under the granularity's definition (see prune)."),
    granularity: str = typer.Option("hybrid", help="unstructured, block, head, neuron, structured or "
                                    "hybrid (see prune)."),
    gate_init: Optional[str] = typer.Option(None, help="magnitude or fisher (gated granularities; see prune) "
                                            "[default: fisher for gated granularities]."),
    gate_budget: str = typer.Option("per-kind", help="per-kind or flops (structured and hybrid; see prune)."),
    unit_scales: bool = typer.Option(False, help="Learn one output scale per kept head and neuron (see prune)."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder in the GLUE tsv layout (for GLUE tasks)."),
    epochs: float = typer.Option(3.0, help="Passes over the training set of each prune/fine-tune run."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps of each run (overrides --epochs)."),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(64, help="Maximum tokens per training and dev example."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Subsample the dev split(s) (fixed seed)."),
    seed: int = typer.Option(42),
    device: str = typer.Option("auto", help="auto, cpu or cuda (training)."),
    optimize: str = typer.Option("O2", help="O1, O2, O3 or none."),
    quantize: str = typer.Option("none", help="int8 or none."),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes of the latency grid."),
    seq_lens: str = typer.Option("128", help="Sequence lengths of the latency grid."),
    threads: int = typer.Option(os.cpu_count() or 1, help="onnxruntime intra-op threads."),
    repeats: int = typer.Option(20, help="Timed calls per cell and artefact."),
    output: Path = typer.Option(Path("runs/main"), "--output", "-o", help="Job folder (runs, baked, onnx, report)."),
    overwrite: bool = typer.Option(False, help="Start the job folder afresh."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The main job: prune a task mask and a dense baseline, bake, export, bench side by side."""
    from abp_deploy.bench_report import MD_FILE
    from abp_deploy.main_job import JobConfig, run_job

    cfg = JobConfig(task=task, model=model, method=method, sparsity=sparsity, granularity=granularity,
                    gate_init=gate_init, gate_budget=gate_budget, unit_scales=unit_scales,
                    data_dir=str(data_dir) if data_dir else None, epochs=epochs,
                    max_steps=max_steps, batch_size=batch_size,
                    max_length=max_length, max_eval_samples=max_eval_samples, seed=seed, device=device,
                    optimize=None if optimize.lower() == "none" else optimize,
                    quantize=None if quantize.lower() == "none" else quantize,
                    batch_sizes=_ints(batch_sizes, "--batch-sizes"), seq_lens=_ints(seq_lens, "--seq-lens"),
                    threads=threads, repeats=repeats, output=str(output))
    run_job(cfg, overwrite=overwrite, progress=progress, say=lambda line: console.print(f"[bold]»[/bold] {line}"))
    console.print(Markdown((output / "report" / MD_FILE).read_text()))
    console.print(f"report: {output / 'report'}")


def _terminate_as_interrupt(signum: int, frame) -> None:
    """SIGTERM (job schedulers, `kill`, container stops) ends a run as Ctrl-C does: checkpoint kept, resume told."""
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point; library chatter (download bars, init warnings) is silenced for users."""
    import datasets
    import transformers

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    app()


if __name__ == "__main__":
    sys.exit(main())
