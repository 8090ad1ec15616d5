"""Progress bars on stderr: one per extracted collection, one for the Pipedrive tokens spent
(against the estimate, with the budget left today), one for the records transformed, one per
loaded entity.

Shown only on an interactive terminal with console logs; `--log-format json` and pipes stay
quiet. The pipeline reports through a plain `(name, records)` callable, so it knows nothing
of the display.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressDisplay:
    """Call it with (task name, records done), e.g. ("extract persons", 500); `expect` sets a
    task's total when it is known in advance (the load's, from the plan)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not self.enabled,
        )
        self._tasks: dict[str, TaskID] = {}
        self._details: dict[str, str] = {}

    def __enter__(self) -> ProgressDisplay:
        self._bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._bars.stop()

    def expect(self, name: str, total: int | None) -> None:
        self._task(name, total)

    def detail(self, name: str, text: str) -> None:
        """Show `text` in the rate column of a task from now on (e.g. Pipedrive tokens left today)."""
        self._details[name] = text
        self._bars.update(self._task(name, None), rate=text)

    def __call__(self, name: str, records: int) -> None:
        task = self._task(name, None)
        self._bars.advance(task, records)
        state = self._bars.tasks[task]
        if state.total is not None and state.completed > state.total:
            # an expectation, not a promise: a load also rewrites records whose own content did not
            # change but whose linked records were created again (new ids), which no plan counts
            self._bars.update(task, total=state.completed)
        speed = state.speed
        self._bars.update(task, rate=self._details.get(name) or (f"{speed:,.0f}/s" if speed else ""))

    def _task(self, name: str, total: int | None) -> TaskID:
        if name not in self._tasks:
            self._tasks[name] = self._bars.add_task(name, total=total, rate="")
        elif total is not None:
            self._bars.update(self._tasks[name], total=total)
        return self._tasks[name]
