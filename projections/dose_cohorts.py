"""DoseCohorts: the 3+3 state (levels, cohorts, slots, outcomes, halts, SRC decisions).

The rows mirror the DoseEscalation aggregate's state event by event: a study row with the
settings, one row per dose level (with the reason it is halted, if it is), per cohort, per
slot (assigned when and by whom, its DLT outcome and the signed assessment behind it) and
per decision (with the recommendation it was given). Infusions come from the casebooks:
the projection also keeps each subject and its live cart_infusion entries, as the other
clinical projections keep their facts (``projections/facts.py``), so a slot's infusion
instant is read from the entry that records it and follows its corrections and voids.

Reading rebuilds the aggregate's plain state from the rows and reads it through the same
rules (``EscalationRules``): the recommendation, the enrolment state and the level counts
are never stored, so they cannot disagree with what enrolment and decisions are checked
against. Enrolment and decisions themselves always load the aggregate; this is for reading.
Before the first enrolment the escalation has no events yet, and the state is the study
definition's plan (cohort 1 open at the starting dose).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import singledispatchmethod
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
    update,
)

from ecrf.clinical.escalation import COHORT_SIZE
from ecrf.clinical.values import study_zone
from ecrf.domain.escalation import (
    Cohort,
    Decision,
    DoseEscalation,
    DoseLevel,
    EscalationSettings,
    EscalationState,
    Slot,
    SlotState,
    escalation_plan,
    halt_reason,
)
from projections.as_of import replay_as_of
from projections.facts import (
    EntryFacts,
    SubjectFacts,
    fact_tables,
    infusion_of,
    read_facts,
    snapshot,
    tracked_position,
)
from projections.runner import ProjectionRunner

metadata = MetaData()
tables = fact_tables("dose_cohorts", metadata)

# Instants are ISO 8601 text, as in facts.py: exact on both backends.
_INSTANT = 40

studies = Table(
    "dose_cohorts_study",
    metadata,
    Column("stream", String(36), primary_key=True),
    Column("study_id", String(64), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("started_at", String(_INSTANT), nullable=False),
    Column("position", BigInteger, nullable=False),
)
levels = Table(
    "dose_cohorts_levels",
    metadata,
    Column("dose_level", String(16), primary_key=True),
    Column("number", Integer, nullable=False, unique=True),
    # JSON keeps an integer dose an integer (the API shows 1000000, not 1000000.0).
    Column("dose_per_kg", JSON, nullable=False),
    Column("label", String(200), nullable=False),
    Column("halted", String(200)),
    Column("position", BigInteger, nullable=False),
)
cohorts = Table(
    "dose_cohorts_cohorts",
    metadata,
    Column("number", Integer, primary_key=True),
    Column("dose_level", String(16), nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("opened_at", String(_INSTANT), nullable=False),
    Column("decision", Integer),
    Column("position", BigInteger, nullable=False),
)
slots = Table(
    "dose_cohorts_slots",
    metadata,
    Column("slot", Integer, primary_key=True),
    Column("subject_id", String(64), nullable=False, unique=True),
    Column("dose_level", String(16), nullable=False, index=True),
    Column("cohort", Integer, nullable=False),
    Column("assigned_at", String(_INSTANT), nullable=False),
    Column("assigned_by", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("dlt", Boolean, nullable=False),
    Column("entry_id", String(64)),
    Column("revision", Integer),
    Column("data_hash", String(64)),
    Column("outcome_at", String(_INSTANT)),
    Column("note", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
)
decisions = Table(
    "dose_cohorts_decisions",
    metadata,
    Column("number", Integer, primary_key=True),
    Column("action", String(16), nullable=False),
    Column("dose_level", String(16)),
    Column("rationale", Text, nullable=False),
    Column("meaning", String(32), nullable=False),
    Column("statement", Text, nullable=False),
    Column("recommendation", JSON, nullable=False),
    Column("outcomes", Text, nullable=False),
    Column("follows_recommendation", Boolean, nullable=False),
    Column("decision_hash", String(64), nullable=False),
    Column("opens", JSON),
    Column("signer", String(64), nullable=False),
    Column("signer_name", String(200), nullable=False),
    Column("at", String(_INSTANT), nullable=False),
    Column("position", BigInteger, nullable=False),
)


class DoseCohorts(EntryFacts):
    """The dose-escalation state, and the infusions of the subjects in its slots."""

    name = "dose_cohorts"
    metadata = metadata
    tables = tables
    forms = frozenset({"cart_infusion"})

    @singledispatchmethod
    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """Casebook events go to the facts kept for infusions (``EntryFacts``)."""
        super().process(domain_event, conn, position)

    @process.register
    def started(
        self, domain_event: DoseEscalation.Started, conn: Connection, position: int
    ) -> None:
        """The study's settings and dose levels; cohort 1 opens at the starting dose."""
        at = domain_event.timestamp.isoformat()
        conn.execute(
            studies.insert().values(
                stream=str(domain_event.originator_id),
                study_id=domain_event.study_id,
                settings=domain_event.settings,
                started_at=at,
                position=position,
            )
        )
        for level in domain_event.dose_levels:
            conn.execute(
                levels.insert().values(
                    dose_level=level["dose_level"],
                    number=int(level["number"]),
                    dose_per_kg=level["dose_per_kg"],
                    label=level["label"],
                    halted=None,
                    position=position,
                )
            )
        settings = EscalationSettings(**domain_event.settings)
        conn.execute(
            cohorts.insert().values(
                number=1,
                dose_level=settings.starting_dose_level,
                capacity=COHORT_SIZE,
                opened_at=at,
                decision=None,
                position=position,
            )
        )

    @process.register
    def slot_assigned(
        self, domain_event: DoseEscalation.SlotAssigned, conn: Connection, position: int
    ) -> None:
        """A subject holds a slot at a dose level in a cohort; its outcome is pending."""
        conn.execute(
            slots.insert().values(
                slot=domain_event.slot,
                subject_id=domain_event.subject_id,
                dose_level=domain_event.dose_level,
                cohort=domain_event.cohort,
                assigned_at=domain_event.timestamp.isoformat(),
                assigned_by=str(domain_event.audit.get("user", "")),
                state=SlotState.PENDING,
                dlt=False,
                entry_id=None,
                revision=None,
                data_hash=None,
                outcome_at=None,
                note="",
                position=position,
            )
        )

    @process.register
    def outcome_recorded(
        self, domain_event: DoseEscalation.OutcomeRecorded, conn: Connection, position: int
    ) -> None:
        """A signed assessment made the slot evaluable, with or without a DLT."""
        self._outcome(conn, domain_event, position, SlotState.EVALUATED, domain_event.dlt, note="")

    @process.register
    def slot_released(
        self, domain_event: DoseEscalation.SlotReleased, conn: Connection, position: int
    ) -> None:
        """Not evaluable: the slot no longer counts and a replacement opens."""
        self._outcome(
            conn, domain_event, position, SlotState.RELEASED, False, note=domain_event.reason
        )

    @process.register
    def outcome_withdrawn(
        self, domain_event: DoseEscalation.OutcomeWithdrawn, conn: Connection, position: int
    ) -> None:
        """The signed assessment behind the outcome changed: pending again."""
        conn.execute(
            update(slots)
            .where(slots.c.slot == domain_event.slot)
            .values(
                state=SlotState.PENDING,
                dlt=False,
                entry_id=None,
                revision=None,
                data_hash=None,
                outcome_at=domain_event.timestamp.isoformat(),
                note=domain_event.reason,
                position=position,
            )
        )

    @process.register
    def dose_halted(
        self, domain_event: DoseEscalation.DoseHalted, conn: Connection, position: int
    ) -> None:
        """Enrolment at the dose halted at its second DLT."""
        conn.execute(
            update(levels)
            .where(levels.c.dose_level == domain_event.dose_level)
            .values(
                halted=halt_reason(domain_event.dlts, domain_event.evaluated), position=position
            )
        )

    @process.register
    def decision_recorded(
        self, domain_event: DoseEscalation.DecisionRecorded, conn: Connection, position: int
    ) -> None:
        """A signed SRC decision; unless it stops, it opens the next cohort."""
        at = domain_event.timestamp.isoformat()
        conn.execute(
            decisions.insert().values(
                number=domain_event.number,
                action=domain_event.action,
                dose_level=domain_event.dose_level,
                rationale=domain_event.rationale,
                meaning=domain_event.meaning,
                statement=domain_event.statement,
                recommendation=domain_event.recommendation,
                outcomes=domain_event.outcomes,
                follows_recommendation=domain_event.follows_recommendation,
                decision_hash=domain_event.decision_hash,
                opens=domain_event.opens,
                signer=str(domain_event.audit.get("user", "")),
                signer_name=str(domain_event.audit.get("user_name", "")),
                at=at,
                position=position,
            )
        )
        opens = domain_event.opens
        if domain_event.action == "stop" or opens is None:
            return
        # As in the aggregate: treating at a halted dose (possible only below 2 DLTs)
        # lifts its halt.
        conn.execute(
            update(levels)
            .where(levels.c.dose_level == str(opens["dose_level"]))
            .values(halted=None, position=position)
        )
        conn.execute(
            cohorts.insert().values(
                number=int(opens["cohort"]),
                dose_level=str(opens["dose_level"]),
                capacity=int(opens["slots"]),
                opened_at=at,
                decision=domain_event.number,
                position=position,
            )
        )

    @staticmethod
    def _outcome(
        conn: Connection, domain_event: Any, position: int, state: str, dlt: bool, note: str
    ) -> None:
        conn.execute(
            update(slots)
            .where(slots.c.slot == domain_event.slot)
            .values(
                state=state,
                dlt=dlt,
                entry_id=domain_event.entry_id,
                revision=domain_event.revision,
                data_hash=domain_event.data_hash,
                outcome_at=domain_event.timestamp.isoformat(),
                note=note,
                position=position,
            )
        )


# Reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortsReading:
    """The escalation state as the projection holds it, with its patients' casebook facts."""

    state: EscalationState
    patients: Mapping[str, SubjectFacts]
    position: int
    zone: tzinfo

    @property
    def infused(self) -> frozenset[str]:
        """Subjects in a slot with a live cart_infusion entry."""
        return frozenset(
            slot.subject_id
            for slot in self.state.slots.values()
            if (facts := self.patients.get(slot.subject_id)) and facts.live("cart_infusion")
        )

    def infused_at(self, subject_id: str) -> datetime | None:
        """When a subject was infused (the first live cart_infusion entry), if known."""
        facts = self.patients.get(subject_id)
        infusion = infusion_of(facts, self.zone) if facts is not None else None
        return infusion.at if infusion is not None else None

    def site_of(self, subject_id: str) -> str | None:
        """The site of a subject in a slot (None if the projection has no casebook)."""
        facts = self.patients.get(subject_id)
        return facts.site if facts is not None else None


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value)


def read_state(conn: Connection, study: Mapping[str, Any], moment: datetime) -> EscalationState:
    """The escalation's state from the rows; the study's plan if nobody is enrolled yet."""
    started = conn.execute(select(studies)).mappings().first()
    if started is None:
        dose_levels, settings = escalation_plan(study)
        return EscalationState.planned(dose_levels, settings, moment)
    level_rows = conn.execute(select(levels).order_by(levels.c.number)).mappings().all()
    decided = [
        Decision(
            number=row["number"],
            action=row["action"],
            dose_level=row["dose_level"],
            rationale=row["rationale"],
            meaning=row["meaning"],
            statement=row["statement"],
            recommendation=row["recommendation"],
            outcomes=row["outcomes"],
            follows_recommendation=row["follows_recommendation"],
            decision_hash=row["decision_hash"],
            opens=row["opens"],
            signer=row["signer"],
            signer_name=row["signer_name"],
            at=_instant(row["at"]),
        )
        for row in conn.execute(select(decisions).order_by(decisions.c.number)).mappings()
    ]
    return EscalationState(
        levels=[
            DoseLevel(row["dose_level"], row["number"], row["dose_per_kg"], row["label"])
            for row in level_rows
        ],
        settings=EscalationSettings(**started["settings"]),
        slots={
            row["slot"]: Slot(
                slot=row["slot"],
                subject_id=row["subject_id"],
                dose_level=row["dose_level"],
                cohort=row["cohort"],
                assigned_at=_instant(row["assigned_at"]),
                assigned_by=row["assigned_by"],
                state=row["state"],
                dlt=bool(row["dlt"]),
                entry_id=row["entry_id"],
                revision=row["revision"],
                data_hash=row["data_hash"],
                outcome_at=_instant(row["outcome_at"]) if row["outcome_at"] else None,
                note=row["note"],
            )
            for row in conn.execute(select(slots).order_by(slots.c.slot)).mappings()
        },
        cohorts=[
            Cohort(
                number=row["number"],
                dose_level=row["dose_level"],
                capacity=row["capacity"],
                opened_at=_instant(row["opened_at"]),
                decision=row["decision"],
            )
            for row in conn.execute(select(cohorts).order_by(cohorts.c.number)).mappings()
        ],
        halted={row["dose_level"]: row["halted"] for row in level_rows if row["halted"]},
        decisions=decided,
        stopped=any(d.action == "stop" for d in decided),
    )


def _reading(
    conn: Connection, study: Mapping[str, Any], moment: datetime, position: int
) -> CohortsReading:
    state = read_state(conn, study, moment)
    enrolled = {slot.subject_id for slot in state.slots.values()}
    patients = {
        facts.subject_id: facts
        for facts in read_facts(conn, tables)
        if facts.subject_id in enrolled
    }
    return CohortsReading(state, patients, position, study_zone(study))


def load_dose_cohorts(
    runner: ProjectionRunner, study: Mapping[str, Any], *, as_of: datetime | None = None
) -> CohortsReading:
    """The cohorts now (caught up first, so a writer reads its own write) or as of ``as_of``."""
    projection = runner.projections[DoseCohorts.name]
    if as_of is None:
        runner.catch_up([DoseCohorts.name])
        with snapshot(runner.engine) as conn:
            position = tracked_position(conn, DoseCohorts.name)
            return _reading(conn, study, datetime.now(UTC), position)
    engine, position = replay_as_of(runner.recorder, runner.mapper, [projection], as_of)
    try:
        with engine.connect() as conn:
            return _reading(conn, study, as_of, position)
    finally:
        engine.dispose()
