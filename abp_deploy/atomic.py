"""Write an output folder all or nothing: build it in a temporary sibling, rename it into place when done."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from abp_deploy.errors import AbpError


def refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Raise unless `out_dir` is absent or an empty folder, or `overwrite` allows replacing it."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise AbpError(f"{out_dir} already exists and is not empty: pass --overwrite or choose another output folder")


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
        if out_dir.exists():
            old = work.with_name(work.name + ".old")
            out_dir.replace(old)
            work.replace(out_dir)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            work.replace(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
