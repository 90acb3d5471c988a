"""A prune run's work folder (`OUT.incomplete`): its settings, lock and resumable checkpoint.

The folder becomes the run (`OUT`) only when training finished (`atomic.publish`). Checkpoints are
Accelerate states, which unpickle optimizer and RNG state: a run folder is trusted input, so
`--resume` first checks every checkpoint file against the sha256 this tool recorded beside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator

from abp_deploy.artifacts import file_sha256
from abp_deploy.atomic import incomplete_dir, publish, read_json, refuse_existing, replace_dir, write_json
from abp_deploy.errors import AbpError

RUN_CONFIG = "prune_config.json"
CHECKPOINT = "checkpoint"
STEP_FILE = "step.json"  # {"step": N, "config_sha256": ..., "files": {name: sha256}}


def _config_digest(config: dict) -> str:
    return hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold `OUT.lock` (our pid inside) while a run writes `out_dir`.

    A second writer is refused; a lock whose owner is gone is taken over.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = out_dir.with_name(out_dir.name + ".lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _pid_alive(owner):
                raise AbpError(f"another run is writing {out_dir} (pid {owner}): "
                               "wait for it or choose another --output")
            lock.unlink(missing_ok=True)  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise AbpError(f"could not take the lock {lock}: remove it if no run is writing {out_dir}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def prepare_work_dir(config: dict, out: Path, resume: bool, overwrite: bool, resume_free: set[str],
                     defaults: dict) -> tuple[Path, int]:
    """The work folder to train in and the step to start from; a fresh one holds the settings, written atomically.

    `resume` continues a checkpointed run whose settings (except `resume_free`) are the same; a setting
    an older interrupted run lacks counts as its default in `defaults`.
    """
    work = incomplete_dir(out)
    if resume:
        if not (work / CHECKPOINT / STEP_FILE).is_file():
            raise AbpError(f"nothing to resume at {work} (no checkpoint was saved): run the same command "
                           "without --resume to start the run")
        old = read_json(work / RUN_CONFIG, "start over with --overwrite (without --resume)")
        changed = [k for k, v in config.items() if k not in resume_free and old.get(k, defaults.get(k)) != v]
        if changed:
            raise AbpError(f"--resume with settings that differ from the interrupted run ({', '.join(changed)}): "
                           "resume with the original settings or start over with --overwrite")
        return work, _verified_step(work, old)
    if out.exists():
        refuse_existing(out, overwrite)  # a run there, replaceable only with --overwrite
    if (work / CHECKPOINT).is_dir() and not overwrite:
        raise AbpError(f"an interrupted run is at {work}: pass --resume to continue it or --overwrite to start over")
    if work.exists():  # a checkpoint being overwritten, or a run that died before saving one: nothing to keep
        if not (work / RUN_CONFIG).is_file():
            raise AbpError(f"{work} exists but was not written by abp-deploy: move it away or choose another --output")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(work / RUN_CONFIG, config)
    return work, 0


def _verified_step(work: Path, config: dict) -> int:
    """The checkpoint's step, after checking its files and settings are the ones this tool wrote."""
    record = read_json(work / CHECKPOINT / STEP_FILE, "start over with --overwrite")
    if record.get("config_sha256") != _config_digest(config):
        raise AbpError(f"{work / RUN_CONFIG} does not match the checkpoint it sits beside: refusing to resume "
                       "(a run folder is trusted input); start over with --overwrite")
    for name, digest in record.get("files", {}).items():
        path = work / CHECKPOINT / name
        if not path.is_file() or file_sha256(path) != digest:
            raise AbpError(f"checkpoint file {path} is missing or changed since it was saved: refusing to resume; "
                           "start over with --overwrite")
    return int(record["step"])


def save_checkpoint(accelerator: Accelerator, work: Path, step: int) -> None:
    """Save the full training state at `step`, swapping it in only once complete (old kept until then)."""
    tmp = work / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    config = read_json(work / RUN_CONFIG, "start over with --overwrite")
    write_json(tmp / STEP_FILE, {"step": step, "config_sha256": _config_digest(config), "files": files})
    replace_dir(tmp, work / CHECKPOINT)


def load_checkpoint(accelerator: Accelerator, work: Path) -> None:
    """Restore the state saved by `save_checkpoint` (checked by `prepare_work_dir`)."""
    accelerator.load_state(str(work / CHECKPOINT))


def checkpoint_step(work: Path) -> int | None:
    """The step of the work folder's checkpoint, or None if it has none."""
    path = work / CHECKPOINT / STEP_FILE
    return int(read_json(path, "start over with --overwrite")["step"]) if path.is_file() else None


def finish_run(work: Path, out: Path, overwrite: bool) -> None:
    """Drop the checkpoint and publish the finished run folder."""
    shutil.rmtree(work / CHECKPOINT, ignore_errors=True)
    publish(work, out, overwrite)
