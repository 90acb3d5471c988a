"""Training throughput before/after the throughput options, side by side in one run; and their accuracy cost.

Speed mode: for each task and method, short prune runs of the code before this work (commit
cbd000b, run from its own checkout), of this code with random batches, with length-grouped
batches (the default) and with bf16 autocast too, interleaved so machine drift hits every variant
alike. Prints s/step, real and padded tokens/s, the padding factor and the wall time of one epoch
(steps per epoch × measured s/step), with ratios against the old code and against fine-tuning.

    python benchmarks/train_throughput.py speed --steps 30

Accuracy mode: dev accuracy of the same short run with and without length grouping, several seeds.

    python benchmarks/train_throughput.py accuracy --steps 150 --seeds 42,43,44
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {  # name -> prune settings
    "finetune": {"method": "finetune"},
    "abp unstructured 50%": {"method": "abp", "sparsity": 0.5},
    "abp structured 70%": {"method": "abp", "granularity": "structured", "sparsity": 0.7},
    "abp hybrid 70%": {"method": "abp", "granularity": "hybrid", "sparsity": 0.7},
}
BEFORE = "cbd000b"  # the code before the throughput work: random batches, torch.kthvalue thresholds
VARIANTS = {  # name -> (code: None = this checkout, settings)
    "before (cbd000b)": (BEFORE, {}),
    "random batches": (None, {"group_by_length": False}),
    "grouped": (None, {}),
    "grouped+bf16": (None, {"mixed_precision": "bf16"}),
}
# A child process per run (Accelerate fixes precision per process). It timestamps every optimizer
# step, so s/step excludes the first (warm-up) step and everything outside the loop, for any code version.
_CHILD = """
import json, sys, time, torch
stamps = []
_step = torch.optim.AdamW.step
def step(self, *a, **k):
    out = _step(self, *a, **k)
    stamps.append(time.perf_counter())
    return out
torch.optim.AdamW.step = step
from abp_deploy.prune import PruneConfig, prune
manifest = prune(PruneConfig(**json.loads(sys.argv[1])))
print(json.dumps({"stamps": stamps, "manifest": manifest}))
"""


def _run(task: str, data_dir: str | None, steps: int, seed: int, settings: dict, max_eval: int | None,
         source: Path | None = None) -> dict:
    """One prune run in a fresh process, importing abp_deploy from `source` (None: this checkout)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(task=task, data_dir=data_dir if task != "rotten_tomatoes" else None, max_length=64, batch_size=32,
                   max_steps=steps, seed=seed, max_eval_samples=max_eval, checkpoint_every=0, progress=False,
                   device="cpu", output=f"{tmp}/run", **settings)
        env = os.environ | ({"PYTHONPATH": str(source)} if source else {})
        # `python -c` puts the working directory first on sys.path: run old code from its own checkout
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True,
                              check=True, env=env, cwd=source or ROOT)
        return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args: argparse.Namespace) -> None:
    variants = [v for v in VARIANTS if v.split(" ")[0] in args.variants.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), BEFORE], check=True,
                       capture_output=True)
        try:
            for task in args.tasks.split(","):
                for name, settings in CONFIGS.items():
                    if name not in args.configs.split(","):
                        continue
                    for variant in variants:
                        code, extra = VARIANTS[variant]
                        if variant.endswith("bf16") and name not in args.bf16_configs.split(","):
                            continue
                        out = _run(task, args.data_dir, args.steps, 42, settings | extra, 64, old if code else None)
                        rows.append(_row(task, name, variant, out))
                        print(f"  {task} {name} {variant}: {rows[-1]['s_step']:.3f} s/step", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
    _print_speed(rows, args.steps)


def _row(task: str, config: str, variant: str, out: dict) -> dict:
    stamps, manifest = out["stamps"], out["manifest"]
    s_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    training = manifest.get("training")  # absent in the old code's manifest
    steps_per_epoch = -(-manifest["train_examples"] // 32)
    row = {"task": task, "config": config, "variant": variant, "s_step": s_step,
           "epoch_min": steps_per_epoch * s_step / 60, "padding": None, "real": None, "padded": None}
    if training:
        per_step = training["seconds"] / training["steps"]  # this one includes the first step: only for tokens/s
        row |= {"padding": training["padded_tokens"] / training["real_tokens"],
                "real": training["real_tokens"] / training["steps"] / per_step,
                "padded": training["padded_tokens"] / training["steps"] / per_step}
    return row


def _print_speed(rows: list[dict], steps: int) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    print(f"\n{steps} steps per run, s/step over steps 2..{steps} (first step excluded); MiniLM-L6, batch 32, "
          "max length 64, CPU, one run per cell; epoch = steps/epoch × s/step")
    print("| task | method | variant | s/step | real tok/s | padded tok/s | padded/real | epoch (min) | "
          "epoch speed-up vs before | s/step ÷ finetune's |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        before = next(b for b in rows if (b["task"], b["config"]) == (r["task"], r["config"])
                      and b["variant"].startswith("before"))
        dense = next((b for b in rows if (b["task"], b["config"], b["variant"]) == (r["task"], "finetune", r["variant"])),
                     None)
        print(f"| {r['task']} | {r['config']} | {r['variant']} | {r['s_step']:.3f} | {fmt(r['real'], '.0f')} | "
              f"{fmt(r['padded'], '.0f')} | {fmt(r['padding'], '.2f')} | {r['epoch_min']:.1f} | "
              f"{before['epoch_min'] / r['epoch_min']:.2f}× | {fmt(dense and r['s_step'] / dense['s_step'], '.2f')} |")


ACCURACY_VARIANTS = {"random batches": {"group_by_length": False}, "length-grouped": {},
                     "length-grouped + bf16": {"mixed_precision": "bf16"}}


def accuracy(args: argparse.Namespace) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    scores: dict[str, list[float]] = {label: [] for label in ACCURACY_VARIANTS}
    for seed in seeds:
        for label, extra in ACCURACY_VARIANTS.items():
            manifest = _run(args.task, args.data_dir, args.steps, seed, {"method": "abp", "sparsity": 0.5} | extra,
                            None)["manifest"]
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
    s.add_argument("--variants", default="before,random,grouped,grouped+bf16")
    s.add_argument("--bf16-configs", default="finetune,abp unstructured 50%")
    s.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of the methods")
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
