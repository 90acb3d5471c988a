"""Peak resident memory of a fresh process that loads an ONNX model and runs one batch.

Measured in a child process because a process's peak RSS only grows: in the benchmarking process
it would mix all artefacts. The child reads its own high-water mark, `VmHWM` of /proc/self/status,
which belongs to its address space and so starts afresh at exec; `ru_maxrss` does not: a child
inherits its parent's through fork and exec, so under `abp-deploy run` (a process of 2 GB after
training) every artefact would read the parent's peak. Run as
`python -m abp_deploy.memory_probe MODEL BATCH SEQ THREADS VOCAB`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from abp_deploy.errors import AbpError

STATUS = Path("/proc/self/status")


def _peak_rss_mb() -> float:
    """This process's own peak resident set in MB (VmHWM, Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in STATUS.read_text().splitlines() if ":" in line)
        return int(fields["VmHWM"].split()[0]) / 1024  # reported in kB
    except (OSError, KeyError) as exc:
        raise AbpError(f"peak memory is read from VmHWM in {STATUS}, which this system lacks: "
                       "bench with --no-memory") from exc


def peak_memory_mb(model: str | Path, batch: int, seq: int, threads: int, vocab_size: int) -> dict[str, float]:
    """{"peak_rss_mb": process peak, "model_mb": peak minus the same process before loading the model}."""
    cmd = [sys.executable, "-m", "abp_deploy.memory_probe", str(model), str(batch), str(seq), str(threads),
           str(vocab_size)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AbpError(f"memory probe of {model} failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe(model: str, batch: int, seq: int, threads: int, vocab_size: int) -> dict[str, float]:
    """Load and run with onnxruntime alone (no torch import), as an inference service would."""
    import onnxruntime as ort

    from abp_deploy.latency import synthetic_feeds  # numpy and onnxruntime only

    path = Path(model) / "model.onnx" if Path(model).is_dir() else Path(model)
    before = _peak_rss_mb()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, synthetic_feeds(session, batch, seq, vocab_size))
    peak = _peak_rss_mb()
    return {"peak_rss_mb": round(peak, 1), "model_mb": round(peak - before, 1)}


if __name__ == "__main__":
    model_arg, *numbers = sys.argv[1:]
    print(json.dumps(_probe(model_arg, *map(int, numbers))))
