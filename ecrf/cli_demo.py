"""`ecrf demo` and `ecrf serve --demo`: a simulated trial to look at, or to explore live.

`ecrf demo` fills an empty store with the seeded trial of `ecrf.demo`, then prints the
cohort progression and the endpoint tables exactly as the report endpoints compute them
(the same projections and report functions), and writes the plots. `ecrf serve --demo`
fills a fresh store in its own folder and serves it with the demo accounts.

A demo never writes into a store that already holds subjects or accounts, so a real
database cannot be polluted by simulated patients.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecrf.config import Settings
from ecrf.demo.defaults import DEFAULT_SEED, DEMO_ACCOUNTS, DEMO_PASSWORD
from ecrf.domain.errors import EcrfError
from ecrf.persistence import DatabaseUrl

if TYPE_CHECKING:
    # The application and the projections load slowly; commands import them on use.
    from ecrf.application import EcrfApplication
    from ecrf.demo.trial import DemoResult
    from projections.facts import ReportTable
    from projections.runner import ProjectionRunner

console = Console()

DEFAULT_PLOTS = Path("ecrf-demo-plots")
DEFAULT_DEMO_DIR = Path("ecrf-demo")

EndpointTables = dict[str, "ReportTable"]


# Where the demo goes -------------------------------------------------------------------


def demo_settings(database: str | None, data_dir: Path | None = None) -> Settings:
    """Settings for a demo store: ``database`` if given, else a new temporary SQLite file.

    A bootstrap admin from the environment is ignored: the demo creates its own accounts.
    """
    base = Settings.from_env()
    if database:
        return replace(
            base,
            database=DatabaseUrl.parse(database),
            data_dir=data_dir or base.data_dir,
            bootstrap_admin=None,
        )
    folder = data_dir.parent if data_dir else Path(tempfile.mkdtemp(prefix="ecrf-demo-"))
    return replace(
        base,
        database=DatabaseUrl.parse(f"sqlite:///{folder.resolve() / 'ecrf.sqlite'}"),
        data_dir=data_dir or folder / "data",
        bootstrap_admin=None,
    )


def describe(database: DatabaseUrl) -> str:
    """Where a store is, without its password."""
    if database.engine == "sqlite":
        return f"sqlite:///{database.sqlite_path}"
    schema = f"?schema={database.schema}" if database.schema else ""
    return f"postgresql://{database.host}:{database.port}/{database.dbname}{schema}"


# Running the simulation ------------------------------------------------------------------


def simulate(settings: Settings, seed: int) -> tuple[EcrfApplication, DemoResult]:
    """Open the store, simulate the trial with a progress display; return both.

    The caller closes the application. Exits with status 2 when the store is not empty.
    """
    from ecrf.application import EcrfApplication
    from ecrf.demo.trial import DemoStep, StoreNotEmptyError, run_demo

    try:
        application = EcrfApplication(settings)
    except EcrfError as error:
        console.print(f"[red]cannot open the store:[/red] {error}")
        raise typer.Exit(1) from None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[what]}"),
        TextColumn("[cyan]{task.fields[outcomes]}"),
        TextColumn("{task.completed} commands"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("simulating", total=None, what="", outcomes="")

            def report(step: DemoStep) -> None:
                progress.update(
                    task,
                    description=step.day.isoformat(),
                    what=step.what,
                    outcomes=step.outcomes,
                    completed=step.commands,
                )

            result = run_demo(application, seed, report)
    except StoreNotEmptyError as error:
        application.close()
        console.print(f"[red]refused:[/red] {describe(settings.database)}: {error}")
        raise typer.Exit(2) from None
    except BaseException:
        application.close()
        raise
    return application, result


@contextmanager
def _runner(application: EcrfApplication, settings: Settings) -> Iterator[ProjectionRunner]:
    from projections.registry import build_runner

    runner = build_runner(application, settings)
    try:
        yield runner
    finally:
        runner.engine.dispose()


def endpoint_tables(application: EcrfApplication, settings: Settings) -> EndpointTables:
    """Every report table of the trial, from the projections as the endpoints read them."""
    from projections.mrd import FORMS as MRD_FORMS
    from projections.mrd import mrd_report
    from projections.pk import FORMS as PK_FORMS
    from projections.pk import pk_methods, pk_report
    from projections.reading import load_facts
    from projections.rfs import FORMS as RFS_FORMS
    from projections.rfs import rfs_report
    from projections.safety import FORMS as SAFETY_FORMS
    from projections.safety import (
        crs_icans_report,
        dlt_report,
        rcl_ada_report,
        teae_report,
    )

    study = application.forms.study
    with _runner(application, settings) as runner:
        safety, _ = load_facts(runner, SAFETY_FORMS)
        pk, _ = load_facts(runner, PK_FORMS)
        mrd, _ = load_facts(runner, MRD_FORMS)
        rfs, _ = load_facts(runner, RFS_FORMS)
    tables: EndpointTables = {
        "teae": teae_report(safety, study),
        "crs_icans": crs_icans_report(safety, study),
        "dlt": dlt_report(safety, study),
        "rcl_ada": rcl_ada_report(safety, study),
        "mrd": mrd_report(mrd, study),
        "rfs": rfs_report(rfs, study),
    }
    for method in pk_methods(study):
        tables[f"pk_{method}"] = pk_report(pk, study, method)
    return tables


def write_plots(
    application: EcrfApplication, result: DemoResult, tables: EndpointTables, folder: Path
) -> list[Path]:
    """The cohort, PK (one per method) and Kaplan-Meier plots as PNG files."""
    from ecrf.reports.plots import km_plot, pk_plot

    folder.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {"cohorts.png": _cohort_png(application, result)}
    for name, table in tables.items():
        if name.startswith("pk_"):
            summary = table.summary or {}
            levels = [level["dose_level"] for level in summary.get("dose_levels", [])]
            method = name.removeprefix("pk_")
            images[f"pk-{method}.png"] = pk_plot(table.rows, levels, method, summary.get("unit"))
    rfs = tables["rfs"]
    summary = rfs.summary or {}
    images["rfs-km.png"] = km_plot(
        rfs.rows, summary.get("curve", []), summary.get("horizon_months", 24.0)
    )
    written = []
    for filename, image in images.items():
        path = folder / filename
        path.write_bytes(image)
        written.append(path)
    return written


def _cohort_png(application: EcrfApplication, result: DemoResult) -> bytes:
    """Patients by dose level on the trial's clinical calendar, SRC decisions as lines.

    Event timestamps of a simulation are all a few seconds apart, so the plot uses the
    clinical dates the demo kept: infusion (enrolment for a patient never infused).
    """
    from ecrf.reports.plots import cohort_plot

    escalation = application.escalation()
    points = []
    for slot in sorted(escalation.slots.values(), key=lambda s: (s.cohort, s.slot)):
        when = result.infused_on.get(slot.subject_id) or result.enrolled_on[slot.subject_id]
        points.append(
            {
                "when": datetime.combine(when, datetime.min.time()),
                "level": escalation.level(slot.dose_level).number,
                "outcome": slot.outcome,
            }
        )
    decisions = [
        {
            "at": datetime.combine(d.day, datetime.min.time()),
            "label": f"{d.number}: {d.action}" + (f" {d.dose_level}" if d.dose_level else ""),
        }
        for d in result.decisions
    ]
    title = f"{result.outcomes}: MTD {result.mtd or 'none'} (seed {result.seed})"
    return bytes(
        cohort_plot(
            points,
            [(level.number, f"{level.code}\n{level.label}") for level in escalation.levels],
            decisions,
            title,
            "date infused (enrolled, if never infused)",
        )
    )


# Printing ------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def print_progression(application: EcrfApplication, result: DemoResult) -> None:
    """Each SRC decision, the outcomes string, the recommendation and the MTD."""
    table = Table(title="Cohort progression (3+3, Safety Review Committee decisions)")
    for column in ("#", "SRC date", "outcomes", "recommended", "decided", "rule"):
        table.add_column(column, overflow="fold")
    for d in result.decisions:
        given = d.recommendation
        recommended = str(given.get("action", "")) + (
            f" {given['dose_level']}" if given.get("dose_level") else ""
        )
        decided = d.action + (f" {d.dose_level}" if d.dose_level else "")
        if not d.follows_recommendation:
            decided += " (differs)"
        table.add_row(
            str(d.number),
            d.day.isoformat(),
            d.outcomes,
            recommended,
            decided,
            str(given.get("rule", "")),
        )
    console.print(table)
    levels = Table(title="Dose levels")
    for column in ("dose", "per kg", "assigned", "infused", "evaluable", "DLT", "replaced"):
        levels.add_column(column)
    escalation = application.escalation()
    infused = frozenset(result.infused_on)
    for row in escalation.level_counts(infused):
        levels.add_row(
            row.dose_level,
            f"{row.dose_per_kg:.0e}",
            str(row.assigned),
            str(row.infused),
            str(row.evaluable),
            str(row.dlt),
            str(row.not_evaluable),
        )
    console.print(levels)
    advice = result.recommendation
    console.print(f"Outcomes: [bold]{result.outcomes}[/bold]")
    console.print(
        f"Recommendation: [bold]{advice.action}"
        + (f" {advice.dose_level}" if advice.dose_level else "")
        + f"[/bold] ({advice.rule})"
    )
    stopped = "study stopped" if result.stopped else "study not stopped"
    console.print(f"MTD: [bold]{result.mtd or 'none'}[/bold] ({stopped})")


def _rows_table(
    title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]
) -> Table:
    table = Table(title=title)
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_number(row.get(key)) for key, _ in columns))
    return table


def print_endpoints(tables: EndpointTables) -> None:
    """Safety, PK, MRD and RFS, as the report endpoints give them."""
    teae = tables["teae"].summary or {}
    levels = Table(title="Safety: TEAEs, days 0-28 (patients per dose level)")
    for column in ("dose", "treated", "any TEAE", "grade >= 3", "worst 1/2/3/4/5"):
        levels.add_column(column)
    for level in teae.get("dose_levels", []):
        worst = level.get("by_worst_grade", {})
        levels.add_row(
            level["dose_level"],
            str(level["treated"]),
            str(level["with_teae"]),
            str(level["grade_3_plus"]),
            "/".join(str(worst.get(g, 0)) for g in ("1", "2", "3", "4", "5")),
        )
    console.print(levels)
    console.print(
        _rows_table(
            "Safety: TEAEs by term (patients, grade >= 3)",
            (
                ("dose_level", "dose"),
                ("term", "term"),
                ("subjects", "patients"),
                ("events", "events"),
                ("worst_grade", "worst"),
                ("grade_3_plus", "grade >= 3"),
            ),
            teae.get("terms", []),
        )
    )
    console.print(
        _rows_table(
            "Safety: CRS and ICANS (ASTCT 2019), days 0-28",
            (
                ("subject_id", "subject"),
                ("dose_level", "dose"),
                ("crs_worst_grade", "CRS grade"),
                ("crs_onset_day", "onset day"),
                ("crs_duration_days", "days"),
                ("icans_worst_grade", "ICANS grade"),
                ("icans_onset_day", "onset day"),
                ("icans_duration_days", "days"),
            ),
            tables["crs_icans"].rows,
        )
    )
    dlt_rows = [
        {**row, "subjects_with_dlt": ", ".join(row["subjects_with_dlt"]) or "-"}
        for row in tables["dlt"].rows
    ]
    console.print(
        _rows_table(
            "Safety: DLTs (signed assessments)",
            (
                ("dose_level", "dose"),
                ("treated", "treated"),
                ("evaluable", "evaluable"),
                ("dlt", "DLT"),
                ("subjects_with_dlt", "subjects with a DLT"),
            ),
            dlt_rows,
        )
    )
    tests = tables["rcl_ada"].rows
    for test in ("rcl", "ada"):
        mine = [r for r in tests if r["test"] == test]
        positive = sum(1 for r in mine if r["result"] == "positive")
        console.print(f"{test.upper()}: {len(mine)} tests, {positive} positive")
    for name, table in tables.items():
        if not name.startswith("pk_"):
            continue
        summary = table.summary or {}
        console.print(
            _rows_table(
                f"PK ({summary.get('method')}, {summary.get('unit')}): NCA by dose level",
                (
                    ("dose_level", "dose"),
                    ("n", "n"),
                    ("cmax_geomean", "Cmax geo. mean"),
                    ("cmax_geocv", "CV%"),
                    ("auc_0_28_geomean", "AUC0-28 geo. mean"),
                    ("auc_0_28_geocv", "CV%"),
                ),
                summary.get("dose_levels", []),
            )
        )
    console.print(
        _rows_table(
            "Efficacy: MRD (ctDNA) and recurrence",
            (
                ("subject_id", "subject"),
                ("dose_level", "dose"),
                ("clearance_date", "ctDNA cleared"),
                ("molecular_relapse_date", "molecular relapse"),
                ("imaging_recurrence_date", "imaging recurrence"),
                ("recurrence_within_24m_of_resection", "recurrence <= 24 m"),
            ),
            tables["mrd"].rows,
        )
    )
    rfs = tables["rfs"]
    console.print(
        _rows_table(
            "Efficacy: recurrence-free survival from infusion",
            (
                ("subject_id", "subject"),
                ("dose_level", "dose"),
                ("time_months", "months"),
                ("event", "event"),
                ("event_type", "type"),
            ),
            rfs.rows,
        )
    )
    summary = rfs.summary or {}
    rate = summary.get("rfs_24m", {})
    events = sum(1 for r in rfs.rows if r["event"])
    console.print(
        f"2-year RFS (Kaplan-Meier, {len(rfs.rows)} patients, {events} events): "
        f"[bold]{_number(rate.get('estimate'))}[/bold] "
        f"(95% CI {_number(rate.get('lower'))} to {_number(rate.get('upper'))}); "
        f"median {_number(summary.get('median_months'))} months"
    )


def print_activity(result: DemoResult) -> None:
    """What the simulation did through the application."""
    done = ", ".join(f"{count} {what}" for what, count in sorted(result.activity.items()))
    console.print(
        f"Seed {result.seed}: clinical dates {result.start} to {result.end}; "
        f"{len(result.subjects)} subjects. {done}."
    )


def print_accounts(result: DemoResult) -> None:
    """The demo accounts and their shared password."""
    table = Table(title=f"Demo accounts (password for all: {result.password})")
    for column in ("username", "role", "name", "does"):
        table.add_column(column, overflow="fold")
    for account in result.accounts:
        table.add_row(account.username, ", ".join(account.roles), account.full_name, account.does)
    console.print(table)


# Commands ------------------------------------------------------------------------------


def demo(
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed gives the same trial.")
    ] = DEFAULT_SEED,
    plots: Annotated[Path, typer.Option(help="Folder for the PNG plots.")] = DEFAULT_PLOTS,
    database: Annotated[
        str | None,
        typer.Option(
            help="An empty store to fill (default: ECRF_DATABASE_URL, else a new temporary "
            "SQLite file)."
        ),
    ] = None,
) -> None:
    """Simulate the whole trial (seeded) and print its cohorts and endpoint tables."""
    url = database or os.environ.get("ECRF_DATABASE_URL") or None
    try:
        settings = demo_settings(url)
    except ValueError as error:
        console.print(f"[red]bad database URL:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(f"[bold]ecrf demo[/bold] (seed {seed}) into {describe(settings.database)}")
    application, result = simulate(settings, seed)
    try:
        print_progression(application, result)
        tables = endpoint_tables(application, settings)
        print_endpoints(tables)
        written = write_plots(application, result, tables, plots)
        # Seal the log as the server's ledger follower would, so `ecrf verify` has a seal.
        sealed = application.ledger.seal(reason="end of the demo simulation")
    finally:
        application.close()
    print_activity(result)
    if sealed is not None:
        console.print(f"Ledger sealed through position {sealed.position}.")
    console.print("Plots: " + ", ".join(str(path) for path in written))
    if settings.database.engine == "sqlite":
        console.print(
            f"Explore it: ECRF_DATABASE_URL={describe(settings.database)} "
            f"ECRF_DATA_DIR={settings.data_dir} ecrf serve, then log in at /docs as one of "
            f"{', '.join(a.username for a in DEMO_ACCOUNTS)} (password {DEMO_PASSWORD})."
        )


def fresh_demo_folder(parent: Path) -> Path:
    """A new, empty folder for one demo store under ``parent``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(100):
        folder = parent / (f"run-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder.resolve()
    raise RuntimeError(f"cannot create a new demo folder under {parent}")


def prepare_demo_server(
    seed: int | None, demo_dir: Path | None, demo_database: str | None, workers: int
) -> dict[str, str]:
    """Fill a fresh demo store for ``ecrf serve --demo``; return the environment to serve it.

    The store is ``demo_database`` (which must be empty) or a new SQLite file in a new
    folder under ``demo_dir``; the folder also holds the data directory (token secret,
    seal key). ECRF_DATABASE_URL is not used, so a real store is never touched.
    """
    folder = fresh_demo_folder(demo_dir or DEFAULT_DEMO_DIR)
    try:
        settings = demo_settings(demo_database, folder / "data")
    except ValueError as error:
        console.print(f"[red]bad database URL:[/red] {error}")
        raise typer.Exit(2) from None
    if workers > 1 and settings.database.engine == "sqlite":
        raise typer.BadParameter("several workers need PostgreSQL (--demo-database)")
    chosen = DEFAULT_SEED if seed is None else seed
    console.print(f"[bold]ecrf demo[/bold] (seed {chosen}): filling {describe(settings.database)}")
    application, result = simulate(settings, chosen)
    try:
        from projections.registry import build_runner

        # Tables of the read models and the seal key exist before any worker starts.
        build_runner(application, settings).engine.dispose()
        _ = application.ledger.key
    finally:
        application.close()
    print_activity(result)
    console.print(
        f"Outcomes [bold]{result.outcomes}[/bold], MTD [bold]{result.mtd or 'none'}[/bold]"
    )
    print_accounts(result)
    url = demo_database or f"sqlite:///{settings.database.sqlite_path}"
    return {"ECRF_DATABASE_URL": url, "ECRF_DATA_DIR": str(settings.data_dir)}
