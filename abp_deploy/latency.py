"""Latency and throughput of ONNX sessions, measured interleaved so that machine drift hits all alike."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import onnxruntime as ort

T = TypeVar("T")


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall time percentiles (ms) and throughput (sequences/s, from the median) for one input shape."""

    batch: int
    seq: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float


def synthetic_feeds(session: ort.InferenceSession, batch: int, seq: int, vocab_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids with a full attention mask: every position is computed, as in a padded batch."""
    rng = np.random.default_rng(seed)
    shapes = {"input_ids": rng.integers(1000 if vocab_size > 2000 else 5, vocab_size, size=(batch, seq)),
              "attention_mask": np.ones((batch, seq)), "token_type_ids": np.zeros((batch, seq))}
    return {i.name: shapes[i.name].astype(np.int64) for i in session.get_inputs()}


def rotated(names: list[T], turn: int) -> list[T]:
    """`names` starting at position turn % len: who goes first changes every turn, so no one always goes first."""
    k = turn % len(names)
    return names[k:] + names[:k]


def percentiles_ms(times_ms: list[float]) -> tuple[float, float, float]:
    """p50, p90 and p99 of per-call times in ms."""
    p50, p90, p99 = np.percentile(np.asarray(times_ms), [50, 90, 99])
    return float(p50), float(p90), float(p99)


def time_interleaved(sessions: dict[str, ort.InferenceSession], batch: int, seq: int, vocab_size: int,
                     warmup: int = 3, repeats: int = 20) -> dict[str, LatencyStats]:
    """Time `repeats` calls of every session on the same inputs, alternating sessions call by call."""
    feeds = {name: synthetic_feeds(s, batch, seq, vocab_size) for name, s in sessions.items()}
    names = list(sessions)
    for _ in range(warmup):
        for name in names:
            sessions[name].run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotated(names, r):
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, t in times.items():
        p50, p90, p99 = percentiles_ms(t)
        out[name] = LatencyStats(batch, seq, len(t), p50, p90, p99, float(np.mean(t)), batch / (p50 / 1e3))
    return out
