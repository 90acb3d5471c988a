"""Write a bench result as JSON, a Markdown table and PNG plots, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from abp_deploy.atomic import atomic_dir  # noqa: E402

JSON_FILE, MD_FILE = "bench.json", "bench.md"
PLOTS = ("accuracy_vs_sparsity.png", "latency_vs_sparsity.png", "surviving_structure.png")


def _short_provider(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


def _score(row: dict) -> tuple[str, float]:
    """The headline split and score (the first dev split)."""
    split, metrics = next(iter(row["accuracy"].items()))
    return split, metrics["score"]


def markdown(result: dict) -> str:
    """The summary table (one row per artefact) and the latency grid, with ratios against the baseline."""
    rows, base = result["artifacts"], result["baseline"]
    m = result["meta"]
    lines = [f"# abp-deploy bench — {rows[0]['task']}", "",
             f"{m['date']}, {m['machine']}, {m['cpu_count']} CPUs, {m['threads']} threads, onnxruntime "
             f"{m['onnxruntime']}; {m['config']['repeats']} timed calls per cell after {m['config']['warmup']} "
             f"warm-up, interleaved across artefacts" + (f"; ratios against **{base}**" if base else ""), "",
             "| artefact | method | sparsity | graph | heads kept | FFN kept | MB | score | Δ score | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        split, score = _score(r)
        layers = len(r["heads"])
        delta = r.get("vs_baseline", {}).get("score_delta", {}).get(split)
        fp16 = "fp16" if r.get("precision") == "fp16" else None
        graph = "+".join(x for x in (r["optimize"], fp16, r["quantize"]) if x) or "raw"
        name = f"{r['name']} (reference)" if r.get("reference") else r["name"]
        lines.append(f"| {name} | {r['method']} | {r['sparsity']:.2f} | {graph} | "
                     f"{sum(r['heads'])}/{r['full_heads'] * layers} | "
                     f"{sum(r['intermediate_sizes'])}/{r['full_intermediate_size'] * layers} | {r['size_mb']:.1f} | "
                     f"{score:.4f} | {'' if delta is None else f'{delta * 100:+.2f} pt'} | "
                     f"{r.get('memory', {}).get('peak_rss_mb', '')} |")
    lines += ["", "| artefact | provider | batch × seq | p50 ms | p90 ms | p99 ms | seq/s | speed-up (p50) | throughput ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = r.get("vs_baseline", {}).get("latency", [{}] * len(r["latency"]))
        for c, q in zip(r["latency"], ratios):
            speed = f"{q['speedup_p50']:.2f}×" if q else ""
            thr = f"{q['throughput_ratio']:.2f}×" if q else ""
            lines.append(f"| {r['name']} | {_short_provider(c['provider'])} | {c['batch']} × {c['seq']} | "
                         f"{c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} | {c['throughput']:.1f} | "
                         f"{speed} | {thr} |")
    if result.get("traffic"):
        lines += _traffic_lines(result)
    return "\n".join(lines) + "\n"


def _traffic_lines(result: dict) -> list[str]:
    """The real-traffic table (sentences/s, per-call p50/p99) and the CPU session-layout comparison."""
    t, rows = result["traffic"], result["artifacts"]
    mode = {"batched": f"length-sorted batches of {t['batch_size']}", "single": "one request at a time"}
    lines = ["", f"## Real traffic: {t['texts']} {rows[0]['task']} dev texts at their own lengths",
             "", f"Tokens per text after truncation: mean {t['tokens']['mean']:.1f}, median {t['tokens']['median']:.0f}, "
             f"max {t['tokens']['max']}. Timed from text to prediction with `abp_deploy.runtime` (tokenisation, padding "
             f"and onnxruntime); latency is per call (a batch, or one request); batches: {t['repeats']} passes, "
             "interleaved across artefacts batch by batch; single requests: one pass, interleaved request by request.",
             "", "| artefact | provider | requests | sessions × threads | sentences/s | p50 ms | p99 ms | throughput ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = r.get("vs_baseline", {}).get("traffic", [{}] * len(r["traffic"]))
        for c, q in zip(r["traffic"], ratios):
            ratio = f"{q['throughput_ratio']:.2f}×" if q else ""
            lines.append(f"| {r['name']} | {_short_provider(c['provider'])} | {mode[c['mode']]} | "
                         f"{c['sessions']} × {c['threads']} | {c['sentences_per_s']:.1f} | {c['p50_ms']:.2f} | "
                         f"{c['p99_ms']:.2f} | {ratio} |")
    if any("layouts" in r for r in rows):
        lines += ["", f"Session layout on the CPU, one request at a time ({t['repeats']} alternating passes each):", "",
                  "| artefact | sessions × threads | sentences/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {c['sessions']} × {c['threads']} | {c['sentences_per_s']:.1f} | {c['p50_ms']:.2f} | "
                  f"{c['p99_ms']:.2f} |" for r in rows for c in r["layouts"]]
        lines.append("")
        for r in rows:
            one, many = r["layouts"]
            verdict = "beat" if many["sentences_per_s"] > one["sentences_per_s"] else "did not beat"
            lines.append(f"- {r['name']}: {many['sessions']} one-thread sessions {verdict} one {one['threads']}-thread "
                         f"session ({many['sentences_per_s'] / one['sentences_per_s']:.2f}× its sentences/s).")
    return lines


def _plot_accuracy(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["sparsity"], _score(r)[1] * 100)
        ax.annotate(r["name"], (r["sparsity"], _score(r)[1] * 100), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="sparsity of prunable weights", ylabel=f"dev score ({rows[0]['task']}) ×100", title="accuracy vs sparsity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(rows: list[dict], path: Path) -> None:
    cells = sorted({(c["provider"], c["batch"], c["seq"]) for c in rows[0]["latency"]})
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 4), squeeze=False)
    for ax, (provider, batch, seq) in zip(axes[0], cells):
        cells = [next(c for c in r["latency"] if (c["provider"], c["batch"], c["seq"]) == (provider, batch, seq))
                 for r in rows]
        for r, c in zip(rows, cells):
            ax.scatter(r["sparsity"], c["p50_ms"])
            ax.annotate(r["name"], (r["sparsity"], c["p50_ms"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="sparsity", ylabel="p50 latency (ms)", title=f"{_short_provider(provider)} batch {batch} × seq {seq}")
        ax.set_ylim(0, 1.15 * max(c["p50_ms"] for c in cells))  # room for the labels
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_structure(rows: list[dict], path: Path) -> None:
    fig, (heads, ffn) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        x = [layer + i * width for layer in range(len(r["heads"]))]
        heads.bar(x, r["heads"], width, label=r["name"])
        ffn.bar(x, r["intermediate_sizes"], width, label=r["name"])
    heads.set(xlabel="layer", ylabel="attention heads kept", ylim=(0, rows[0]["full_heads"]))
    ffn.set(xlabel="layer", ylabel="FFN neurons kept", ylim=(0, rows[0]["full_intermediate_size"]))
    heads.legend(fontsize=7)
    fig.suptitle("surviving structure per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, out_dir: str | Path, overwrite: bool = False) -> Path:
    """bench.json, bench.md and the three plots in `out_dir`."""
    with atomic_dir(out_dir, overwrite) as work:
        (work / JSON_FILE).write_text(json.dumps(result, indent=2) + "\n")
        (work / MD_FILE).write_text(markdown(result))
        for name, draw in zip(PLOTS, (_plot_accuracy, _plot_latency, _plot_structure)):
            draw(result["artifacts"], work / name)
    return Path(out_dir)
