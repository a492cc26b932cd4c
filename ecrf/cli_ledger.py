"""`ecrf verify` and `ecrf ledger ...`: sealing, and verification away from the server.

`ecrf verify` reads the events table with plain sqlite3/psycopg (or an export file) and
recomputes every hash and seal itself; it never starts the application.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ecrf.config import Settings
from ecrf.ledger.readers import (
    HeldSeals,
    LogSource,
    PostgresLog,
    SqliteLog,
    read_held_seals,
    verify_export,
    verify_log,
)
from ecrf.ledger.records import Record, mirror_path
from ecrf.ledger.seals import SealKey, key_id_of, load_public_key
from ecrf.ledger.verify import Report
from ecrf.persistence import DatabaseUrl

ledger_app = typer.Typer(help="The tamper-evident ledger: seals and keys.", no_args_is_help=True)
console = Console()

POSTGRES_EVENTS_TABLE = "ecrf_events"
"""The eventsourcing library names the table after the application (``ecrf``)."""


def _key_path(settings: Settings) -> Path:
    return settings.seal_key_file or settings.data_dir / "seal-key.pem"


@ledger_app.command("seal")
def seal() -> None:
    """Seal the log now (the server also seals every ECRF_SEAL_INTERVAL events and at exit)."""
    from ecrf.application import EcrfApplication
    from ecrf.domain.errors import EcrfError

    application = EcrfApplication(Settings.from_env())
    try:
        sealed = application.ledger.seal(reason="on demand (command line)")
    except EcrfError as error:
        console.print(f"[red]refused:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        application.close()
    if sealed is None:
        console.print("nothing to seal: the log is empty")
        return
    console.print(
        f"sealed through position [bold]{sealed.position}[/bold]: head {sealed.head} "
        f"(key {sealed.key_id}, seal event at position {sealed.event_position})"
    )


@ledger_app.command("public-key")
def public_key() -> None:
    """Print the public key that seals are signed with (PEM), to hand to a verifier."""
    path = _key_path(Settings.from_env())
    if not path.is_file():
        console.print(f"[red]no seal key at {path}[/red]: it is made when the server first starts")
        raise typer.Exit(2)
    typer.echo(SealKey.load(path).public_key_pem, nl=False)


def _trusted_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for path in paths:
        try:
            key = load_public_key(path.read_bytes())
        except ValueError as error:
            raise typer.BadParameter(f"{path}: {error}", param_hint="--public-key") from None
        keys[key_id_of(key)] = key
    return keys


def open_log(parsed: DatabaseUrl) -> LogSource:
    """Open a database's events table for raw reading (no application involved)."""
    if parsed.engine == "sqlite":
        return SqliteLog(parsed.sqlite_path)
    import psycopg.conninfo

    conninfo = psycopg.conninfo.make_conninfo(
        host=parsed.host,
        port=parsed.port,
        user=parsed.user,
        password=parsed.password or None,
        dbname=parsed.dbname,
    )
    return PostgresLog(conninfo, parsed.schema or "public", POSTGRES_EVENTS_TABLE)


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[Record], None]]:
    """A progress bar (on a terminal) advanced once per record."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=total)
        count = 0

        def advance(_: Record) -> None:
            nonlocal count
            count += 1
            if count % 1000 == 0:
                progress.update(task, completed=count)

        yield advance


def verify_source(
    source: LogSource,
    *,
    trusted_keys: dict[str, Ed25519PublicKey] | None,
    held_seals: HeldSeals,
) -> Report:
    """What `ecrf verify --database` runs on an opened log (and closes it): every record
    in order, with a progress bar on a terminal."""
    try:
        with _progress(source.max_position(), "verifying log") as advance:
            return verify_log(
                source, trusted_keys=trusted_keys, held_seals=held_seals, progress=advance
            )
    finally:
        source.close()


def verify(
    database: Annotated[
        str | None,
        typer.Option(help="Database URL to verify (default: ECRF_DATABASE_URL)."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="An export (GET /exports/ledger.jsonl) to verify.", dir_okay=False
        ),
    ] = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--public-key",
            help="A public key (PEM) to trust for seals; repeat for older keys. With "
            "--database it defaults to the data directory's key.",
            dir_okay=False,
        ),
    ] = None,
    trust_embedded_keys: Annotated[
        bool,
        typer.Option(
            "--trust-embedded-keys",
            help="Accept seals checked only against keys recorded in the log or file itself "
            "(without it, such a result exits 3: anyone could have re-signed the seals).",
        ),
    ] = False,
    seals: Annotated[
        Path | None,
        typer.Option(
            help="Seals kept outside the database (a saved GET /ledger/seals, or the "
            "server's seals.jsonl); with --database it defaults to the data directory's.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Recompute every hash and seal from the raw stored events; exit 1 if anything is wrong."""
    if database is not None and file is not None:
        raise typer.BadParameter("give --database or --file, not both")
    keys = _trusted_keys(public_key or [])
    held = _held_seals(seals) if seals is not None else HeldSeals()
    if file is not None:
        if not file.is_file():
            raise typer.BadParameter(f"{file} does not exist", param_hint="--file")
        with file.open("rb") as handle:
            total = sum(1 for _ in handle)
        with _progress(total, "verifying export") as advance:
            report = verify_export(
                file, trusted_keys=keys or None, held_seals=held, progress=advance
            )
        _print(report, str(file), untrusted=not keys and not trust_embedded_keys)
        return
    settings = Settings.from_env()
    try:
        parsed = DatabaseUrl.parse(database) if database else settings.database
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--database") from None
    where = parsed.sqlite_path if parsed.engine == "sqlite" else _describe(parsed)
    if not keys and _key_path(settings).is_file():
        key = SealKey.load(_key_path(settings))
        keys = {key.key_id: key.public_key}
    if seals is None and mirror_path(settings.data_dir).is_file():
        held = _mirrored_seals(mirror_path(settings.data_dir))
    try:
        source = open_log(parsed)
    except Exception as error:  # any driver error: say what could not be opened
        console.print(f"[red]cannot open {where}:[/red] {error}")
        raise typer.Exit(2) from None
    report = verify_source(source, trusted_keys=keys or None, held_seals=held)
    _print(report, where, untrusted=not keys and not trust_embedded_keys)


