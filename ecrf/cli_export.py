"""`ecrf export ...`: CDISC ODM and SDTM files written straight from the database.

The command line reads the database itself, as the operator who runs it (someone who
can reach the database can read it anyway); it never writes an event.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ecrf.config import Settings
from ecrf.export.cut import LogCut, iso_utc

export_app = typer.Typer(
    help="Standards exports: CDISC ODM 1.3.2 and SDTM datasets.", no_args_is_help=True
)
console = Console()

AsOfOption = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="ISO 8601 instant: export the data exactly as it stood then (UTC if no zone).",
    ),
]


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"not an ISO 8601 instant: {value!r}", param_hint="--as-of"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _report(cut: LogCut, what: str) -> None:
    as_of = iso_utc(cut.at) if cut.at is not None else "-"
    console.print(
        f"{what}: ledger position [bold]{cut.position}[/bold], head {cut.head} "
        f"(reproduce with --as-of {as_of})"
    )


@export_app.command("odm")
def odm(
    file: Annotated[Path, typer.Argument(help="Where to write the ODM XML.")],
    kind: Annotated[
        str, typer.Option("--type", help="snapshot (current values) or transactional (audit).")
    ] = "snapshot",
    as_of: AsOfOption = None,
) -> None:
    """Write the study as one ODM 1.3.2 document (streamed to the file)."""
    from ecrf.application import EcrfApplication
    from ecrf.domain.errors import EcrfError
    from ecrf.export.service import CLI_OPERATOR, odm_export

    moment = _as_of(as_of)
    application = EcrfApplication(Settings.from_env())
    try:
        cut, chunks = odm_export(application, CLI_OPERATOR, kind, moment)
        file.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed: a failed export leaves no partial file.
        fd, temporary = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            os.replace(temporary, file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except EcrfError as error:
        console.print(f"[red]refused:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        application.close()
    _report(cut, f"wrote {file} ({kind})")


@export_app.command("sdtm")
def sdtm(
    directory: Annotated[Path, typer.Argument(help="Folder for the datasets and metadata.json.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, xpt, or all (both).")] = "all",
    as_of: AsOfOption = None,
) -> None:
    """Write every SDTM dataset (CSV and/or XPORT v5) and metadata.json into DIRECTORY."""
    from ecrf.application import EcrfApplication
    from ecrf.domain.errors import EcrfError
    from ecrf.export.sdtm_files import FORMATS, write_package
    from ecrf.export.service import CLI_OPERATOR, sdtm_export

    if fmt not in (*FORMATS, "all"):
        raise typer.BadParameter("use csv, xpt or all", param_hint="--format")
    moment = _as_of(as_of)
    application = EcrfApplication(Settings.from_env())
    try:
        cut, package = sdtm_export(application, CLI_OPERATOR, moment)
    except EcrfError as error:
        console.print(f"[red]refused:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        application.close()
    formats = FORMATS if fmt == "all" else (fmt,)
    written = write_package(package, cut, directory, formats)
    _report(cut, f"wrote {len(written)} files to {directory}")
