"""The paper's topology study for any set of runs: where masks prune, what survives, how much runs share.

Works on the stored masks alone (no model is run), so it is fast and deterministic. Overlap is the
Jaccard index of kept weights (and of surviving heads and FFN neurons) between every pair of runs,
whatever differs between them: task (multi-task sharing over one backbone), method or seed.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from abp_deploy.artifacts import MASK_FILE, load_mask, read_manifest  # noqa: E402
from abp_deploy.atomic import atomic_dir  # noqa: E402
from abp_deploy.errors import AbpError  # noqa: E402
from abp_deploy.models import resolve_model  # noqa: E402
from abp_deploy.units import UNIT_KINDS, split_matrix_name, unit_status  # noqa: E402

# Matrix types by their layer-relative names (units.py names them the same way).
MATRIX_TYPES = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
                "attention.output.dense": "attention.output", "intermediate.dense": "intermediate",
                "output.dense": "output"}
JSON_FILE = "analyze.json"
PLOTS = ("sparsity_by_layer_and_type.png", "surviving_heads_and_neurons.png", "overlap.png")


def _layer_masks(masks: dict[str, torch.Tensor], layers: int) -> list[dict[str, torch.Tensor]]:
    """Per layer, layer-relative matrix name -> mask (encoder matrices only)."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(layers)]
    for name, mask in masks.items():
        where = split_matrix_name(name)
        if where is not None and where[1] in MATRIX_TYPES:
            out[where[0]][where[1]] = mask
    return out


