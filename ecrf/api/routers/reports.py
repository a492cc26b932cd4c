"""Reports: patient timelines, 28-day safety tables, PK, MRD and RFS (JSON, CSV, PNG).

Each report reads one projection's facts, caught up first so a caller sees its own writes,
or replayed from the log as it stood at ``as_of``; the projection's pure report function
turns them into rows. Site-bound roles see only their sites' subjects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from ecrf.api.deps import App, CurrentActor, Projections
from ecrf.api.report_models import (
    CrsIcansReport,
    DltReport,
    MrdReport,
    PkReport,
    ProjectionStatus,
    RclAdaReport,
    RfsReport,
    TeaeReport,
    TimelineReport,
)
from ecrf.domain.access import SITE_BOUND_ROLES, Action, Actor
from ecrf.domain.errors import InvalidInputError, NotFoundError
from ecrf.reports.plots import km_plot, pk_plot
from ecrf.reports.tables import to_csv
from projections.facts import ROWS, ReportTable, SubjectFacts
from projections.mrd import FORMS as MRD_FORMS
from projections.mrd import mrd_report
from projections.pk import FORMS as PK_FORMS
from projections.pk import pk_methods, pk_report
from projections.reading import load_facts
from projections.rfs import FORMS as RFS_FORMS
from projections.rfs import rfs_report
from projections.runner import ProjectionRunner
from projections.safety import FORMS as SAFETY_FORMS
from projections.safety import (
    crs_icans_report,
    dlt_report,
    rcl_ada_report,
    teae_report,
)
from projections.timeline import FORMS as TIMELINE_FORMS
from projections.timeline import timeline_report

router = APIRouter(tags=["reports"])

AsOf = Annotated[
    datetime | None,
    Query(description="ISO 8601 instant: the report exactly as it stood then (UTC if no zone)"),
]
Format = Annotated[
    Literal["json", "csv"],
    Query(alias="format", description="json (default) or csv (one table: see ``table``)"),
]
TableName = Annotated[
    str,
    Query(
        alias="table",
        description="The table ?format=csv writes: rows (default) or one of the summary's "
        "tables (dose_levels, terms, curve: see the report); JSON carries them all",
    ),
]
Method = Annotated[
    str | None, Query(description="PK assay method (flow or qpcr); the first one by default")
]
CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "JSON, or one table (`table`) as CSV"}
}
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG image"}
}


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _visible_sites(actor: Actor, action: Action = Action.READ_REPORTS) -> tuple[str, ...] | None:
    """The sites whose subjects the caller may see for ``action`` (None: every site)."""
    role = actor.role_for(action)
    return actor.sites if role in SITE_BOUND_ROLES else None


def _facts(
    runner: ProjectionRunner, actor: Actor, forms: frozenset[str], as_of: datetime | None
) -> tuple[list[SubjectFacts], int]:
    return load_facts(runner, forms, as_of=_utc(as_of), sites=_visible_sites(actor))


def _respond(
    table: ReportTable,
    position: int,
    as_of: datetime | None,
    fmt: str,
    filename: str,
    extra: Mapping[str, Any] | None = None,
    name: str = ROWS,
) -> Response:
    names = table.table_names()
    if name not in names:
        raise InvalidInputError.single(
            "/table", f"unknown table {name!r}; this report has: {', '.join(names)}"
        )
    headers = {"X-Log-Position": str(position)}
    if fmt == "csv":
        columns, rows = table.table(name)
        suffix = "" if name == ROWS else f"-{name}"
        headers["Content-Disposition"] = f'attachment; filename="{filename}{suffix}.csv"'
        return Response(to_csv(columns, rows), media_type="text/csv", headers=headers)
    moment = _utc(as_of)
    body: dict[str, Any] = {
        "position": position,
        "as_of": moment.isoformat().replace("+00:00", "Z") if moment else None,
        **(extra or {}),
        "rows": table.rows,
    }
    if table.summary is not None:
        body["summary"] = table.summary
    return JSONResponse(body, headers=headers)


def _pk_method(study: Mapping[str, Any], method: str | None) -> str:
    methods = pk_methods(study)
    if method is None and methods:
        return methods[0]
    if method not in methods:
        raise InvalidInputError.single(
            "/method", f"unknown PK method {method!r}; use one of: {', '.join(methods)}"
        )
    return method


def _study_report(
    name: str,
    path: str,
    model: type[Any],
    forms: frozenset[str],
    build: Callable[[list[SubjectFacts], Mapping[str, Any]], ReportTable],
    description: str,
) -> None:
    """Route a whole-study report: its facts, as they are or at ``as_of``, through ``build``.

    The safety and efficacy tables differ only in these arguments; the route keeps the
    function name it was declared with before (``name``), so its operation id is unchanged.
    """

    filename = path.rsplit("/", 1)[-1]

    def report(
        application: App,
        runner: Projections,
        actor: CurrentActor,
        as_of: AsOf = None,
        fmt: Format = "json",
        table: TableName = ROWS,
    ) -> Response:
        facts, position = _facts(runner, actor, forms, as_of)
        built = build(facts, application.forms.study)
        return _respond(built, position, as_of, fmt, filename, name=table)

    router.add_api_route(
        path,
        report,
        methods=["GET"],
        name=name,
        description=description,
        response_model=model,
        responses=CSV,
    )


@router.get(
    "/subjects/{subject_id}/timeline",
    response_model=TimelineReport,
    responses=CSV,
    tags=["subjects"],
)
def timeline(
    runner: Projections,
    actor: CurrentActor,
    application: App,
    subject_id: str,
    as_of: AsOf = None,
    fmt: Format = "json",
    name: TableName = ROWS,
) -> Response:
    """A subject's clinical course: date, study day (day 0 = infusion) and what happened."""
    sites = _visible_sites(actor, Action.READ_CASEBOOK)  # subject-level data, as a casebook
    facts, position = load_facts(runner, TIMELINE_FORMS, sites=sites, subject_id=subject_id)
    if not facts:
        raise NotFoundError("subject not found")
    if as_of is not None:
        facts, position = load_facts(
            runner, TIMELINE_FORMS, as_of=_utc(as_of), sites=sites, subject_id=subject_id
        )
        if not facts:
            raise NotFoundError(f"subject {subject_id} did not exist at {as_of.isoformat()}")
    table = timeline_report(facts[0], application.forms.study)
    header = table.summary
    return _respond(replace(table, summary=None), position, as_of, fmt, "timeline", header, name)


