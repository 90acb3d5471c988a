"""Issue 12's topology study: where ABP, magnitude and movement masks prune, and how stable and task-specific they are.

    python benchmarks/topology.py            # abp-deploy analyze over the paper sweep's runs, then the tables

Runs `abp-deploy analyze` (the product command) on every finished run folder of the paper plan at
50% (ABP, all seeds and variants; magnitude and movement), then groups its pairwise Jaccard indices
of kept weights by arm (the sweep's row label: trained-pooler and global-budget ABP are arms of their
own, never extra seeds of plain ABP): the same task across seeds (how stable is the mask?) against
different tasks (how task-specific?), and arm against arm on the same task and seed. Two independent
random masks that each keep half the weights have an expected Jaccard of 1/3. Per-matrix runs (the
default `--scope`) are 50% in every matrix by construction; the one-seed `--scope global` ABP runs
show where the method itself puts the zeros. The summary is committed as benchmarks/results/topology.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402

OUT = sweep.ROOT / "benchmarks" / "out" / "topology"
SUMMARY = sweep.RESULTS / "topology.json"
METHODS = ("abp", "magnitude", "movement")
RANDOM_JACCARD_AT_HALF = 1 / 3  # E|A∩B| / E|A∪B| = (1/4) / (3/4) for independent masks keeping 1/2


def run_folders() -> dict[str, str]:
    """Finished 50% run folders of the paper plan's pruning methods, in plan order, each with its arm's row label."""
    folders = {}
    for task, arm, seed in sweep.planned("paper"):
        if arm.method in METHODS and arm.sparsity == 0.5:  # per-matrix, global and trained-pooler ABP alike
            folder = sweep.run_folder(sweep.run_id(task, arm, seed))  # any plan's folder: runs are shared
            if folder is not None:
                folders[str(folder)] = arm.label
    return folders


def _pair_kind(a: dict, b: dict) -> str | None:
    """Which question a pair of runs answers (None: not one the study asks).

    Runs are grouped by arm (the sweep's row label), so a trained-pooler or global-budget ABP mask is never
    counted as a seed of plain ABP; two arms meet only on the same task and seed."""
    if a["arm"] != b["arm"]:
        same = a["task"] == b["task"] and a["seed"] == b["seed"]
        return " vs ".join(sorted((a["arm"], b["arm"]))) + ", same task and seed" if same else None
    if a["task"] == b["task"]:
        return f"{a['arm']}, same task, other seed"
    return f"{a['arm']}, other task, " + ("same seed" if a["seed"] == b["seed"] else "other seed")


def summarise(analysis: dict, arms: dict[str, str]) -> dict:
    """Group `abp-deploy analyze`'s pairwise overlaps and per-run sparsities by arm (`arms`: run folder -> label)."""
    for r in analysis["runs"]:
        r["arm"] = arms[r["run"]]
    runs = {r["run"]: r for r in analysis["runs"]}
    pairs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in analysis["overlap"]:
        kind = _pair_kind(runs[p["a"]], runs[p["b"]])
        if kind:
            for key in ("weights_jaccard", "heads_jaccard", "neurons_jaccard"):
                pairs[kind][key].append(p[key])
    by_type: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_layer: dict[str, list[list[float]]] = defaultdict(list)
    for r in analysis["runs"]:
        for layer in r["sparsity_by_layer_and_type"]:
            for kind, value in layer.items():
                by_type[r["arm"]][kind].append(value)
        by_layer[r["arm"]].append([statistics.mean(layer.values()) for layer in r["sparsity_by_layer_and_type"]])
    return {
        "runs": [{k: r[k] for k in ("label", "arm", "task", "seed", "heads_alive", "neurons_alive")}
                 for r in analysis["runs"]],
        "jaccard": {kind: {k: {"mean": statistics.mean(v), "min": min(v), "max": max(v), "pairs": len(v)}
                           for k, v in values.items()} for kind, values in sorted(pairs.items())},
        "random_reference_weights_jaccard": RANDOM_JACCARD_AT_HALF,
        "sparsity_by_type": {m: {k: statistics.mean(v) for k, v in types.items()} for m, types in by_type.items()},
        "sparsity_by_layer": {m: [statistics.mean(col) for col in zip(*rows)] for m, rows in by_layer.items()},
    }


def print_tables(summary: dict) -> None:
    print("Jaccard of kept weights (heads, neurons alive) between pairs of 50% masks; "
          f"independent random masks: {summary['random_reference_weights_jaccard']:.3f}\n")
    print("| pair | pairs | weights mean (min–max) | heads | neurons |\n|---|---|---|---|---|")
    for kind, v in summary["jaccard"].items():
        w = v["weights_jaccard"]
        print(f"| {kind} | {w['pairs']} | {w['mean']:.3f} ({w['min']:.3f}–{w['max']:.3f}) | "
              f"{v['heads_jaccard']['mean']:.3f} | {v['neurons_jaccard']['mean']:.3f} |")
    types = sorted({t for m in summary["sparsity_by_type"].values() for t in m})
    print("\nSparsity by matrix type (mean over tasks, seeds and layers)\n")
    print("| method | " + " | ".join(types) + " |\n|---|" + "---|" * len(types))
    for method, values in summary["sparsity_by_type"].items():
        print(f"| {method} | " + " | ".join(f"{values[t]:.3f}" for t in types) + " |")
    print("\nSparsity by layer (mean over matrix types, tasks and seeds)\n")
    for method, values in summary["sparsity_by_layer"].items():
        print(f"  {method}: " + ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(values)))
    alive = defaultdict(list)
    for r in summary["runs"]:
        alive[r["arm"]].append((sum(r["heads_alive"]), sum(r["neurons_alive"])))
    print("\nHeads and FFN neurons alive (all layers; mean over runs): " + "; ".join(
        f"{m} {statistics.mean(h for h, _ in v):.1f} heads, {statistics.mean(n for _, n in v):.0f} neurons"
        for m, v in alive.items()))


def main() -> None:
    folders = run_folders()
    if len(folders) < 2:
        raise SystemExit("fewer than two finished 50% runs in the paper sweep: run benchmarks/sweep.py first")
    cmd = [sweep._abp_deploy(), "analyze", *folders, "-o", str(OUT), "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = summarise(json.loads((OUT / "analyze.json").read_text()), folders)
    SUMMARY.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(folders)} runs: abp-deploy analyze <runs> -o {OUT.relative_to(sweep.ROOT)}\n")
    print_tables(summary)


if __name__ == "__main__":
    main()
