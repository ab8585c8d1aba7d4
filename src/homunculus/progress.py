"""A rich progress bar for the search: trials, best feasible metric, infeasible count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from homunculus.search.study import SearchProgress


@contextmanager
def search_progress(total: int | None, metric: str, enabled: bool) -> Iterator[SearchProgress]:
    """Yield a SearchProgress whose updates drive a progress bar on stderr (if enabled)."""
    state = SearchProgress()
    if not enabled:
        yield state
        return
    columns = [TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("search", total=total, status="")

        def update(s: SearchProgress) -> None:
            best = f"{s.best:.4f}" if s.best is not None else "-"
            bar.update(task, completed=s.done,
                       status=f"best feasible {metric} {best} | infeasible {s.infeasible}")

        state.on_update = update
        yield state
