"""Progress reporting that strategies use through the Context: rich bars in the CLI, silence in the API."""

from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    def advance(self, n: float = 1) -> None: ...
    def describe(self, text: str) -> None: ...  # replace the bar's label (e.g. with the running loss)
    def close(self) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: float | None = None) -> Task: ...


class _SilentTask:
    def advance(self, n: float = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class Silent:
    """The API default: no output at all."""

    def task(self, description: str, total: float | None = None) -> Task:
        return _SilentTask()


class _RichTask:
    def __init__(self, progress, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._id, n)

    def describe(self, text: str) -> None:
        self._progress.update(self._id, description=text)

    def close(self) -> None:
        self._progress.update(self._id, visible=False)
        self._progress.remove_task(self._id)


class Rich:
    """Rich progress bars on stderr; started lazily by the first task."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress = None

    def task(self, description: str, total: float | None = None) -> Task:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        if self._progress is None:
            self._progress = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                                      BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=self.console, transient=True,
                                      # a pipe or a file cannot erase a transient display: rich would leave an
                                      # empty line in its place, before the command's own last line
                                      disable=not self.console.is_terminal)
            self._progress.start()
        return _RichTask(self._progress, self._progress.add_task(description, total=total))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
