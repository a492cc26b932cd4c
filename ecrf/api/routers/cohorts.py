"""Enrolment and dose escalation: slots, the 3+3 cohort state, and signed SRC decisions."""

from __future__ import annotations

import io
from dataclasses import asdict
from itertools import pairwise

from fastapi import APIRouter, Response, status

from ecrf.api.deps import App, CurrentActor
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
from ecrf.domain.escalation import Decision, EscalationSnapshot

router = APIRouter(tags=["enrolment and dose escalation"])


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
def get_cohorts(application: App, actor: CurrentActor) -> CohortsPublic:
    """Dose levels, outcomes in 3+3 notation, the recommendation, and SRC decisions."""
    return cohorts_public(application.cohorts(actor))


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
def cohorts_plot(application: App, actor: CurrentActor) -> Response:
    """Patients per dose level in cohort order, DLTs marked (PNG)."""
    return Response(plot_png(application.cohorts(actor)), media_type="image/png")


def decision_public(decision: Decision, position: int | None = None) -> DecisionPublic:
    """A decision as the API shows it."""
    fields = asdict(decision)
    fields["recommendation"] = RecommendationPublic(**decision.recommendation)
    return DecisionPublic(**fields, position=position)


def cohorts_public(snapshot: EscalationSnapshot) -> CohortsPublic:
    """The escalation state as the API shows it."""
    escalation = snapshot.escalation
    advice = escalation.recommendation()
    slots = sorted(escalation.slots.values(), key=lambda s: (s.cohort, s.slot))
    return CohortsPublic(
        levels=[
            DoseLevelPublic(**asdict(row)) for row in escalation.level_counts(snapshot.infused)
        ],
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
                subject_id=s.subject_id if s.subject_id in snapshot.visible else None,
                outcome=s.outcome,
                infused=s.subject_id in snapshot.infused,
                assigned_at=s.assigned_at,
            )
            for s in slots
        ],
        position=snapshot.position,
    )


_MARKERS = {
    "N": {"marker": "o", "color": "#2e7d32", "label": "no DLT"},
    "T": {"marker": "X", "color": "#c62828", "label": "DLT"},
    "pending": {"marker": "o", "color": "#9e9e9e", "label": "pending", "fill": "none"},
    "not_evaluable": {"marker": "s", "color": "#616161", "label": "not evaluable", "fill": "none"},
}


def plot_png(snapshot: EscalationSnapshot) -> bytes:
    """Each patient in cohort order at their dose level, marked by DLT outcome."""
    escalation = snapshot.escalation
    slots = sorted(escalation.slots.values(), key=lambda s: (s.cohort, s.slot))
    from matplotlib.figure import Figure  # imported on use: it is slow to import

    figure = Figure(figsize=(9, 3.5), dpi=100)
    axes = figure.add_subplot()
    seen: set[str] = set()
    for x, slot in enumerate(slots, start=1):
        style = _MARKERS[slot.outcome]
        axes.scatter(
            [x],
            [escalation.level(slot.dose_level).number],
            marker=style["marker"],
            s=90,
            facecolors=style.get("fill", style["color"]),
            edgecolors=style["color"],
            label=None if slot.outcome in seen else style["label"],
        )
        seen.add(slot.outcome)
    for x, (previous, current) in enumerate(pairwise(slots), start=1):
        if previous.cohort != current.cohort:
            axes.axvline(x + 0.5, color="#e0e0e0", linewidth=1, zorder=0)
    axes.set_yticks([level.number for level in escalation.levels])
    axes.set_yticklabels([f"{level.code}\n{level.label}" for level in escalation.levels])
    axes.set_ylim(0.5, len(escalation.levels) + 0.5)
    axes.set_xlim(0.5, max(len(slots), 3) + 0.5)
    axes.set_xlabel("patient (cohort order)")
    advice = escalation.recommendation()
    axes.set_title(
        f"{escalation.outcomes() or 'no evaluated patients'}: recommendation {advice.action}"
        + (f" {advice.dose_level}" if advice.dose_level else ""),
        fontsize=10,
    )
    if seen:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
