"""`ecrf projections ...`: follow the log standalone, rebuild read models, show their lag.

The follower polls the notification log (``--interval``) on SQLite and on PostgreSQL alike:
SQLite has no LISTEN, and on PostgreSQL the library's database functions that would drive
notifications stay disabled (DESIGN.md), so polling is the one mechanism. A poll that finds
nothing new costs one indexed query per projection.

Rebuild drops a projection's tables (or every projection's) and replays the whole log in
batches, in one pass however many projections: each batch is read and decoded once and
written to all of them in one transaction, rows and tracking positions together. Run it
while no other process follows the log for those projections (the server with
``ECRF_RUN_PROJECTIONS=0``, or stopped): a follower's batches would interleave with the
replay's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from eventsourcing.persistence import InterfaceError, OperationalError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.exc import OperationalError as SqlOperationalError

from ecrf.config import Settings
from projections.runner import ProjectionRunner

projections_app = typer.Typer(
    help="Read models (projections): follow the log, rebuild, status.", no_args_is_help=True
)
console = Console()


@contextmanager
def _runner(batch_size: int | None = None) -> Iterator[ProjectionRunner]:
    """The application's log and every projection, closed on exit."""
    from ecrf.application import EcrfApplication
    from projections.registry import build_runner

    settings = Settings.from_env()
    application = EcrfApplication(settings)
    runner = build_runner(application, settings)
    if batch_size is not None:
        runner.batch_size = batch_size
    try:
        yield runner
    finally:
        runner.stop()
        runner.engine.dispose()
        application.close()


def _print_status(runner: ProjectionRunner) -> None:
    table = Table("projection", "position", "lag", title="Projections")
    for item in runner.status():
        lag = int(item["lag"])
        table.add_row(item["name"], str(item["position"]), f"[red]{lag}[/red]" if lag else "0")
    console.print(table)


@projections_app.command("run")
def run(
    interval: Annotated[float, typer.Option(help="Seconds between polls of the log.")] = 0.5,
    once: Annotated[bool, typer.Option(help="Catch up once and exit.")] = False,
) -> None:
    """Follow the log and keep every projection current (Ctrl-C stops)."""
    if interval <= 0:
        raise typer.BadParameter("the interval must be positive", param_hint="--interval")
    with _runner() as runner:
        runner.catch_up()
        if once:
            _print_status(runner)
            return
        console.print(f"following the log every {interval:g} s; Ctrl-C stops")
        try:
            while True:
                time.sleep(interval)
                try:
                    runner.catch_up()
                except (OperationalError, InterfaceError, SqlOperationalError) as error:
                    # The database went away; tracking is committed with the rows, so the
                    # next poll resumes exactly where the last batch ended.
                    console.print(f"[yellow]database unavailable, retrying:[/yellow] {error}")
        except KeyboardInterrupt:
            console.print("stopped")


@projections_app.command("rebuild")
def rebuild(
    name: Annotated[str | None, typer.Argument(help="One projection (default: all).")] = None,
    batch_size: Annotated[int, typer.Option(help="Events per transaction.", min=1)] = 10_000,
) -> None:
    """Drop projections and replay the whole log into them, with progress."""
    with _runner(batch_size) as runner:
        if name is not None and name not in runner.projections:
            known = ", ".join(runner.projections)
            raise typer.BadParameter(f"unknown projection {name!r}; known: {known}")
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            # All at once is one pass over the log: each batch is read and decoded once.
            task = progress.add_task(name or "all projections", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            runner.rebuild(name, progress=advance)
        _print_status(runner)


@projections_app.command("status")
def status() -> None:
    """Each projection's log position and how many events it lags behind."""
    with _runner() as runner:
        _print_status(runner)
