"""Real-traffic timing: the task's dev texts at their own lengths, through the runtime that ships (tokenizer included).

Per artefact and provider, interleaved across artefacts call by call so that machine drift hits all alike:
- batched: the dev set in the runtime's length-sorted dynamic batches, each batch timed from texts to predictions;
- single: one request at a time, each timed from text to prediction (a service that does not batch).
On the CPU, the one-at-a-time stream is also served by one session of `threads` threads and by `threads`
sessions of one thread each fed concurrently, alternately: on a small machine the latter can win.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from abp_deploy.data import load_split
from abp_deploy.exporters.loading import CPU_PROVIDER
from abp_deploy.latency import percentiles_ms, rotated
from abp_deploy.runtime import Classifier, Inputs
from abp_deploy.tasks import get_task


@dataclass(frozen=True)
class TrafficStats:
    """Sentences per second and per-call latency (a batch, or one request) for one way of serving the texts."""

    provider: str
    mode: str  # "batched" or "single"
    sessions: int
    threads: int  # intra-op threads per session
    batch: int
    sentences: int
    calls: int
    sentences_per_s: float
    p50_ms: float
    p99_ms: float


def dev_inputs(task_name: str, data_dir: str | None, max_samples: int | None) -> Inputs:
    """The texts (or text pairs) of the task's first dev split, in file order."""
    task = get_task(task_name)
    ds = load_split(task, task.dev_splits[0], data_dir, max_samples)
    return list(zip(ds["text_a"], ds["text_b"])) if task.is_pair else list(ds["text_a"])


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def _stats(provider: str, mode: str, sessions: int, threads: int, batch: int, sentences: int,
           times_ms: list[float], wall_s: float) -> TrafficStats:
    p50, _, p99 = percentiles_ms(times_ms)
    return TrafficStats(provider, mode, sessions, threads, batch, sentences, len(times_ms), sentences / wall_s, p50, p99)


def time_batched(classifiers: dict[str, Classifier], inputs: Inputs, batch_size: int, repeats: int,
                 provider: str, threads: int) -> dict[str, TrafficStats]:
    """Every length-sorted batch of the dev set through each classifier in turn, `repeats` passes."""
    names = list(classifiers)
    plans = {n: [[inputs[i] for i in index] for index in c.length_batches(inputs, batch_size)]
             for n, c in classifiers.items()}
    for n in names:  # warm-up: the longest batch once
        classifiers[n].predict(plans[n][-1], batch_size)
    times: dict[str, list[float]] = {n: [] for n in names}
    for turn in range(repeats * len(plans[names[0]])):
        for n in rotated(names, turn):
            batch = plans[n][turn % len(plans[n])]
            times[n].append(_timed(partial(classifiers[n].predict, batch, batch_size)))
    return {n: _stats(provider, "batched", 1, threads, batch_size, repeats * len(inputs), t, sum(t) / 1e3)
            for n, t in times.items()}


def time_single(classifiers: dict[str, Classifier], inputs: Inputs, provider: str,
                threads: int) -> dict[str, TrafficStats]:
    """Each dev text as its own request through each classifier in turn."""
    names = list(classifiers)
    for n in names:
        classifiers[n].predict(inputs[:1])
    times: dict[str, list[float]] = {n: [] for n in names}
    for turn, text in enumerate(inputs):
        for n in rotated(names, turn):
            times[n].append(_timed(partial(classifiers[n].predict, [text])))
    return {n: _stats(provider, "single", 1, threads, 1, len(inputs), t, sum(t) / 1e3) for n, t in times.items()}


def _serve(workers: list[Classifier], inputs: Inputs) -> tuple[list[float], float]:
    """One request at a time per worker, the workers serving interleaved shares of the stream concurrently."""
    def serve(k: int) -> list[float]:
        return [_timed(partial(workers[k].predict, [text])) for text in inputs[k::len(workers)]]

    start = time.perf_counter()
    with ThreadPoolExecutor(len(workers)) as pool:
        times = [t for shard in pool.map(serve, range(len(workers))) for t in shard]
    return times, time.perf_counter() - start


def compare_layouts(folder: Path, inputs: Inputs, threads: int, rounds: int) -> list[TrafficStats]:
    """One session of `threads` threads against `threads` one-thread sessions, one request at a time (CPU).

    The two layouts alternate pass by pass over the same texts, `rounds` passes each, so drift hits both.
    """
    layouts = {1: [Classifier(folder, threads=threads)], threads: [Classifier(folder, threads=1) for _ in range(threads)]}
    for workers in layouts.values():
        for worker in workers:
            worker.predict(inputs[:1])
    times: dict[int, list[float]] = {n: [] for n in layouts}
    wall = dict.fromkeys(layouts, 0.0)
    for turn in range(rounds):
        for sessions in rotated(list(layouts), turn):
            t, w = _serve(layouts[sessions], inputs)
            times[sessions] += t
            wall[sessions] += w
    return [_stats(CPU_PROVIDER, "single", n, threads if n == 1 else 1, 1, rounds * len(inputs), times[n], wall[n])
            for n in layouts]


def token_lengths(classifier: Classifier, inputs: Inputs) -> dict[str, float]:
    """Mean, median and longest token count of the inputs as the runtime feeds them (after truncation)."""
    lengths = np.array([len(e) for e in classifier.encode(inputs)])
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)), "max": int(lengths.max())}
