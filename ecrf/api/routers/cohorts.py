"""Enrolment and dose escalation: slots, the 3+3 cohort state, and signed SRC decisions.

Enrolment and decisions load the DoseEscalation aggregate (they must see its latest
state); the cohort view and its plot read the DoseCohorts projection, caught up first so
that a client reads its own write, or replayed as it stood at ``as_of``.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from ecrf.api.deps import App, CurrentActor, Projections
from ecrf.api.models import (
    CohortPublic,
    CohortsPublic,
    DecisionPublic,
    DoseLevelPublic,
    EnrolmentPublic,
    EnrolmentStatePublic,
    RecommendationPublic,
    SlotPublic,
)
from ecrf.commands import DecideDose, EnrolSubject
from ecrf.domain.access import Action, Actor
from ecrf.domain.escalation import Decision
from ecrf.reports.plots import cohort_plot
from projections.dose_cohorts import CohortsReading, load_dose_cohorts

router = APIRouter(tags=["enrolment and dose escalation"])

AsOf = Annotated[
    datetime | None,
    Query(description="ISO 8601 instant: the cohorts exactly as they stood then (UTC if no zone)"),
]
PlotAxis = Annotated[
    Literal["assigned", "infused"],
    Query(description="x axis: when each patient was assigned a slot (default) or infused"),
]


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.post("/subjects/{subject_id}/enrolment", status_code=status.HTTP_201_CREATED)
def enrol_subject(
    application: App, actor: CurrentActor, subject_id: str, body: EnrolSubject | None = None
) -> EnrolmentPublic:
    """Enrol a consented, eligible subject in the next open slot (site staff, investigator)."""
    subject, slot, position = application.enrol_subject(actor, subject_id, body or EnrolSubject())
    return EnrolmentPublic(
        subject_id=subject.subject_id,
        status=subject.status,
        dose_level=slot.dose_level,
        slot=slot.slot,
        cohort=slot.cohort,
        position=position,
    )


@router.get("/cohorts")
def get_cohorts(
    application: App,
    runner: Projections,
    actor: CurrentActor,
    response: Response,
    as_of: AsOf = None,
) -> CohortsPublic:
    """Dose levels, outcomes in 3+3 notation, the recommendation, and SRC decisions."""
    actor.role_for(Action.READ_CLINICAL)
    moment = _utc(as_of)
    reading = load_dose_cohorts(runner, application.forms.study, as_of=moment)
    response.headers["X-Log-Position"] = str(reading.position)
    return cohorts_public(reading, actor, moment)


@router.post("/cohorts/decisions", status_code=status.HTTP_201_CREATED)
def decide_dose(application: App, actor: CurrentActor, body: DecideDose) -> DecisionPublic:
    """Record a signed dose-escalation decision (safety reviewer, own password re-entered)."""
    _, decision, position = application.decide_dose(actor, body)
    return decision_public(decision, position)


@router.get(
    "/cohorts/plot.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG image"}},
)
def cohorts_plot(
    application: App,
    runner: Projections,
    actor: CurrentActor,
    as_of: AsOf = None,
    x: PlotAxis = "assigned",
) -> Response:
    """Patients per dose level over time, DLTs and non-evaluable patients marked (PNG)."""
    actor.role_for(Action.READ_CLINICAL)
    reading = load_dose_cohorts(runner, application.forms.study, as_of=_utc(as_of))
    return Response(
        plot_png(reading, x),
        media_type="image/png",
        headers={"X-Log-Position": str(reading.position)},
    )


def decision_public(decision: Decision, position: int | None = None) -> DecisionPublic:
    """A decision as the API shows it."""
    fields = asdict(decision)
    fields["recommendation"] = RecommendationPublic(**decision.recommendation)
    return DecisionPublic(**fields, position=position)


def cohorts_public(
    reading: CohortsReading, actor: Actor, as_of: datetime | None = None
) -> CohortsPublic:
    """The escalation state as the API shows it; other sites' subject ids are hidden."""
    escalation = reading.state
    infused = reading.infused
    advice = escalation.recommendation()
    slots = sorted(escalation.slots.values(), key=lambda s: (s.cohort, s.slot))

    def visible(subject_id: str) -> bool:
        site = reading.site_of(subject_id)
        return site is not None and actor.sees_site(site, Action.READ_CLINICAL)

    return CohortsPublic(
        levels=[DoseLevelPublic(**asdict(row)) for row in escalation.level_counts(infused)],
        recommendation=RecommendationPublic(**advice.as_dict()),
        mtd=escalation.mtd,
        decisions=[decision_public(d) for d in escalation.decisions],
        outcomes=escalation.outcomes(),
        stopped=escalation.stopped,
        enrolment=EnrolmentStatePublic(**asdict(escalation.enrolment())),
        cohorts=[
            CohortPublic(
                number=c.number,
                dose_level=c.dose_level,
                slots=c.capacity,
                opened_at=c.opened_at,
                decision=c.decision,
            )
            for c in escalation.cohorts
        ],
        slots=[
            SlotPublic(
                slot=s.slot,
                cohort=s.cohort,
                dose_level=s.dose_level,
                subject_id=s.subject_id if visible(s.subject_id) else None,
                outcome=s.outcome,
                infused=s.subject_id in infused,
                assigned_at=s.assigned_at,
                infused_at=reading.infused_at(s.subject_id),
            )
            for s in slots
        ],
        position=reading.position,
        as_of=as_of,
    )


def plot_png(reading: CohortsReading, x: str = "assigned") -> bytes:
    """Each patient at their dose level and date, by DLT outcome; decisions as lines."""
    escalation = reading.state
    points = []
    for slot in sorted(escalation.slots.values(), key=lambda s: (s.cohort, s.slot)):
        when = reading.infused_at(slot.subject_id) if x == "infused" else None
        points.append(
            {
                # Not infused yet: placed where it was assigned (its outcome is pending).
                "when": when or slot.assigned_at,
                "level": escalation.level(slot.dose_level).number,
                "outcome": slot.outcome,
            }
        )
    decisions = [
        {
            "at": d.at,
            "label": f"{d.number}: {d.action}" + (f" {d.dose_level}" if d.dose_level else ""),
        }
        for d in escalation.decisions
    ]
    advice = escalation.recommendation()
    title = (
        f"{escalation.outcomes() or 'no evaluated patients'}: recommendation {advice.action}"
        + (f" {advice.dose_level}" if advice.dose_level else "")
        + (f"; stopped, MTD {escalation.mtd or 'none'}" if escalation.stopped else "")
    )
    return cohort_plot(
        points,
        [(level.number, f"{level.code}\n{level.label}") for level in escalation.levels],
        decisions,
        title,
        "date infused (assigned if not yet infused)" if x == "infused" else "date assigned",
    )
