"""The `ecrf` command line."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

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
console = Console()

WORKER_HEALTHCHECK_SECONDS = 30


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="API worker processes (PostgreSQL only).")] = 1,
) -> None:
    """Run the API server (embedded SQLite by default) with projections in-process."""
    settings = Settings.from_env()
    if workers > 1 and settings.database.engine == "sqlite":
        raise typer.BadParameter("several workers need PostgreSQL (ECRF_DATABASE_URL)")
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
    from ecrf.application import EcrfApplication
    from ecrf.domain.errors import EcrfError

    secret = password or os.environ.get("ECRF_ADMIN_PASSWORD") or getpass.getpass("Password: ")
    application = EcrfApplication(Settings.from_env())
    try:
        user = application.create_admin(username, secret, full_name)
    except EcrfError as error:
        console.print(f"[red]refused:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        application.close()
    console.print(f"admin [bold]{user.username}[/bold] created")


if __name__ == "__main__":
    app()
