"""The `ecrf` command line."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape

from ecrf.cli_demo import demo, prepare_demo_server
from ecrf.cli_export import export_app
from ecrf.cli_ledger import ledger_app, verify
from ecrf.cli_projections import projections_app
from ecrf.config import Settings

app = typer.Typer(help="ecrf: event-sourced electronic case report forms.", no_args_is_help=True)
users_app = typer.Typer(help="User accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(ledger_app, name="ledger")
app.add_typer(projections_app, name="projections")
app.add_typer(export_app, name="export")
app.command("verify")(verify)
app.command("demo")(demo)
console = Console()

WORKER_HEALTHCHECK_SECONDS = 30


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="API worker processes (PostgreSQL only).")] = 1,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Fill a fresh store with the simulated trial of `ecrf demo` and serve it "
            "(never ECRF_DATABASE_URL): the demo accounts are printed.",
        ),
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed of the demo trial (--demo).")] = None,
    demo_dir: Annotated[
        Path | None,
        typer.Option(help="Folder that gets a new demo store per run (--demo; ./ecrf-demo)."),
    ] = None,
    demo_database: Annotated[
        str | None,
        typer.Option(help="An empty database to fill instead of a new SQLite file (--demo)."),
    ] = None,
) -> None:
    """Run the API server (embedded SQLite by default) with projections in-process."""
    if not demo and (seed is not None or demo_dir is not None or demo_database is not None):
        raise typer.BadParameter("--seed, --demo-dir and --demo-database go with --demo")
    if demo:
        _serve_demo(host, port, workers, seed, demo_dir, demo_database)
        return
    settings = Settings.from_env()
    if workers > 1 and settings.database.engine == "sqlite":
        raise typer.BadParameter("several workers need PostgreSQL (ECRF_DATABASE_URL)")
    _check_forms(settings)
    where = (
        settings.database.sqlite_path
        if settings.database.engine == "sqlite"
        else f"postgresql://{settings.database.host}:{settings.database.port}/"
        f"{settings.database.dbname}"
    )
    console.print(f"[bold]ecrf[/bold] on {where}")
    console.print(f"API docs: http://{host}:{port}/docs  (OpenAPI: /openapi.json)")
    if settings.bootstrap_admin:
        username = settings.bootstrap_admin.partition(":")[0]
        console.print(
            f"First admin: [bold]{username}[/bold] with the password in ECRF_BOOTSTRAP_ADMIN "
            "(created only if no account exists yet); log in at POST /auth/token."
        )
    else:
        console.print(
            "First admin: run [bold]ecrf users create-admin USERNAME[/bold], or start with "
            "ECRF_BOOTSTRAP_ADMIN=username:password (used once, when no user exists)."
        )
    if workers > 1:
        _initialise(settings)
    _run_server(host, port, workers)


def _check_forms(settings: Settings) -> None:
    """Stop with the form registry's message (naming the file) before anything starts."""
    from ecrf.forms import FormDefinitionError, load_forms

    try:
        load_forms(settings.forms_dir)
    except FormDefinitionError as error:
        console.print(f"[red]cannot start:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None


def _run_server(host: str, port: int, workers: int) -> None:
    """uvicorn on the application factory, which reads its settings from the environment."""
    uvicorn.run(
        "ecrf.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # uvicorn kills a worker that does not answer its health check in time; on a busy
        # two-core machine a worker still importing the app was seen to miss the default
        # 5 s and be killed mid-request (connection reset). A hung worker still goes.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        log_level=os.environ.get("ECRF_LOG_LEVEL", "info"),
    )


def _serve_demo(
    host: str,
    port: int,
    workers: int,
    seed: int | None,
    demo_dir: Path | None,
    demo_database: str | None,
) -> None:
    """Fill a fresh demo store, then serve it like `ecrf serve` does."""
    environment = prepare_demo_server(seed, demo_dir, demo_database, workers)
    # The server (and any worker process) reads its settings from the environment.
    os.environ.update(environment)
    os.environ.pop("ECRF_BOOTSTRAP_ADMIN", None)
    console.print(f"API docs: http://{host}:{port}/docs  (OpenAPI: /openapi.json)")
    console.print(
        "Log in at /docs (Authorize) with a demo account above; the cohorts, casebooks, "
        "queries, audit trails and reports are all there."
    )
    _run_server(host, port, workers)


def _initialise(settings: Settings) -> None:
    """Create tables, guards, the study registry and the first admin once, before workers
    start, so that they do not race each other doing it."""
    from ecrf.application import EcrfApplication
    from projections.registry import build_runner

    application = EcrfApplication(settings)
    try:
        build_runner(application, settings).engine.dispose()
        _ = application.ledger.key  # creates the seal key once, here
    finally:
        application.close()


@users_app.command("create-admin")
def create_admin(
    username: str,
    full_name: Annotated[str, typer.Option(help="Printed name of the administrator.")] = (
        "Administrator"
    ),
    password: Annotated[
        str | None, typer.Option(help="Password (prompted for when omitted).", hidden=True)
    ] = None,
) -> None:
    """Create an administrator account (the way in for the first admin)."""
    from pydantic import ValidationError

    from ecrf.application import EcrfApplication
    from ecrf.domain.errors import EcrfError

    secret = password or os.environ.get("ECRF_ADMIN_PASSWORD") or getpass.getpass("Password: ")
    application = EcrfApplication(Settings.from_env())
    try:
        user = application.create_admin(username, secret, full_name)
    except EcrfError as error:
        console.print(f"[red]refused:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        console.print(f"[red]refused:[/red] {escape(problems)}")
        raise typer.Exit(2) from None
    finally:
        application.close()
    console.print(f"admin [bold]{user.username}[/bold] created")


if __name__ == "__main__":
    app()
