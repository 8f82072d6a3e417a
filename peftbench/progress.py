"""What a sweep shows while it works: rich progress bars on a terminal, plain per-epoch lines in a log."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from .train import EpochEnd


class RichReporter:
    """Progress bars for the sweep, the decoding and each run; one kept line per finished run.

    Without a terminal (a log file, a pipe) the bars do not redraw, so each epoch also prints one
    plain line, flushed at once: ``tail -f`` on a log shows a run's progress while it trains.
    """

    def __init__(self, console: Console, epoch_lines: bool | None = None):
        self.console = console
        self.epoch_lines = not console.is_terminal if epoch_lines is None else epoch_lines
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self.sweep_bar = None
        self.run_bar = None
        self.run_label = ""

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def sweep(self, total: int) -> None:
        self.sweep_bar = self.progress.add_task("sweep", total=total)

    def decode(self, label: str, total: int) -> Callable[[int], None]:
        bar = self.progress.add_task(f"decode {label}", total=total)
        return lambda n: self.progress.advance(bar, n)

    def run_started(self, label: str, total_steps: int) -> None:
        if self.run_bar is not None:
            self.progress.remove_task(self.run_bar)
        self.run_label = label
        self.run_bar = self.progress.add_task(f"{label}: build", total=None)

    def run_progress(self, done: int, total: int | None = None, description: str | None = None) -> None:
        if self.run_bar is None:
            return
        kwargs = {"completed": done}
        if total is not None:
            kwargs["total"] = total
        if description is not None:
            kwargs["description"] = f"{self.run_label}: {description}"
        self.progress.update(self.run_bar, **kwargs)

    def epoch_finished(self, end: EpochEnd) -> None:
        text = epoch_line(end)
        if self.run_bar is not None:
            self.progress.update(self.run_bar, description=f"{self.run_label}: {text}")
        if self.epoch_lines:
            self.console.print(f"{self.run_label}  {text}  {end.elapsed_s:.1f} s", markup=False, highlight=False)
            self.console.file.flush()

    def run_finished(self, label: str, summary: str) -> None:
        if self.run_bar is not None:
            self.progress.remove_task(self.run_bar)
            self.run_bar = None
        self.console.print(f"{label}: {summary}", markup=False, highlight=False)
        if self.sweep_bar is not None:
            self.progress.advance(self.sweep_bar)


def epoch_line(end: EpochEnd) -> str:
    val = "" if end.val_top1 is None else f"  val top-1 {end.val_top1:.2f}%"
    return f"epoch {end.epoch}/{end.epochs}  train loss {end.train_loss:.4f}{val}"
