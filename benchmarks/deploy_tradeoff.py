"""Issues 3 and 4 benchmark: export finished runs at O2 and int8, bench them per task against the dense O2 baseline.

Takes prune run folders (made by benchmarks/compare_methods.py or abp-deploy prune), exports each
once (reused when present), benches all artefacts of a task in one interleaved run, writes one
report folder per task, prints its Markdown, and draws the accuracy-speed-up curve of all tasks.
  python benchmarks/deploy_tradeoff.py benchmarks/out/deploy/*/*-s42 --out benchmarks/out/tradeoff
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import datasets
import matplotlib
import transformers

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from abp_deploy.artifacts import read_manifest  # noqa: E402
from abp_deploy.bench import BenchConfig, bench  # noqa: E402
from abp_deploy.bench_report import markdown, write_report  # noqa: E402
from abp_deploy.export_run import export_model  # noqa: E402


def label(manifest: dict) -> str:
    """dense, or method-granularity[-kd]-sparsity, e.g. abp-structured-50 (kd: distilled from a teacher run)."""
    if manifest["method"] == "finetune":
        return "dense"
    kd = "-kd" if manifest["config"].get("distill_from") else ""
    return f"{manifest['method']}-{manifest.get('granularity', 'unstructured')}{kd}-{round(manifest['sparsity'] * 100)}"


def curve(results: dict[str, dict], path: Path) -> None:
    """Dev score against speed-up at batch 1 (CPU, first seq len), one panel per task, one series per family."""
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (task, result) in zip(axes[0], results.items()):
        series = defaultdict(list)
        for row in result["artifacts"]:
            q = next(c for c in row["vs_baseline"]["latency"] if c["batch"] == 1)
            parts = row["name"].split("-")  # dense-O2, or method-granularity[-kd]-percent-precision
            family = "dense" if parts[0] == "dense" else " ".join(parts[:-2])
            series[(family, parts[-1])].append((q["speedup_p50"], next(iter(row["accuracy"].values()))["score"] * 100))
        for (family, precision), points in sorted(series.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", linestyle="-" if precision == "O2" else "--", label=f"{family} ({precision})")
        ax.set(xlabel="speed-up over dense O2 (p50, batch 1, CPU)", ylabel="dev score ×100", title=task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compact(task: str, result: dict) -> str:
    """One line per artefact: score, structure left, CPU speed-ups at batch 1 and 32, size."""
    lines = [f"\n### {task}\n", "| artefact | dev score | Δ vs dense O2 | heads | FFN neurons | p50 b1 ms | speed-up b1 "
             "| throughput ratio b32 | MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["artifacts"]:
        split, score = next(iter(r["accuracy"].items()))
        lat = {c["batch"]: c for c in r["latency"]}
        q = {c["batch"]: c for c in r["vs_baseline"]["latency"]}
        b_small, b_big = min(lat), max(lat)
        lines.append(f"| {r['name']} | {score['score']:.4f} | {r['vs_baseline']['score_delta'][split] * 100:+.2f} pt | "
                     f"{sum(r['heads'])} | {sum(r['intermediate_sizes'])} | {lat[b_small]['p50_ms']:.1f} | "
                     f"{q[b_small]['speedup_p50']:.2f}× | {q[b_big]['throughput_ratio']:.2f}× | {r['size_mb']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/tradeoff"))
    parser.add_argument("--precisions", nargs="+", default=["O2", "int8"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8-for", nargs="*", default=["magnitude", "movement"],
                        help="methods exported at O2 only (their unstructured masks gain nothing structural from int8)")
    parser.add_argument("--export-only", action="store_true", help="export (e.g. while training still runs), no bench")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    by_task: dict[str, list[Path]] = defaultdict(list)
    baselines: dict[str, Path] = {}
    for run in args.runs:
        manifest = read_manifest(run)
        for precision in args.precisions:
            if precision == "int8" and manifest["method"] in args.no_int8_for:
                continue
            name = f"{label(manifest)}-{precision}"
            onnx = args.out / "onnx" / manifest["task"] / name
            if not (onnx / "export_report.json").is_file():
                export_model(run, onnx, optimize="O2", quantize="int8" if precision == "int8" else None, overwrite=True)
                print(f"exported {run} -> {onnx}", flush=True)
            if name == "dense-O2":
                baselines[manifest["task"]] = onnx
            else:
                by_task[manifest["task"]].append(onnx)
    if args.export_only:
        return
    results = {}
    cfg = BenchConfig(batch_sizes=tuple(args.batch_sizes), seq_lens=(args.seq_len,), threads=args.threads,
                      repeats=args.repeats, progress=False)
    for task, artefacts in by_task.items():
        result = bench(sorted(artefacts), baseline=baselines[task], cfg=cfg)
        write_report(result, args.out / f"report-{task}", overwrite=True)
        results[task] = result
        print(markdown(result), flush=True)
    for task, result in results.items():
        print(compact(task, result), flush=True)
    curve(results, args.out / "accuracy_vs_speedup.png")
    (args.out / "summary.json").write_text(json.dumps({t: r["meta"] for t, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
