"""Hybrid before/after the open-units fix: the same run with the pre-refactor code and with this one.

Before (commit cbd000b) the inner top-k ranked whole matrices, so closed units took keep slots;
now it ranks only weights of open units. Same task, steps, seed and data order on both sides.
Prints dev accuracy, survivors and the sparsity measured inside kept units, from each run's mask.

    python benchmarks/hybrid_before_after.py --steps 150 --out benchmarks/out/hybrid_before_after
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from abp_deploy.artifacts import load_mask, read_manifest
from abp_deploy.units import HEAD, NEURON, matrix_name

BEFORE = "cbd000b"
SETTINGS = dict(task="rotten_tomatoes", granularity="hybrid", sparsity=0.7, max_length=64, batch_size=32, seed=42,
                checkpoint_every=0, progress=False, device="cpu")


def _run(source: Path | None, out: Path, steps: int, extra: dict) -> None:
    """One prune run in a fresh process, importing abp_deploy from `source` (None: the installed one)."""
    cfg = SETTINGS | {"max_steps": steps, "output": str(out.resolve())} | extra
    code = f"from abp_deploy.prune import PruneConfig, prune; prune(PruneConfig(**{cfg!r}))"
    env = os.environ | ({"PYTHONPATH": str(source)} if source else {})
    # `python -c` puts the working directory first on sys.path: run the old code from its own checkout
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=source or Path.cwd())
    version = json.loads((out / "manifest.json").read_text()).get("abp_deploy_version")
    print(f"{out}: written by abp-deploy {version} from {source or 'this checkout'}", flush=True)


def _inside_open_units(run: Path, layers: int, heads: int, head_size: int) -> float:
    """Fraction of zeros among the weights that open heads and neurons own (the inner mask's real sparsity)."""
    masks = load_mask(run / "mask.safetensors")
    zeros = total = 0
    for i in range(layers):
        open_heads = masks[matrix_name(i, HEAD.output)].any(0).reshape(heads, head_size).any(1)
        open_neurons = masks[matrix_name(i, NEURON.output)].any(0)
        for kind, alive, width in ((HEAD, open_heads, head_size), (NEURON, open_neurons, 1)):
            cols = alive.repeat_interleave(width)
            for name in kind.inputs:
                m = masks[matrix_name(i, name)][cols]
                zeros, total = zeros + int((~m).sum()), total + m.numel()
            m = masks[matrix_name(i, kind.output)][:, cols]
            zeros, total = zeros + int((~m).sum()), total + m.numel()
    return zeros / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/hybrid_before_after"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        old_src = Path(tmp) / "src"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_src), BEFORE], check=True, capture_output=True)
        try:
            runs = {"before": args.out / f"before-{args.steps}", "after": args.out / f"after-{args.steps}"}
            if not (runs["before"] / "manifest.json").is_file():
                _run(old_src, runs["before"], args.steps, {})
            if not (runs["after"] / "manifest.json").is_file():
                _run(None, runs["after"], args.steps, {"group_by_length": False} if _has_grouping() else {})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_src)], check=True)
    print(f"hybrid 70% (inner 0.3), rotten_tomatoes, {args.steps} steps, seed 42, max length 64, batch 32, one seed")
    print("| code | dev accuracy | heads kept | FFN neurons kept | zeros inside kept units |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        m = read_manifest(run)
        config = m["structure"]
        heads = 12  # MiniLM-L6: 12 heads of 32
        inner = _inside_open_units(run, len(config["heads_kept"]), heads, 384 // heads)
        print(f"| {name} | {m['dev_metrics']['dev']['accuracy']:.4f} | {sum(m['structure']['heads_kept'])} | "
              f"{sum(m['structure']['neurons_kept'])} | {inner:.4f} |")
    print(json.dumps({n: str(r) for n, r in runs.items()}))


def _has_grouping() -> bool:
    from abp_deploy.prune import PruneConfig

    return hasattr(PruneConfig(), "group_by_length")


if __name__ == "__main__":
    main()
