"""Stage three: score and time ONNX artefacts side by side with a dense baseline, in one run."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnxruntime as ort
from transformers import AutoConfig

from abp_deploy.atomic import write_json
from abp_deploy.errors import AbpError
from abp_deploy.exporters.loading import CPU_PROVIDER, GPU_PROVIDER, MODEL_FILE, REPORT_FILE, open_session
from abp_deploy.exporters.quantize import quantize_int8
from abp_deploy.latency import time_interleaved
from abp_deploy.memory_probe import peak_memory_mb
from abp_deploy.models import max_sequence_length
from abp_deploy.onnx_scoring import read_export_report, score_onnx
from abp_deploy.progress import item_progress
from abp_deploy.runtime import Classifier
from abp_deploy.traffic import compare_layouts, dev_inputs, time_batched, time_single, token_lengths


@dataclass
class BenchConfig:
    """What to measure: the grid of shapes, the timing discipline and where the dev data lives."""

    batch_sizes: tuple[int, ...] = (1, 32)
    seq_lens: tuple[int, ...] = (128,)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    warmup: int = 3
    repeats: int = 20
    providers: tuple[str, ...] | None = None  # None: CPU, plus CUDA when onnxruntime has it
    data_dir: str | None = None
    max_eval_samples: int | None = None
    memory: bool = True
    progress: bool = True
    int8_reference: bool = True  # add the baseline quantised to int8: the strongest simple alternative to pruning
    traffic: bool = False  # also time the dev texts at their real lengths through the runtime
    traffic_batch: int = 32
    traffic_repeats: int = 2


def available_providers(requested: tuple[str, ...] | None) -> list[str]:
    """CPU always, CUDA when this onnxruntime build offers it; an unavailable requested provider is an error."""
    have = ort.get_available_providers()
    if requested is None:
        return [CPU_PROVIDER] + ([GPU_PROVIDER] if GPU_PROVIDER in have else [])
    missing = [p for p in requested if p not in have]
    if missing:
        raise AbpError(f"onnxruntime here offers {', '.join(have)}, not {', '.join(missing)}: "
                       "install onnxruntime-gpu for CUDA, or drop the provider")
    return list(requested)


def _check(cfg: BenchConfig) -> None:
    """Refuse settings that cannot be measured, before any work."""
    least = {"--repeats": (cfg.repeats, 1), "--warmup": (cfg.warmup, 0), "--threads": (cfg.threads, 1),
             "--batch-sizes": (min(cfg.batch_sizes, default=0), 1), "--seq-lens": (min(cfg.seq_lens, default=0), 1)}
    if cfg.max_eval_samples is not None:
        least["--max-eval-samples"] = (cfg.max_eval_samples, 1)
    for option, (value, minimum) in least.items():
        if value < minimum:
            raise AbpError(f"{option} {value} is too small: pass {minimum} or more")


def _config(folder: Path):
    """The artefact's config.json, with a one-line error when it is missing or damaged."""
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise AbpError(f"{folder} has no readable config.json ({type(exc).__name__}): re-run abp-deploy export") from exc


def _describe(folder: Path) -> dict:
    """Name, provenance and shape of one artefact, from its export report and config."""
    report = read_export_report(folder)
    if not (folder / MODEL_FILE).is_file():
        raise AbpError(f"{folder} has no {MODEL_FILE}: re-run abp-deploy export")
    config = _config(folder)
    prov, bake = report["provenance"], report.get("bake", {})
    return {
        "name": folder.name, "path": str(folder), "task": prov["task"], "method": prov.get("method"),
        "reference": report.get("reference"),  # set on the int8 row bench made itself
        "sparsity": prov.get("sparsity") or 0.0, "optimize": report.get("optimize"),
        "precision": report.get("precision", "fp32"), "quantize": report.get("quantize"),
        "heads": report["heads"], "intermediate_sizes": report["intermediate_sizes"],
        "full_heads": config.num_attention_heads, "full_intermediate_size": config.intermediate_size,
        "params": bake.get("params_after"), "flops_per_token": bake.get("flops_per_token_after"),
        "size_mb": (folder / MODEL_FILE).stat().st_size / 1e6, "vocab_size": config.vocab_size,
        "max_seq_len": max_sequence_length(config),
        "attention_fused": (report.get("fusion") or {}).get("fused", {}).get("Attention"),
    }


