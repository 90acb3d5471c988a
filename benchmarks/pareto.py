"""Issue 11: accuracy against speed of a sweep plan's finished runs, fp32 O2 and int8, in one interleaved bench.

    python benchmarks/pareto.py --plan levers --task rotten_tomatoes            # export what is missing, bench, report
    python benchmarks/pareto.py --plan levers --task rotten_tomatoes --report   # table + plot from the committed JSON

Every finished run of the task (benchmarks/sweep.py's run folders) is exported at O2 and at int8
with the product's exporter, then all artefacts are benched in one `bench` call (interleaved calls,
same machine, same minute), against the dense fine-tune at O2. Accuracy is the sweep's dev score
(mean ± std over seeds); speed is the mean over the seeds' artefacts. The small per-artefact
figures go to benchmarks/results/pareto/PLAN-TASK.json; the plot to benchmarks/plots/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import datasets
import matplotlib
import transformers

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402

from abp_deploy.bench import BenchConfig, bench  # noqa: E402
from abp_deploy.export_run import export_model  # noqa: E402

OUT = sweep.ROOT / "benchmarks" / "out" / "pareto"
RESULTS = sweep.RESULTS / "pareto"
PLOTS = sweep.ROOT / "benchmarks" / "plots"
PRECISIONS = {"O2": None, "int8": "int8"}
BATCHES = (1, 32)


def finished_runs(plan: str, task: str) -> list[tuple[sweep.Arm, int, Path]]:
    """(arm, seed, run folder) of every run of the plan's task whose folder is still here (any plan's folder)."""
    found = []
    for t, arm, seed in sweep.planned(plan):
        if t.name != task:
            continue
        name = sweep.run_id(t, arm, seed)
        folder = sweep.run_folder(name)
        if folder is not None and sweep._result(plan, t, arm, seed) is not None:
            found.append((arm, seed, folder))
    return found


def export_all(runs: list[tuple[sweep.Arm, int, Path]], task: str) -> dict[str, Path]:
    """Artefact name -> export folder, exporting what is missing (O2 and int8 of every run)."""
    out = {}
    for arm, seed, run in runs:
        for precision, quantize in PRECISIONS.items():
            name = f"{run.name}-{precision}"
            folder = OUT / "onnx" / task / name
            if not (folder / "export_report.json").is_file():
                export_model(run, folder, optimize="O2", quantize=quantize, overwrite=True)
                print(f"exported {name}", flush=True)
            out[name] = folder
    return out


def measure(plan: str, task: str, repeats: int, threads: int) -> dict:
    """Bench every artefact of the task in one run; return the committed summary."""
    runs = finished_runs(plan, task)
    dense = [(a, s, r) for a, s, r in runs if a.method == "finetune"]
    if not dense:
        raise SystemExit(f"no finished fine-tune run of {task} in plan {plan}: run benchmarks/sweep.py first")
    folders = export_all(runs, task)
    baseline = folders[f"{dense[0][2].name}-O2"]
    others = [f for n, f in folders.items() if f != baseline]
    cfg = BenchConfig(batch_sizes=BATCHES, seq_lens=(128,), threads=threads, repeats=repeats, warmup=5,
                      memory=False, int8_reference=False, progress=False)
    result = bench(others, baseline=baseline, cfg=cfg)
    rows = {r["name"]: r for r in result["artifacts"]}
    artefacts = []
    for arm, seed, run in runs:
        score = sweep._score(sweep._result(plan, sweep.Task(task, 0, 0), arm, seed))
        for precision in PRECISIONS:
            row = rows[f"{run.name}-{precision}"]
            lat = {c["batch"]: c for c in row["latency"]}
            artefacts.append({"arm": arm.label, "seed": seed, "precision": precision, "dev_score_pytorch": score,
                              "dev_score_onnx": 100 * next(iter(row["accuracy"].values()))["score"],
                              "heads": sum(row["heads"]), "neurons": sum(row["intermediate_sizes"]),
                              "flops_per_token": row["flops_per_token"], "size_mb": round(row["size_mb"], 2),
                              "p50_ms_b1": lat[1]["p50_ms"], "throughput_b32": lat[32]["throughput"]})
    summary = {"plan": plan, "task": task, "meta": result["meta"], "seq_len": 128, "repeats": repeats,
               "artefacts": artefacts}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{plan}-{task}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def table(summary: dict) -> tuple[str, list[dict]]:
    """Markdown: one line per arm and precision; ratios against dense O2 and dense int8 of the same run."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for a in summary["artefacts"]:
        groups[(a["arm"], a["precision"])].append(a)
    dense = {p: groups[("finetune", p)] for p in PRECISIONS}
    dense_score = _mean([a["dev_score_pytorch"] for a in dense["O2"]])
    base = {p: (_mean([a["throughput_b32"] for a in dense[p]]), _mean([a["p50_ms_b1"] for a in dense[p]]))
            for p in PRECISIONS}
    lines = ["| arm | precision | seeds | dev score (PyTorch) | Δ vs dense | dev score (ONNX) | heads | neurons "
             "| b32 throughput ×dense O2 | ×dense same precision | b1 p50 ms | b1 speed-up ×dense O2 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    points = []
    for (arm, precision), items in groups.items():
        scores = [a["dev_score_pytorch"] for a in items]
        spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
        thr, p50 = _mean([a["throughput_b32"] for a in items]), _mean([a["p50_ms_b1"] for a in items])
        point = {"arm": arm, "precision": precision, "seeds": len(items), "score": _mean(scores),
                 "delta": _mean(scores) - dense_score, "x_o2": thr / base["O2"][0], "x_same": thr / base[precision][0],
                 "b1_speedup": base["O2"][1] / p50}
        points.append(point)
        lines.append(f"| {arm} | {precision} | {len(items)} | {_mean(scores):.2f}{spread} | {point['delta']:+.2f} | "
                     f"{_mean([a['dev_score_onnx'] for a in items]):.2f} | {_mean([a['heads'] for a in items]):.0f} | "
                     f"{_mean([a['neurons'] for a in items]):.0f} | {point['x_o2']:.2f}× | {point['x_same']:.2f}× | "
                     f"{p50:.2f} | {point['b1_speedup']:.2f}× |")
    return "\n".join(lines), points


def verdicts(points: list[dict]) -> str:
    """The issue's targets T1 (fp32: ≥2.0× dense O2 at ≥ dense −1 pt) and T2 (int8: ≥1.5× dense int8 at ≥ dense −1 pt)."""
    out = []
    for name, precision, key, need in (("T1", "O2", "x_o2", 2.0), ("T2", "int8", "x_same", 1.5)):
        mine = [p for p in points if p["arm"] != "finetune" and p["precision"] == precision]
        close = max((p for p in mine if p["delta"] >= -1.0), key=lambda p: p[key], default=None)
        fast = max((p for p in mine if p[key] >= need), key=lambda p: p["delta"], default=None)
        met = close is not None and close[key] >= need
        line = f"{name} ({precision}, ≥{need}× at ≥ dense −1.0 pt): {'met' if met else 'missed'}"
        for what, p in (("fastest within 1.0 pt", close), (f"most accurate at ≥{need}×", fast)):
            if p is not None:
                seeds = "" if p["seeds"] >= 3 else f", {p['seeds']} seed(s)"
                line += f"; {what}: {p['arm']} {p[key]:.2f}× {p['delta']:+.2f} pt{seeds}"
        out.append(line)
    return "\n".join(out)


def plot(points: list[dict], task: str, path: Path) -> None:
    """Dev score against batch-32 throughput ratio (vs dense O2), Pareto front per precision."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for precision, marker in (("O2", "o"), ("int8", "s")):
        mine = sorted((p for p in points if p["precision"] == precision), key=lambda p: p["x_o2"])
        for p in mine:
            ax.scatter(p["x_o2"], p["score"], marker=marker, color="black" if p["arm"] == "finetune" else None)
            ax.annotate(f"{p['arm']}", (p["x_o2"], p["score"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front, best = [], float("-inf")
        for p in sorted(mine, key=lambda p: -p["x_o2"]):
            if p["score"] > best:
                front.append(p)
                best = p["score"]
        ax.plot([p["x_o2"] for p in front], [p["score"] for p in front], linestyle="-" if precision == "O2" else "--",
                label=f"Pareto front, {precision}")
    dense = next(p for p in points if p["arm"] == "finetune" and p["precision"] == "O2")
    ax.axhline(dense["score"] - 1.0, color="grey", linewidth=0.8, linestyle=":", label="dense − 1 pt")
    ax.set(xlabel="batch-32 throughput × dense O2 (CPU, seq 128)", ylabel="dev score ×100 (mean over seeds)",
           title=f"{task}: accuracy vs speed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="levers", choices=sorted(sweep.PLANS))
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per cell and artefact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="no bench: table and plot from the committed JSON")
    parser.add_argument("--export-only", action="store_true", help="export what is missing (e.g. while runs train)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    if args.export_only:
        export_all(finished_runs(args.plan, args.task), args.task)
        return
    if args.report:
        summary = json.loads((RESULTS / f"{args.plan}-{args.task}.json").read_text())
    else:
        summary = measure(args.plan, args.task, args.repeats, args.threads)
    text, points = table(summary)
    meta = summary["meta"]
    print(f"{args.plan} / {args.task}: bench {meta['date']}, {meta['machine']}, {meta['threads']} threads, "
          f"{summary['repeats']} timed calls per cell, seq {summary['seq_len']}\n")
    print(text + "\n\n" + verdicts(points))
    PLOTS.mkdir(parents=True, exist_ok=True)
    plot(points, args.task, PLOTS / f"pareto-{args.plan}-{args.task}.png")


if __name__ == "__main__":
    main()