def _survivors(per_layer: list[dict[str, torch.Tensor]], widths: dict[str, int]) -> dict[str, list[list[bool]]]:
    """Alive units per kind and layer: output slice and source rows both keep a weight (the structure map's rule)."""
    alive: dict[str, list[list[bool]]] = {kind.name: [] for kind in UNIT_KINDS.values()}
    for masks in per_layer:
        for kind in UNIT_KINDS.values():
            out_ok, source_ok = unit_status(kind, masks.__getitem__, widths[kind.name])
            alive[kind.name].append((out_ok & source_ok).tolist())
    return alive


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _run_summary(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    manifest = read_manifest(run_dir)
    if not (run_dir / MASK_FILE).is_file():
        raise AbpError(f"{run_dir} has no mask (method {manifest['method']}): analyze takes runs of a pruning method")
    config = AutoConfig.from_pretrained(resolve_model(manifest["base_model"]))
    masks = load_mask(run_dir / MASK_FILE)
    per_layer = _layer_masks(masks, config.num_hidden_layers)
    for layer in per_layer:  # gated runs mask only some matrices: the others are entirely kept
        for name, shape in _shapes(config).items():
            layer.setdefault(name, torch.ones(shape, dtype=torch.bool))
    alive = _survivors(per_layer, {"head": config.hidden_size // config.num_attention_heads, "neuron": 1})
    heads, neurons = alive["head"], alive["neuron"]
    summary = {
        "run": str(run_dir), "task": manifest["task"], "method": manifest["method"],
        "scope": manifest.get("config", {}).get("scope", "per-matrix"),
        "granularity": manifest.get("granularity", "unstructured"), "seed": manifest["seed"],
        "base_model_sha256": manifest["base_model_sha256"], "sparsity": manifest["sparsity"],
        "sparsity_definition": manifest.get("sparsity_definition", "masked_weights_zero"),
        "sparsity_by_layer_and_type": [{t: round(1 - layer[n].float().mean().item(), 6) for n, t in MATRIX_TYPES.items()}
                                       for layer in per_layer],
        "heads_alive": [sum(h) for h in heads], "neurons_alive": [sum(n) for n in neurons],
        "_heads": heads, "_neurons": neurons,
    }
    return summary, masks


def _shapes(config) -> dict[str, tuple[int, int]]:
    h, f = config.hidden_size, config.intermediate_size
    return {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
            "attention.output.dense": (h, h), "intermediate.dense": (f, h), "output.dense": (h, f)}


def analyze(run_dirs: list[str | Path]) -> dict:
    """Per-run topology and pairwise overlap (Jaccard) of kept weights, heads and neurons."""
    if not run_dirs:
        raise AbpError("nothing to analyze: pass one or more prune run folders")
    runs, masks = zip(*(_run_summary(Path(r)) for r in run_dirs))
    if len({r["base_model_sha256"] for r in runs}) > 1:
        raise AbpError("these runs were pruned from different base models: overlap is only meaningful over one backbone")
    pairs = []
    for (i, a), (j, b) in combinations(enumerate(runs), 2):
        common = sorted(set(masks[i]) & set(masks[j]))
        kept_a = np.concatenate([masks[i][n].numpy().ravel() for n in common]) if common else np.zeros(0, bool)
        kept_b = np.concatenate([masks[j][n].numpy().ravel() for n in common]) if common else np.zeros(0, bool)
        pairs.append({"a": a["run"], "b": b["run"], "weights_jaccard": _jaccard(kept_a, kept_b),
                      "heads_jaccard": _jaccard(np.array(a["_heads"]), np.array(b["_heads"])),
                      "neurons_jaccard": _jaccard(np.array(a["_neurons"]), np.array(b["_neurons"]))})
    labels = short_names([r["run"] for r in runs])
    public = [{k: v for k, v in r.items() if not k.startswith("_")} | {"label": labels[r["run"]]} for r in runs]
    return {"runs": public, "overlap": pairs}


def short_names(paths: list[str]) -> dict[str, str]:
    """Folder names as labels, with their parent folder where two runs share a name."""
    names = [Path(p).name for p in paths]
    return {p: (Path(p).name if names.count(Path(p).name) == 1 else f"{Path(p).parent.name}/{Path(p).name}")
            for p in paths}


def _plot_sparsity(result: dict, path: Path) -> None:
    runs = result["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.6), squeeze=False)
    for ax, run in zip(axes[0], runs):
        grid = np.array([[layer[t] for t in MATRIX_TYPES.values()] for layer in run["sparsity_by_layer_and_type"]])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set(xticks=range(len(MATRIX_TYPES)), yticks=range(len(grid)), ylabel="layer", title=run["label"])
        ax.set_xticklabels(list(MATRIX_TYPES.values()), rotation=45, ha="right", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), label="sparsity")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_survivors(result: dict, path: Path) -> None:
    runs = result["runs"]
    fig, (ax_h, ax_n) = plt.subplots(1, 2, figsize=(11, 1 + 0.45 * len(runs)))
    for ax, key, title in ((ax_h, "heads_alive", "heads alive"), (ax_n, "neurons_alive", "FFN neurons alive")):
        grid = np.array([r[key] for r in runs])
        im = ax.imshow(grid, cmap="magma", aspect="auto")
        ax.set(xlabel="layer", yticks=range(len(runs)), title=title)
        ax.set_yticklabels([r["label"] for r in runs], fontsize=7)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="white" if v < grid.max() / 2 else "black")
        fig.colorbar(im, ax=ax)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_overlap(result: dict, path: Path) -> None:
    names = [r["run"] for r in result["runs"]]
    grid = np.eye(len(names))
    for p in result["overlap"]:
        i, j = names.index(p["a"]), names.index(p["b"])
        grid[i, j] = grid[j, i] = p["weights_jaccard"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(names), 1 + 0.7 * len(names)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="Blues")
    labels = [r["label"] for r in result["runs"]]
    ax.set(xticks=range(len(names)), yticks=range(len(names)), title="Jaccard of kept weights")
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticklabels(labels, fontsize=7)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_analysis(result: dict, out_dir: str | Path, overwrite: bool = False) -> Path:
    """analyze.json and the three heatmaps in `out_dir`, all or nothing."""
    with atomic_dir(out_dir, overwrite) as work:
        (work / JSON_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        for name, draw in zip(PLOTS, (_plot_sparsity, _plot_survivors, _plot_overlap)):
            draw(result, work / name)
    return Path(out_dir)
