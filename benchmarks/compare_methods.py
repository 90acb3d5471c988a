"""Issue-2 benchmark: abp at a sparsity target vs finetune, magnitude and movement, same data and steps.

Prints one Markdown table (dev score and wall time per method and task) and writes the raw
manifests' figures to --out as JSON. Run from the repo root, e.g.:
  python benchmarks/compare_methods.py --tasks rotten_tomatoes sst2 --steps 150
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import datasets
import torch
import transformers

from abp_deploy.prune import PruneConfig, prune

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["rotten_tomatoes", "sst2"])
    parser.add_argument("--methods", nargs="+", default=["finetune", "abp", "magnitude", "movement"])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--granularity", default="unstructured", help="mask granularity of the pruning methods")
    parser.add_argument("--inner-sparsity", type=float, default=None, help="hybrid granularity only")
    parser.add_argument("--gate-lr", type=float, default=None, help="gated granularities only")
    parser.add_argument("--distill-from", default=None,
                        help="teacher run folder of the pruning methods, {task} filled in, e.g. runs/{task}-finetune")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--data-dir", default=str(GLUE))
    parser.add_argument("--runs", default="benchmarks/out/runs")
    parser.add_argument("--out", default="benchmarks/out/compare_methods.json")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    rows = []
    for task in args.tasks:
        data_dir = None if task in ("rotten_tomatoes", "imdb") else args.data_dir
        for method in args.methods:
            for seed in args.seeds:
                pruning = method != "finetune"
                cfg = PruneConfig(task=task, method=method, sparsity=args.sparsity if pruning else None,
                                  granularity=args.granularity if pruning else "unstructured",
                                  inner_sparsity=args.inner_sparsity if pruning else None,
                                  gate_lr=args.gate_lr if pruning else None,
                                  distill_from=args.distill_from.format(task=task) if pruning and args.distill_from
                                  else None,
                                  data_dir=data_dir, max_train_samples=args.steps * args.batch_size,
                                  max_eval_samples=args.max_eval_samples, max_steps=args.steps,
                                  batch_size=args.batch_size, max_length=args.max_length, seed=seed,
                                  output=f"{args.runs}/{task}-{method}-s{seed}", overwrite=True,
                                  checkpoint_every=0, progress=False)
                t0 = time.time()
                m = prune(cfg)
                row = {"task": task, "method": method, "seed": seed, "sparsity": m["sparsity"],
                       "dev": m["dev_metrics"], "wall_s": round(time.time() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
            "args": vars(args)}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("\n| task | method | sparsity | dev score (mean over seeds) | wall s |\n|---|---|---|---|---|")
    for task in args.tasks:
        for method in args.methods:
            rs = [r for r in rows if r["task"] == task and r["method"] == method]
            scores = [next(iter(r["dev"].values()))["score"] for r in rs]
            print(f"| {task} | {method} | {rs[0]['sparsity']:.3f} | {sum(scores) / len(scores):.4f} "
                  f"({', '.join(f'{s:.4f}' for s in scores)}) | {sum(r['wall_s'] for r in rs) / len(rs):.0f} |")


if __name__ == "__main__":
    main()
