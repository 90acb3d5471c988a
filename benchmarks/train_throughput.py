"""Training throughput before/after the throughput options, side by side in one run; and their accuracy cost.

Speed mode: for each task and method, short prune runs with the options off ("before": random
batches) and on ("after": length-grouped batches; "after+bf16": also bf16 autocast), interleaved
so machine drift hits every variant alike. Prints s/step, real and padded tokens/s, the padding
factor and the wall time of one epoch (steps per epoch × measured s/step).

    python benchmarks/train_throughput.py speed --steps 40 --data-dir ../shared/data/glue

Accuracy mode: dev accuracy of the same short run with and without length grouping, several seeds.

    python benchmarks/train_throughput.py accuracy --steps 150 --seeds 42,43,44
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {  # name -> prune settings
    "finetune": {"method": "finetune"},
    "abp unstructured 50%": {"method": "abp", "sparsity": 0.5},
    "abp structured 70%": {"method": "abp", "granularity": "structured", "sparsity": 0.7},
    "abp hybrid 70%": {"method": "abp", "granularity": "hybrid", "sparsity": 0.7},
}
VARIANTS = {"before": {"group_by_length": False}, "after": {"group_by_length": True},
            "after+bf16": {"group_by_length": True, "mixed_precision": "bf16"}}


_CHILD = ("import json, sys; from abp_deploy.prune import PruneConfig, prune; "
          "m = prune(PruneConfig(**json.loads(sys.argv[1]))); print(json.dumps(m))")


def _run(task: str, data_dir: str | None, steps: int, seed: int, settings: dict, max_eval: int | None) -> dict:
    """One prune run in a fresh process (Accelerate's precision is fixed per process); returns its manifest."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(task=task, data_dir=data_dir if task != "rotten_tomatoes" else None, max_length=64, batch_size=32,
                   max_steps=steps, seed=seed, max_eval_samples=max_eval, checkpoint_every=0, progress=False,
                   device="cpu", output=f"{tmp}/run", **settings)
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args: argparse.Namespace) -> None:
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    rows = []
    for task in args.tasks.split(","):
        for name, settings in CONFIGS.items():
            for variant in variants:
                manifest = _run(task, args.data_dir, args.steps, 42, settings | VARIANTS[variant], 64)
                t = manifest["training"]
                rows.append({"task": task, "config": name, "variant": variant, "s_step": t["seconds"] / t["steps"],
                             "real": t["real_tokens"] / t["seconds"], "padded": t["padded_tokens"] / t["seconds"],
                             "padding": t["padded_tokens"] / t["real_tokens"],
                             "epoch_min": t["steps_per_epoch"] * t["seconds"] / t["steps"] / 60})
                r = rows[-1]
                print(f"  {task} {name} {variant}: {r['s_step']:.3f} s/step, padding {r['padding']:.2f}x", flush=True)
    print(f"\n{args.steps} timed steps per cell, MiniLM-L6, batch 32, max length 64, CPU; epoch = steps/epoch x s/step")
    print("| task | method | variant | s/step | real tok/s | padded tok/s | padded/real | epoch (min) | "
          "epoch speed-up | s/step vs finetune |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        before = next(b for b in rows if (b["task"], b["config"], b["variant"]) == (r["task"], r["config"], "before"))
        dense = next(b for b in rows if (b["task"], b["config"], b["variant"]) == (r["task"], "finetune", r["variant"]))
        print(f"| {r['task']} | {r['config']} | {r['variant']} | {r['s_step']:.3f} | {r['real']:.0f} | "
              f"{r['padded']:.0f} | {r['padding']:.2f} | {r['epoch_min']:.1f} | "
              f"{before['epoch_min'] / r['epoch_min']:.2f}x | {r['s_step'] / dense['s_step']:.2f}x |")


def accuracy(args: argparse.Namespace) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    scores: dict[str, list[float]] = {"random batches": [], "length-grouped": []}
    for seed in seeds:
        for label, grouped in (("random batches", False), ("length-grouped", True)):
            manifest = _run(args.task, args.data_dir, args.steps, seed,
                            {"method": "abp", "sparsity": 0.5, "group_by_length": grouped}, None)
            scores[label].append(manifest["dev_metrics"][next(iter(manifest["dev_metrics"]))]["score"])
            print(f"  seed {seed} {label}: {scores[label][-1]:.4f}", flush=True)
    print(f"\nabp 50% on {args.task}, {args.steps} steps, MiniLM-L6, batch 32, max length 64; seeds {seeds}")
    print("| batches | dev score per seed | mean ± std |")
    print("|---|---|---|")
    for label, values in scores.items():
        print(f"| {label} | {', '.join(f'{v:.4f}' for v in values)} | "
              f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--tasks", default="sst2,rotten_tomatoes")
    s.add_argument("--steps", type=int, default=40)
    s.add_argument("--variants", default="before,after,after+bf16")
    s.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
    a = sub.add_parser("accuracy")
    a.add_argument("--task", default="rotten_tomatoes")
    a.add_argument("--steps", type=int, default=150)
    a.add_argument("--seeds", default="42,43,44")
    a.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    speed(args) if args.mode == "speed" else accuracy(args)


if __name__ == "__main__":
    main()
