"""Rich progress bars for long loops: steps with loss, current sparsity and ETA."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepBar:
    """A handle on one progress bar; a disabled bar accepts the same calls and shows nothing."""

    def __init__(self, progress: Progress | None, task_id: int | None):
        self._progress, self._task = progress, task_id

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)

    def update(self, **fields: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, **fields)


@contextmanager
def step_progress(description: str, total: int, enabled: bool = True) -> Iterator[StepBar]:
    """A bar for `total` training steps that shows the latest loss and sparsity."""
    if not enabled:
        yield StepBar(None, None)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("sparsity {task.fields[sparsity]:.1%}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns) as progress:
        yield StepBar(progress, progress.add_task(description, total=total, loss=float("nan"), sparsity=0.0))


@contextmanager
def item_progress(description: str, total: int, enabled: bool = True) -> Iterator[StepBar]:
    """A plain bar for counted work (benchmark cells, export steps)."""
    if not enabled:
        yield StepBar(None, None)
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as progress:
        yield StepBar(progress, progress.add_task(description, total=total))