_study_report(
    "teae",
    "/reports/safety/teae",
    TeaeReport,
    SAFETY_FORMS,
    teae_report,
    "Treatment-emergent AEs in days 0-28, per subject; summary per dose level and term.",
)


_study_report(
    "crs_icans",
    "/reports/safety/crs-icans",
    CrsIcansReport,
    SAFETY_FORMS,
    crs_icans_report,
    "CRS and ICANS per treated subject: worst grade, onset day, duration (days 0-28).",
)


_study_report(
    "dlt",
    "/reports/safety/dlt",
    DltReport,
    SAFETY_FORMS,
    dlt_report,
    "Per dose level: treated, evaluable and DLT counts from signed DLT assessments.",
)


_study_report(
    "rcl_ada",
    "/reports/safety/rcl-ada",
    RclAdaReport,
    SAFETY_FORMS,
    rcl_ada_report,
    "Every RCL and ADA test result.",
)


@router.get("/reports/pk", response_model=PkReport, responses=CSV)
def pk(
    application: App,
    runner: Projections,
    actor: CurrentActor,
    method: Method = None,
    as_of: AsOf = None,
    fmt: Format = "json",
    name: TableName = ROWS,
) -> Response:
    """NCA per subject (Cmax, Tmax, Tlast, AUClast, AUC0-28); geometric summaries by dose."""
    study = application.forms.study
    chosen = _pk_method(study, method)
    facts, position = _facts(runner, actor, PK_FORMS, as_of)
    table = pk_report(facts, study, chosen)
    return _respond(table, position, as_of, fmt, f"pk-{chosen}", name=name)


@router.get("/reports/pk/plot.png", response_class=Response, responses=PNG)
def pk_png(
    application: App,
    runner: Projections,
    actor: CurrentActor,
    method: Method = None,
    as_of: AsOf = None,
) -> Response:
    """PK profiles per dose level on a log scale."""
    study = application.forms.study
    chosen = _pk_method(study, method)
    facts, position = _facts(runner, actor, PK_FORMS, as_of)
    table = pk_report(facts, study, chosen)
    summary = table.summary or {}
    levels = [level["dose_level"] for level in summary.get("dose_levels", [])]
    image = pk_plot(table.rows, levels, chosen, summary.get("unit"))
    return Response(image, media_type="image/png", headers={"X-Log-Position": str(position)})


_study_report(
    "mrd",
    "/reports/efficacy/mrd",
    MrdReport,
    MRD_FORMS,
    mrd_report,
    "ctDNA course, clearance, molecular relapse and imaging recurrence per subject.",
)


_study_report(
    "rfs",
    "/reports/efficacy/rfs",
    RfsReport,
    RFS_FORMS,
    rfs_report,
    "RFS time and event per treated subject; Kaplan-Meier curve and 24-month rate.",
)


@router.get("/reports/efficacy/rfs/plot.png", response_class=Response, responses=PNG)
def rfs_png(
    application: App,
    runner: Projections,
    actor: CurrentActor,
    as_of: AsOf = None,
) -> Response:
    """The Kaplan-Meier RFS curve with its 95% band and numbers at risk."""
    facts, position = _facts(runner, actor, RFS_FORMS, as_of)
    table = rfs_report(facts, application.forms.study)
    summary = table.summary or {}
    image = km_plot(table.rows, summary.get("curve", []), summary.get("horizon_months", 24.0))
    return Response(image, media_type="image/png", headers={"X-Log-Position": str(position)})


@router.get("/reports/projections")
def projection_status(runner: Projections, actor: CurrentActor) -> list[ProjectionStatus]:
    """Each read model's log position and how far it lags the log."""
    actor.role_for(Action.READ_REPORTS)
    return [ProjectionStatus.model_validate(item) for item in runner.status()]