def _int8_reference(baseline: Path, artifacts: list[Path], into: Path) -> Path | None:
    """The dense baseline quantised to int8 (same export otherwise), unless it is int8 or already benched.

    A user who does not prune would quantise the dense model; every report shows that row.
    """
    report = read_export_report(baseline)
    if report.get("quantize") == "int8" or report.get("precision", "fp32") != "fp32":
        return None
    method = report["provenance"].get("method")
    for folder in artifacts:
        other = read_export_report(folder)
        if other.get("quantize") == "int8" and other["provenance"].get("method") == method:
            return None
    out = into / f"{baseline.name}-int8"
    shutil.copytree(baseline, out, ignore=shutil.ignore_patterns(MODEL_FILE, "README.md"))
    quantize_int8(baseline / MODEL_FILE, out / MODEL_FILE)
    write_json(out / REPORT_FILE, report | {"quantize": "int8", "reference": "int8 of the baseline, made by bench"})
    return out


def _ratios(rows: list[dict], baseline: str) -> None:
    """Add speed-ups, throughput ratios, size ratios and score deltas against the baseline to each row."""
    base = next(r for r in rows if r["name"] == baseline)
    base_lat = {(c["provider"], c["batch"], c["seq"]): c for c in base["latency"]}
    for row in rows:
        row["vs_baseline"] = {
            "score_delta": {s: m["score"] - base["accuracy"][s]["score"] for s, m in row["accuracy"].items()
                            if s in base["accuracy"]},
            "size_ratio": row["size_mb"] / base["size_mb"],
            "latency": [{"provider": c["provider"], "batch": c["batch"], "seq": c["seq"],
                         "speedup_p50": base_lat[(c["provider"], c["batch"], c["seq"])]["p50_ms"] / c["p50_ms"],
                         "throughput_ratio": c["throughput"] / base_lat[(c["provider"], c["batch"], c["seq"])]["throughput"]}
                        for c in row["latency"]],
        }
        if "traffic" in row:
            base_traffic = {(t["provider"], t["mode"]): t for t in base["traffic"]}
            row["vs_baseline"]["traffic"] = [
                {"provider": t["provider"], "mode": t["mode"],
                 "throughput_ratio": t["sentences_per_s"] / base_traffic[(t["provider"], t["mode"])]["sentences_per_s"],
                 "speedup_p50": base_traffic[(t["provider"], t["mode"])]["p50_ms"] / t["p50_ms"]}
                for t in row["traffic"]]


def _traffic(rows: list[dict], folders: list[Path], providers: list[str], cfg: BenchConfig, bar) -> dict:
    """Real-traffic mode into each row's "traffic" (and CPU "layouts"); returns what was sent."""
    data_dir = cfg.data_dir or read_export_report(folders[0])["provenance"].get("data_dir")
    inputs = dev_inputs(rows[0]["task"], data_dir, cfg.max_eval_samples)
    for provider in providers:
        runtimes = {r["name"]: Classifier(f, providers=[provider], threads=cfg.threads) for r, f in zip(rows, folders)}
        batched = time_batched(runtimes, inputs, cfg.traffic_batch, cfg.traffic_repeats, provider, cfg.threads)
        single = time_single(runtimes, inputs, provider, cfg.threads)
        for row in rows:
            row.setdefault("traffic", []).extend([asdict(batched[row["name"]]), asdict(single[row["name"]])])
        bar.advance()
    if cfg.threads > 1:
        for row, folder in zip(rows, folders):
            row["layouts"] = [asdict(s) for s in compare_layouts(folder, inputs, cfg.threads, cfg.traffic_repeats)]
            bar.advance()
    return {"texts": len(inputs), "tokens": token_lengths(runtimes[rows[0]["name"]], inputs),
            "batch_size": cfg.traffic_batch, "repeats": cfg.traffic_repeats}