def _held_seals(path: Path) -> HeldSeals:
    """Seals from a file given with --seals: a file that is not one is a usage error."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint="--seals")
    try:
        return read_held_seals(path)
    except (OSError, ValueError) as error:  # orjson's decode error is a ValueError too
        raise typer.BadParameter(f"{path}: {error}", param_hint="--seals") from None


def _mirrored_seals(path: Path) -> HeldSeals:
    """The server's own seal copies, read by default: damage is reported, never fatal."""
    try:
        return read_held_seals(path)
    except (OSError, ValueError) as error:
        return HeldSeals(notes=[f"the seal copies in {path} could not be read ({error})"])


def _describe(parsed: DatabaseUrl) -> str:
    schema = f" (schema {parsed.schema})" if parsed.schema else ""
    return f"postgresql://{parsed.host}:{parsed.port}/{parsed.dbname}{schema}"


def _print(report: Report, what: str, untrusted: bool = False) -> None:
    for problem in report.problems:
        console.print(
            f"[red]{problem.kind.value}[/red] position {_or_dash(problem.position)} "
            f"stream {problem.stream or '-'} version {_or_dash(problem.version)}: "
            f"{problem.detail}",
            highlight=False,
            soft_wrap=True,
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if report.partial:
        what = f"{what} (PARTIAL export: only the checks listed in the notes were made)"
    summary = (
        f"{report.events} events through position {report.last_position}, "
        f"head {report.head}, {report.seals} seals, sealed through {report.sealed_through} "
        f"({report.unsealed} events after the last seal)"
    )
    if report.ok and untrusted and report.seals:
        # Hashes hold, but the seals were checked with keys the checked data brought
        # along: a forger re-signing with their own key would pass that.
        console.print(
            f"[yellow]UNTRUSTED SEALS[/yellow]: {what}: {summary}; seals were checked only "
            "against keys in the log itself: pass --public-key with the key you trust "
            "(or --trust-embedded-keys)",
            highlight=False,
        )
        raise typer.Exit(3)
    if report.ok:
        console.print(f"[green]intact[/green]: {what}: {summary}", highlight=False)
        return
    console.print(
        f"[red]NOT INTACT[/red]: {what}: {len(report.problems)} problems; {summary}",
        highlight=False,
    )
    raise typer.Exit(1)


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
