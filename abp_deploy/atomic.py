"""All-or-nothing output folders and files, for every artefact this tool writes.

One mechanism: build in a work folder beside the destination, then `publish` it, which moves an
existing destination aside, moves the new folder in, and only then deletes the old one, so a crash
at any point leaves either the old artefact or the new one, never neither. `--overwrite` may only
replace a folder this tool wrote (it holds one of `OWN_MARKERS`), and never a folder that holds
the working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from abp_deploy.errors import AbpError

# Files only abp-deploy writes at the top of its folders: prune runs, interrupted runs, jobs, bakes,
# exports, bench reports, analyses.
OWN_MARKERS = ("manifest.json", "prune_config.json", "job.json", "bake_summary.json", "export_report.json",
               "bench.json", "analyze.json")


def incomplete_dir(out_dir: str | Path) -> Path:
    """Where a resumable run works until it is finished and published to `out_dir`."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".incomplete")


def _holds_working_dir(path: Path) -> bool:
    here, target = Path.cwd().resolve(), path.resolve()
    return target == here or target in here.parents or target == Path.home().resolve()


def check_output_path(out_dir: Path) -> None:
    """Refuse destinations that can never be replaced safely: `/`, `~`, `.` or a parent of it."""
    if _holds_working_dir(Path(out_dir)):
        raise AbpError(f"{out_dir} is the working directory, a parent of it, or the home folder: "
                       "pass a new folder, e.g. -o runs/NAME")


def refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Allow `out_dir` if absent or empty, or if `overwrite` and abp-deploy wrote it; else one clear error."""
    out_dir = Path(out_dir)
    check_output_path(out_dir)
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not overwrite:
        raise AbpError(f"{out_dir} already exists and is not empty: pass --overwrite or choose another output folder")
    if not out_dir.is_dir() or not any((out_dir / m).is_file() for m in OWN_MARKERS):
        raise AbpError(f"{out_dir} was not written by abp-deploy (none of {', '.join(OWN_MARKERS)} in it): "
                       "--overwrite only replaces abp-deploy folders; choose another output folder")


def publish(work: Path, out_dir: Path, overwrite: bool = False) -> None:
    """Move a finished work folder to `out_dir`, replacing an old one only if allowed, never losing both."""
    out_dir = Path(out_dir)
    refuse_existing(out_dir, overwrite)
    if not out_dir.exists():
        work.replace(out_dir)
        return
    old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
    out_dir.replace(old)
    try:
        work.replace(out_dir)
    except BaseException:
        old.replace(out_dir)  # the new one could not go in: put the old one back
        raise
    shutil.rmtree(old) if old.is_dir() else old.unlink()


def replace_dir(new: Path, dest: Path) -> None:
    """Swap `new` into `dest` (a folder of our own, e.g. a checkpoint): old aside, new in, old deleted."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.replace(old)
    new.replace(dest)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces `out_dir` only if the block finishes without error.

    An interrupted or failed write leaves nothing at `out_dir` that looks like a valid artefact
    (and an existing one untouched).
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        os.chmod(work, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        yield work
        publish(work, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_json(path: Path, content: dict) -> None:
    """Write a JSON file whole or not at all (temporary file, then an atomic rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path, fix: str) -> dict:
    """Read a JSON file this tool wrote; a missing or damaged one is one line naming `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise AbpError(f"{path} is missing: {fix}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AbpError(f"{path} is corrupted ({type(exc).__name__}): {fix}") from exc