def bench(artifacts: list[str | Path], baseline: str | Path | None = None, cfg: BenchConfig | None = None) -> dict:
    """Accuracy via onnxruntime, latency grid (interleaved), size and peak memory for each artefact.

    With a baseline (the dense fine-tuned model exported the same way) every figure also gets a
    ratio against it, measured in the same run on the same machine.
    """
    cfg = cfg or BenchConfig()
    _check(cfg)
    folders = ([Path(baseline)] if baseline else []) + [Path(a) for a in artifacts]
    if not folders:
        raise AbpError("nothing to bench: pass one or more folders written by abp-deploy export")
    with tempfile.TemporaryDirectory(prefix="abp-bench-") as tmp:
        reference = _int8_reference(folders[0], folders[1:], Path(tmp)) if baseline and cfg.int8_reference else None
        return _bench(folders + ([reference] if reference else []), bool(baseline), cfg)


def _bench(folders: list[Path], has_baseline: bool, cfg: BenchConfig) -> dict:
    """`bench` on resolved folders (the baseline first when `has_baseline`)."""
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        raise AbpError(f"artefact folder names must differ (they label the report): {names}")
    rows = [_describe(f) for f in folders]
    if len({r["task"] for r in rows}) > 1:
        raise AbpError(f"artefacts of different tasks cannot be compared: {sorted({r['task'] for r in rows})}")
    longest = min(r["max_seq_len"] for r in rows)
    if max(cfg.seq_lens) > longest:
        raise AbpError(f"--seq-lens {max(cfg.seq_lens)} is longer than {longest} tokens, the most that "
                       f"{min(rows, key=lambda r: r['max_seq_len'])['name']} takes: pass shorter --seq-lens")
    vocab = min(r["vocab_size"] for r in rows)  # token ids every artefact can embed: timing does not depend on them
    providers = available_providers(cfg.providers)
    cells = [(b, s) for b in cfg.batch_sizes for s in cfg.seq_lens]
    total = len(rows) * (1 + int(cfg.memory)) + len(cells) * len(providers)
    total += (len(providers) + len(rows) * int(cfg.threads > 1)) if cfg.traffic else 0
    with item_progress("benchmarking", total, enabled=cfg.progress) as bar:
        cpu = {r["name"]: open_session(f, threads=cfg.threads) for r, f in zip(rows, folders)}  # scoring and CPU timing
        for row, folder in zip(rows, folders):
            row["accuracy"] = score_onnx(folder, cpu[row["name"]], cfg.data_dir, cfg.max_eval_samples)
            row["latency"] = []
            bar.advance()
        for provider in providers:
            sessions = cpu if provider == CPU_PROVIDER else {
                r["name"]: open_session(f, providers=[provider], threads=cfg.threads) for r, f in zip(rows, folders)}
            for batch, seq in cells:
                stats = time_interleaved(sessions, batch, seq, vocab, cfg.warmup, cfg.repeats)
                for row in rows:
                    row["latency"].append({"provider": provider} | asdict(stats[row["name"]]))
                bar.advance()
        traffic = _traffic(rows, folders, providers, cfg, bar) if cfg.traffic else None
        for row, folder in zip(rows, folders):
            if cfg.memory:
                row["memory"] = peak_memory_mb(folder, max(cfg.batch_sizes), max(cfg.seq_lens), cfg.threads,
                                               row["vocab_size"])
                bar.advance()
    if has_baseline:
        _ratios(rows, names[0])
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu_count": os.cpu_count(), "threads": cfg.threads, "onnxruntime": ort.__version__,
            "providers": providers, "config": asdict(cfg)}
    return {"meta": meta, "baseline": names[0] if has_baseline else None, "artifacts": rows, "traffic": traffic}
