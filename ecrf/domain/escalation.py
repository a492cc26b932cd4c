"""The DoseEscalation aggregate: the study's 3+3 state, in one stream per study.

It holds the dose levels, the slots (a subject assigned to a dose level in a cohort, with
a slot number), the DLT outcomes taken from signed dlt_assessment entries, halts, and the
Safety Review Committee's (SRC) signed decisions. The recommendation is the pure 3+3
engine of `ecrf.clinical.escalation` applied to the outcomes in the literature notation
("1NNN 2NT"); that engine is this module's one import from outside `ecrf.domain`, and it
is pure code like the domain itself.

The rules (PROTOCOL.md "3+3 dose escalation"), as this aggregate applies them:

* Cohorts. Cohort 1 opens at the starting dose level when the study starts. Every later
  cohort is opened by an SRC decision to escalate, expand, continue or de-escalate, and
  such a decision can only be recorded once the current cohort is complete (all its
  slots assigned and every outcome in) or its dose is halted, and no outcome is pending
  at a dose that is not halted. A cohort has 3 slots, fewer if its dose would otherwise
  pass 6 patients.
* Open slots = the cohort's slots minus the slots assigned in it that still count. A
  slot released because its patient is not evaluable no longer counts, so a replacement
  slot opens at the same dose. No slot is open while the study is stopped, the cohort's
  dose is halted, or the study holds its maximum number of (counting) subjects; a full
  cohort stays closed while outcomes are pending (the DLT window) and then until the SRC
  decides.
* Outcomes. Only a signed dlt_assessment counts: evaluable with a DLT is T, evaluable
  without is N, not evaluable releases the slot. A correction or void of the signed
  entry invalidates its signature; the outcome is then withdrawn (the patient counts as
  pending again, which also keeps the SRC from opening another cohort) until the entry
  is signed again, when the newly signed outcome is recorded.
* Halts. A dose halts the moment its second DLT is recorded, even mid-cohort. A halt
  stands (it is never lifted by a withdrawn outcome on its own); an SRC decision may
  reopen the dose only while it has fewer than 2 DLTs.
* Decisions. A decision is signed (the reviewer re-enters their password), records the
  recommendation and the outcomes at that moment, and one that differs from the
  recommendation needs a written justification of at least 20 characters. ``stop`` ends
  enrolment for good; its dose level is the MTD the committee declares (or none).
* What no justification allows (409): declaring an MTD with fewer evaluated patients
  than ``mtd_requires``, with 2 or more DLTs, with outcomes pending there, or above a
  halted or too-toxic dose; opening a cohort at a too-toxic dose, at a dose that already
  has 6 patients, or above a halted or too-toxic dose; escalating from a dose that is not
  cleared (0 DLTs in 3 or at most 1 in 6 evaluated); any decision after the stop. The
  committee may otherwise depart from the engine (be more cautious, stop early, stop
  without an MTD) with a justification, and the decision is flagged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate, event

from ecrf.clinical.escalation import (
    COHORT_SIZE,
    MAX_PER_DOSE,
    dose_outcomes_notation,
    three_plus_three,
)
from ecrf.domain.errors import ConflictError, InvalidInputError, NotFoundError
from ecrf.domain.ids import escalation_stream
from ecrf.domain.subject import Entry, Subject, data_hash

# Form ids fixed by the annotated-CRF contract (PROTOCOL.md "Key fields").
CONSENT_FORM = "informed_consent"
ELIGIBILITY_FORM = "eligibility"
INFUSION_FORM = "cart_infusion"
DLT_FORM = "dlt_assessment"

MIN_JUSTIFICATION = 20
"""Characters of written justification a decision that departs from the engine needs."""

DECISION_ACTIONS = ("escalate", "expand", "continue", "deescalate", "stop")
"""What the SRC may decide: the engine's actions."""

_TOO_TOXIC = 2
_REQUIRED_ELIGIBILITY = ("criteria_met", "ctdna_positive", "cea_positive")


class NoSlotError(ConflictError):
    """No enrolment slot is open; the message says why."""


class NotEligibleError(ConflictError):
    """The subject lacks consent or confirmed eligibility; the message lists what."""


class SlotState:
    """Where a slot's DLT outcome stands."""

    PENDING = "pending"
    EVALUATED = "evaluated"
    RELEASED = "released"


class LevelStatus:
    """A dose level is open (the current cohort's dose), halted, or closed."""

    OPEN = "open"
    HALTED = "halted"
    CLOSED = "closed"


@dataclass(frozen=True)
class DoseLevel:
    """One dose level of the study."""

    code: str
    number: int
    dose_per_kg: float
    label: str


@dataclass(frozen=True)
class EscalationSettings:
    """The study's escalation settings (forms/study.json ``settings.escalation``)."""

    allow_deescalation: bool = True
    mtd_requires: int = 6
    dlt_window_days: int = 28
    max_subjects: int = 18
    starting_dose_level: str = "DL1"


def escalation_plan(study: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dose levels and escalation settings of a study definition, checked, as plain data."""
    levels = sorted(study.get("dose_levels", []), key=lambda d: int(d["number"]))
    if [int(d["number"]) for d in levels] != list(range(1, len(levels) + 1)):
        raise ValueError("dose levels must be numbered 1, 2, 3, ... without gaps")
    dose_levels = [
        {
            "dose_level": str(d["dose_level"]),
            "number": int(d["number"]),
            "dose_per_kg": d["dose_per_kg"],
            "label": str(d.get("label", d["dose_level"])),
        }
        for d in levels
    ]
    raw = study.get("settings", {}).get("escalation", {})
    known = EscalationSettings.__dataclass_fields__
    settings = asdict(EscalationSettings(**{k: v for k, v in raw.items() if k in known}))
    if settings["starting_dose_level"] not in {d["dose_level"] for d in dose_levels}:
        raise ValueError(f"starting dose level {settings['starting_dose_level']!r} is unknown")
    if settings["mtd_requires"] not in (COHORT_SIZE, MAX_PER_DOSE):
        raise ValueError("mtd_requires must be 3 or 6")
    return dose_levels, settings


@dataclass
class Slot:
    """A subject's assignment to a dose level in a cohort, and its DLT outcome."""

    slot: int
    subject_id: str
    dose_level: str
    cohort: int
    assigned_at: datetime
    assigned_by: str
    state: str = SlotState.PENDING
    dlt: bool = False
    entry_id: str | None = None
    revision: int | None = None
    data_hash: str | None = None
    outcome_at: datetime | None = None
    note: str = ""

    @property
    def counts(self) -> bool:
        """Whether the slot counts towards its cohort (a released slot is replaced)."""
        return self.state != SlotState.RELEASED

    @property
    def outcome(self) -> str:
        """``N``, ``T``, ``pending`` or ``not_evaluable``."""
        if self.state == SlotState.EVALUATED:
            return "T" if self.dlt else "N"
        return "not_evaluable" if self.state == SlotState.RELEASED else "pending"


@dataclass
class Cohort:
    """A group of up to 3 slots at one dose, opened at the start or by a decision."""

    number: int
    dose_level: str
    capacity: int
    opened_at: datetime
    decision: int | None


@dataclass(frozen=True)
class Advice:
    """The 3+3 engine's recommendation in dose-level codes (for stop: the MTD, if any)."""

    action: str
    dose_level: str | None
    mtd: str | None
    rule: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as recorded in a decision event."""
        return asdict(self)


@dataclass
class Decision:
    """A signed SRC decision and what the engine recommended at that moment."""

    number: int
    action: str
    dose_level: str | None
    rationale: str
    meaning: str
    statement: str
    recommendation: dict[str, Any]
    outcomes: str
    follows_recommendation: bool
    decision_hash: str
    opens: dict[str, Any] | None
    signer: str
    signer_name: str
    at: datetime


@dataclass(frozen=True)
class Enrolment:
    """Whether a slot is open now, at which dose and cohort, and if not, why."""

    open: bool
    dose_level: str | None
    cohort: int | None
    open_slots: int
    reason: str


@dataclass(frozen=True)
class LevelCounts:
    """Patients at one dose level, by where their DLT outcome stands."""

    dose_level: str
    number: int
    dose_per_kg: float
    label: str
    assigned: int
    infused: int
    evaluable: int
    dlt: int
    pending: int
    not_evaluable: int
    open_slots: int
    status: str


@dataclass(frozen=True)
class SignedOutcome:
    """The DLT outcome of a subject's signed dlt_assessment entry."""

    entry_id: str
    revision: int
    data_hash: str
    evaluable: bool
    dlt: bool
    reason_not_evaluable: str


def signed_dlt_outcome(subject: Subject) -> SignedOutcome | None:
    """The outcome of the most recently signed live dlt_assessment with a valid signature.

    PROTOCOL counts a patient as evaluable only once infused: an assessment saying
    "evaluable" stays pending (None) until a live cart_infusion entry exists, while "not
    evaluable" counts at once (so a patient who leaves before infusion is replaced).
    """
    chosen: Entry | None = None
    chosen_at: datetime | None = None
    for entry in subject.live_entries(DLT_FORM):
        valid = [s.at for s in entry.signatures if entry.signature_valid(s)]
        if valid and (chosen_at is None or max(valid) >= chosen_at):
            chosen, chosen_at = entry, max(valid)
    if chosen is None:
        return None
    evaluable = chosen.data.get("evaluable") is True
    if evaluable and not subject.live_entries(INFUSION_FORM):
        return None
    return SignedOutcome(
        entry_id=chosen.entry_id,
        revision=chosen.revision,
        data_hash=data_hash(chosen.data),
        evaluable=evaluable,
        # The schema makes a DLT imply evaluable; a DLT always counts.
        dlt=evaluable and chosen.data.get("dlt") is True,
        reason_not_evaluable=str(chosen.data.get("reason_not_evaluable", "")),
    )


def enrolment_problems(subject: Subject, criteria: Callable[[Entry], Collection[str]]) -> list[str]:
    """Why a subject may not be enrolled yet: consent and confirmed eligibility.

    ``criteria`` names the fields of the eligibility entry's form version; every
    ``inc_*`` field must be recorded true and every ``exc_*`` field recorded false, so
    eligibility is affirmatively documented. Age and ECOG limits are hard checks of the
    form when ``criteria_met`` is true.
    """
    problems = []
    if not subject.live_entries(CONSENT_FORM):
        problems.append("no informed consent is recorded")
    entries = subject.live_entries(ELIGIBILITY_FORM)
    if not entries:
        problems.append("no eligibility assessment is recorded")
        return problems
    entry = entries[-1]
    for name in _REQUIRED_ELIGIBILITY:
        if entry.data.get(name) is not True:
            problems.append(f"eligibility {name} is not true")
    for name in sorted(criteria(entry)):
        if name.startswith("inc_") and entry.data.get(name) is not True:
            problems.append(f"inclusion criterion {name} is not recorded as met")
        elif name.startswith("exc_") and entry.data.get(name) is not False:
            problems.append(f"exclusion criterion {name} is not recorded as absent")
    return problems


def dose_levels_of(dose_levels: list[dict[str, Any]]) -> list[DoseLevel]:
    """Dose levels from their plain form (as ``escalation_plan`` and events carry them)."""
    return [
        DoseLevel(d["dose_level"], int(d["number"]), d["dose_per_kg"], d["label"])
        for d in sorted(dose_levels, key=lambda d: int(d["number"]))
    ]


def halt_reason(dlts: int, evaluated: int) -> str:
    """Why a dose is halted, as the cohort view and the refusals say it."""
    return f"{dlts} DLTs in {evaluated} evaluated patients"


def _canonical_hash(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


class EscalationRules:
    """The escalation's state read through PROTOCOL.md's rules.

    The aggregate and its read model (projections/dose_cohorts.py) hold the same plain
    state; both read it through these methods, so the cohort view cannot drift from the
    state that enrolment and decisions are checked against.
    """

    levels: list[DoseLevel]
    settings: EscalationSettings
    slots: dict[int, Slot]
    cohorts: list[Cohort]
    halted: dict[str, str]
    decisions: list[Decision]
    stopped: bool

    def level(self, code: str) -> DoseLevel:
        """A dose level by code, or NotFoundError."""
        for level in self.levels:
            if level.code == code:
                return level
        raise NotFoundError(f"unknown dose level {code!r}")

    def _code(self, number: int | None) -> str | None:
        return None if number is None else self.levels[number - 1].code

    @property
    def current_cohort(self) -> Cohort:
        """The newest cohort: the one enrolment fills."""
        return self.cohorts[-1]

    def slot_of(self, subject_id: str) -> Slot | None:
        """The slot a subject holds, if enrolled."""
        for slot in self.slots.values():
            if slot.subject_id == subject_id:
                return slot
        return None

    def slots_at(self, code: str) -> list[Slot]:
        """Every slot ever assigned at a dose level."""
        return [s for s in self.slots.values() if s.dose_level == code]

    def counting_at(self, code: str) -> int:
        """Patients at a dose who count (assigned and not released)."""
        return sum(1 for s in self.slots_at(code) if s.counts)

    def dlts_at(self, code: str) -> int:
        """DLTs recorded at a dose."""
        return sum(1 for s in self.slots_at(code) if s.outcome == "T")

    def patients(self) -> list[tuple[int, bool]]:
        """Evaluated patients as (dose number, dlt), by cohort then slot."""
        # Cohort order, not the order outcomes arrived: a late outcome of a halted
        # cohort stays in that cohort, so the engine still judges the latest dose.
        evaluated = sorted(
            (s for s in self.slots.values() if s.state == SlotState.EVALUATED),
            key=lambda s: (s.cohort, s.slot),
        )
        return [(self.level(s.dose_level).number, s.dlt) for s in evaluated]

    def outcomes(self) -> str:
        """The evaluated outcomes in the literature notation, e.g. ``1NNN 2NT``."""
        return dose_outcomes_notation(self.patients())

    def recommendation(self) -> Advice:
        """What the 3+3 engine recommends now, with the study's settings."""
        outcomes = self.outcomes()
        try:
            advice = three_plus_three(
                outcomes,
                n_doses=len(self.levels),
                allow_deescalation=self.settings.allow_deescalation,
                mtd_requires=self.settings.mtd_requires,
            )
        except ValueError as error:
            # Only reachable after re-adjudications overfill a dose; a person must look.
            return Advice(
                "hold",
                None,
                None,
                f"The 3+3 rule cannot be applied to {outcomes!r} ({error}); "
                "the Safety Review Committee must review.",
            )
        dose = advice.mtd if advice.stop else advice.next_dose
        return Advice(advice.action, self._code(dose), self._code(advice.mtd), advice.rule)

    @property
    def mtd(self) -> str | None:
        """The MTD: as the SRC declared it when stopping, else as the engine names it."""
        if self.stopped:
            return self.decisions[-1].dose_level
        return self.recommendation().mtd

    def level_status(self, code: str) -> str:
        """``halted`` (second DLT), ``open`` (the current cohort's dose) or ``closed``."""
        if code in self.halted:
            return LevelStatus.HALTED
        if not self.stopped and code == self.current_cohort.dose_level:
            return LevelStatus.OPEN
        return LevelStatus.CLOSED

    def level_counts(self, infused: Collection[str]) -> list[LevelCounts]:
        """Per dose level: assigned, infused (subject ids given), evaluable, DLT, pending."""
        enrolment = self.enrolment()
        rows = []
        for level in self.levels:
            slots = self.slots_at(level.code)
            rows.append(
                LevelCounts(
                    dose_level=level.code,
                    number=level.number,
                    dose_per_kg=level.dose_per_kg,
                    label=level.label,
                    assigned=len(slots),
                    infused=sum(1 for s in slots if s.subject_id in infused),
                    evaluable=sum(1 for s in slots if s.state == SlotState.EVALUATED),
                    dlt=sum(1 for s in slots if s.outcome == "T"),
                    pending=sum(1 for s in slots if s.state == SlotState.PENDING),
                    not_evaluable=sum(1 for s in slots if s.state == SlotState.RELEASED),
                    open_slots=enrolment.open_slots if enrolment.dose_level == level.code else 0,
                    status=self.level_status(level.code),
                )
            )
        return rows

    def _blocking_pending(self) -> list[Slot]:
        # Outcomes at a halted dose cannot change its verdict, so they do not block.
        return [
            s
            for s in self.slots.values()
            if s.state == SlotState.PENDING and s.dose_level not in self.halted
        ]

    def enrolment(self) -> Enrolment:
        """Whether a slot is open now and where; if not, the reason."""
        cohort = self.current_cohort
        code = cohort.dose_level

        def closed(reason: str) -> Enrolment:
            return Enrolment(False, None, None, 0, reason)

        if self.stopped:
            return closed(
                f"the study is stopped (Safety Review Committee decision "
                f"{self.decisions[-1].number}): no further enrolment"
            )
        counted = sum(1 for s in self.slots.values() if s.counts)
        if counted >= self.settings.max_subjects:
            return closed(
                f"max subjects reached: the study has enrolled its maximum of "
                f"{self.settings.max_subjects} subjects"
            )
        if code in self.halted:
            return closed(
                f"dose {code} is halted ({self.halted[code]}); enrolment waits for the "
                "Safety Review Committee decision"
            )
        members = [s for s in self.slots.values() if s.cohort == cohort.number and s.counts]
        free = min(cohort.capacity - len(members), self.settings.max_subjects - counted)
        if free > 0:
            return Enrolment(
                True,
                code,
                cohort.number,
                free,
                f"{free} of {cohort.capacity} slots open in cohort {cohort.number} at {code}",
            )
        pending = self._blocking_pending()
        if pending:
            return closed(
                f"cohort {cohort.number} at {code} is full ({len(members)} of "
                f"{cohort.capacity} slots assigned); DLT window pending: waiting for the "
                f"signed DLT assessment of {len(pending)} patient(s) (slots "
                f"{', '.join(str(s.slot) for s in pending)}; "
                f"{self.settings.dlt_window_days}-day window)"
            )
        return closed(
            f"cohort {cohort.number} at {code} is complete; awaiting the Safety Review "
            f"Committee decision (recommendation: {self.recommendation().rule})"
        )


@dataclass
class EscalationState(EscalationRules):
    """The escalation's state as plain data, as a read model rebuilds it from its rows."""

    levels: list[DoseLevel]
    settings: EscalationSettings
    slots: dict[int, Slot]
    cohorts: list[Cohort]
    halted: dict[str, str]
    decisions: list[Decision]
    stopped: bool

    @classmethod
    def planned(
        cls, dose_levels: list[dict[str, Any]], settings: dict[str, Any], opened_at: datetime
    ) -> EscalationState:
        """The state before the first enrolment: cohort 1 open at the starting dose."""
        escalation_settings = EscalationSettings(**settings)
        return cls(
            levels=dose_levels_of(dose_levels),
            settings=escalation_settings,
            slots={},
            cohorts=[
                Cohort(1, escalation_settings.starting_dose_level, COHORT_SIZE, opened_at, None)
            ],
            halted={},
            decisions=[],
            stopped=False,
        )


class DoseEscalation(Aggregate, EscalationRules):
    """The study's dose escalation: slots, outcomes, halts and signed decisions."""

    class Event(Aggregate.Event):
        """Base of the escalation's events: exposes the event time while it applies."""

        def mutate(self, aggregate: Any) -> Any:
            """Apply the event with ``aggregate.event_time`` set to this event's time."""
            # As in Subject: slots and decisions record when they happened.
            if aggregate is not None:
                aggregate.event_time = self.timestamp
            return super().mutate(aggregate)

    class Started(Aggregate.Created):
        """Escalation began, with the study's dose levels and settings; cohort 1 opens."""

        study_id: str
        dose_levels: list[dict[str, Any]]
        settings: dict[str, Any]
        audit: dict[str, Any]

    class SlotAssigned(Event):
        """A subject was given a slot at a dose level in a cohort (saved with enrolment)."""

        slot: int
        subject_id: str
        dose_level: str
        cohort: int
        audit: dict[str, Any]

    class OutcomeRecorded(Event):
        """A signed dlt_assessment made a slot evaluable, with or without a DLT."""

        slot: int
        subject_id: str
        dose_level: str
        dlt: bool
        entry_id: str
        revision: int
        data_hash: str
        audit: dict[str, Any]

    class SlotReleased(Event):
        """A signed dlt_assessment found the patient not evaluable; a replacement opens."""

        slot: int
        subject_id: str
        dose_level: str
        entry_id: str
        revision: int
        data_hash: str
        reason: str
        audit: dict[str, Any]

    class OutcomeWithdrawn(Event):
        """The signed dlt_assessment behind an outcome was changed or voided."""

        slot: int
        subject_id: str
        dose_level: str
        entry_id: str
        reason: str
        audit: dict[str, Any]

    class DoseHalted(Event):
        """Enrolment at a dose halted at its second DLT."""

        dose_level: str
        dlts: int
        evaluated: int
        rule: str
        audit: dict[str, Any]

    class DecisionRecorded(Event):
        """The SRC recorded a signed decision, with the recommendation it was given."""

        number: int
        action: str
        dose_level: str | None
        rationale: str
        meaning: str
        statement: str
        recommendation: dict[str, Any]
        outcomes: str
        follows_recommendation: bool
        decision_hash: str
        opens: dict[str, Any] | None
        audit: dict[str, Any]

    @staticmethod
    def create_id(study_id: str, **_: Any) -> UUID:
        """One escalation per study, so two first enrolments conflict on save."""
        return escalation_stream(study_id)

    @event(Started)
    def __init__(
        self,
        study_id: str,
        dose_levels: list[dict[str, Any]],
        settings: dict[str, Any],
        audit: dict[str, Any],
    ) -> None:
        self.study_id = study_id
        self.levels = dose_levels_of(dose_levels)
        self.settings = EscalationSettings(**settings)
        self.event_time: datetime = self.created_on
        self.slots = {}
        start = self.settings.starting_dose_level
        self.cohorts = [Cohort(1, start, COHORT_SIZE, self.created_on, None)]
        self.halted = {}
        self.decisions = []
        self.stopped = False

    # Commands ---------------------------------------------------------------------

    def assign_slot(self, subject_id: str, audit: dict[str, Any]) -> Slot:
        """Give a subject the next open slot, or raise NoSlotError saying why."""
        held = self.slot_of(subject_id)
        if held is not None:
            raise ConflictError(
                f"subject {subject_id} is already enrolled at {held.dose_level} (slot {held.slot})"
            )
        state = self.enrolment()
        if not state.open or state.dose_level is None or state.cohort is None:
            raise NoSlotError(f"no enrolment slot is open: {state.reason}")
        number = len(self.slots) + 1
        self._slot_assigned(number, subject_id, state.dose_level, state.cohort, audit)
        return self.slots[number]

    def reconcile_outcome(
        self, subject_id: str, signed: SignedOutcome | None, audit: dict[str, Any]
    ) -> bool:
        """Bring a slot in line with its subject's signed DLT assessment; True if changed."""
        slot = self.slot_of(subject_id)
        if slot is None:
            return False
        if signed is None:
            if slot.state == SlotState.PENDING:
                return False
            self._outcome_withdrawn(
                slot.slot,
                subject_id,
                slot.dose_level,
                slot.entry_id or "",
                f"the signed dlt_assessment {slot.entry_id} (revision {slot.revision}) was "
                "changed or voided, which invalidates its signature: the outcome is "
                "withdrawn until the assessment is signed again",
                audit,
            )
            return True
        source = (signed.entry_id, signed.revision, signed.data_hash)
        if slot.state != SlotState.PENDING and source == (
            slot.entry_id,
            slot.revision,
            slot.data_hash,
        ):
            return False
        if not signed.evaluable:
            self._slot_released(
                slot.slot,
                subject_id,
                slot.dose_level,
                *source,
                signed.reason_not_evaluable or "not evaluable for DLT",
                audit,
            )
            return True
        self._outcome_recorded(slot.slot, subject_id, slot.dose_level, signed.dlt, *source, audit)
        code = slot.dose_level
        dlts = self.dlts_at(code)
        if signed.dlt and dlts >= _TOO_TOXIC and code not in self.halted:
            evaluated = sum(1 for s in self.slots_at(code) if s.state == SlotState.EVALUATED)
            self._dose_halted(
                code,
                dlts,
                evaluated,
                f"{dlts} DLTs in {evaluated} evaluated patients at {code}: enrolment at "
                f"{code} halts at the second DLT",
                audit,
            )
        return True

    def decide(
        self,
        action: str,
        dose_level: str | None,
        rationale: str,
        meaning: str,
        statement: str,
        audit: dict[str, Any],
    ) -> Decision:
        """Record a signed SRC decision; it opens the next cohort unless it stops."""
        if action not in DECISION_ACTIONS:
            raise InvalidInputError.single("/action", f"use one of {', '.join(DECISION_ACTIONS)}")
        target = self._decision_level(action, dose_level)
        if self.stopped:
            raise ConflictError("the study is already stopped; no further decisions")
        opens = None
        if action == "stop":
            if target is not None:
                self._check_mtd(target)
        elif target is not None:
            self._check_cohort_decidable()
            self._check_direction(action, target)
            self._check_target(target)
            self._check_nothing_toxic_below(target, f"open {target.code}")
            if action == "escalate":
                self._check_cleared_for_escalation()
            opens = {
                "cohort": self.current_cohort.number + 1,
                "dose_level": target.code,
                "slots": min(COHORT_SIZE, MAX_PER_DOSE - self.counting_at(target.code)),
            }
        advice = self.recommendation()
        rationale = rationale.strip()
        follows = action == advice.action and dose_level == advice.dose_level
        if not follows and len(rationale) < MIN_JUSTIFICATION:
            recommended = advice.action + (f" {advice.dose_level}" if advice.dose_level else "")
            raise InvalidInputError.single(
                "/rationale",
                f"the decision differs from the recommendation ({recommended}): give a "
                f"written justification of at least {MIN_JUSTIFICATION} characters",
            )
        number = len(self.decisions) + 1
        recommendation = advice.as_dict()
        outcomes = self.outcomes()
        decision_hash = _canonical_hash(
            {
                "study_id": self.study_id,
                "number": number,
                "action": action,
                "dose_level": dose_level,
                "rationale": rationale,
                "recommendation": recommendation,
                "outcomes": outcomes,
                "meaning": meaning,
                "signer": audit.get("user", ""),
            }
        )
        self._decision_recorded(
            number,
            action,
            dose_level,
            rationale,
            meaning,
            statement,
            recommendation,
            outcomes,
            follows,
            decision_hash,
            opens,
            audit,
        )
        return self.decisions[-1]

    def _decision_level(self, action: str, dose_level: str | None) -> DoseLevel | None:
        if dose_level is None:
            if action != "stop":
                raise InvalidInputError.single(
                    "/dose_level", f"a decision to {action} names the dose level to treat at"
                )
            return None
        try:
            return self.level(dose_level)
        except NotFoundError:
            known = ", ".join(level.code for level in self.levels)
            raise InvalidInputError.single(
                "/dose_level", f"unknown dose level {dose_level!r}; use one of {known}"
            ) from None

    def _check_cohort_decidable(self) -> None:
        cohort = self.current_cohort
        members = [s for s in self.slots.values() if s.cohort == cohort.number and s.counts]
        if cohort.dose_level not in self.halted and len(members) < cohort.capacity:
            raise ConflictError(
                f"cohort {cohort.number} at {cohort.dose_level} is not complete "
                f"({len(members)} of {cohort.capacity} slots assigned); the next cohort is "
                "decided when its outcomes are in"
            )
        pending = self._blocking_pending()
        if pending:
            raise ConflictError(
                "DLT window pending: the outcome of slot(s) "
                f"{', '.join(str(s.slot) for s in pending)} is not signed yet; the next "
                "cohort is decided when every outcome is in"
            )

    def _check_direction(self, action: str, target: DoseLevel) -> None:
        here = self.level(self.current_cohort.dose_level)
        wrong = (
            (action == "escalate" and target.number != here.number + 1)
            or (action == "deescalate" and target.number >= here.number)
            or (action in ("expand", "continue") and target.number != here.number)
        )
        if action == "deescalate" and here.number == 1:
            raise InvalidInputError.single(
                "/dose_level",
                f"there is no dose level below {here.code} to de-escalate to "
                "(to end the study, decide to stop)",
            )
        if wrong:
            expected = {
                "escalate": "the next dose level up",
                "deescalate": "a lower dose level",
                "expand": "the current dose level",
                "continue": "the current dose level",
            }[action]
            raise InvalidInputError.single(
                "/dose_level",
                f"to {action} from {here.code} the dose level must be {expected}, "
                f"not {target.code}",
            )

    def _check_nothing_toxic_below(self, target: DoseLevel, doing: str) -> None:
        """Refuse a dose above a halted or too-toxic one: the 3+3 design never goes there."""
        for lower in self.levels[: target.number - 1]:
            dlts = self.dlts_at(lower.code)
            if lower.code in self.halted or dlts >= _TOO_TOXIC:
                why = self.halted.get(lower.code) or f"{dlts} DLTs"
                raise ConflictError(
                    f"cannot {doing}: it is above {lower.code}, which is "
                    f"{'halted' if lower.code in self.halted else 'too toxic'} ({why}); "
                    "no dose above a halted or too-toxic dose is treated or declared the MTD"
                )

    def _check_cleared_for_escalation(self) -> None:
        """Escalation needs the current dose cleared: 0 DLTs in 3, or at most 1 in 6."""
        here = self.current_cohort.dose_level
        evaluated = sum(1 for s in self.slots_at(here) if s.state == SlotState.EVALUATED)
        dlts = self.dlts_at(here)
        cleared = (evaluated >= COHORT_SIZE and dlts == 0) or (
            evaluated >= MAX_PER_DOSE and dlts < _TOO_TOXIC
        )
        if not cleared:
            raise ConflictError(
                f"cannot escalate from {here}: {dlts} DLT(s) in {evaluated} evaluated patients; "
                f"the 3+3 design escalates only after 0 DLTs in {COHORT_SIZE} or at most 1 in "
                f"{MAX_PER_DOSE} evaluated patients at the current dose"
            )

    def _check_mtd(self, target: DoseLevel) -> None:
        """A declared MTD: enough evaluated patients, at most 1 DLT, nothing pending there."""
        code = target.code
        evaluated = sum(1 for s in self.slots_at(code) if s.state == SlotState.EVALUATED)
        pending = sum(1 for s in self.slots_at(code) if s.state == SlotState.PENDING)
        dlts = self.dlts_at(code)
        needed = self.settings.mtd_requires
        refusal = f"{code} cannot be declared the MTD"
        if dlts >= _TOO_TOXIC:
            raise ConflictError(
                f"{refusal}: {dlts} DLTs in {evaluated} evaluated patients make it too toxic "
                "(the MTD has at most 1 DLT)"
            )
        if evaluated < needed:
            raise ConflictError(
                f"{refusal}: it has {evaluated} evaluated patient(s) and the study requires "
                f"{needed} (settings.escalation.mtd_requires)"
            )
        if pending:
            # With mtd_requires 3 a later cohort at the dose may still be in its window.
            raise ConflictError(
                f"{refusal}: the DLT outcome of {pending} patient(s) there is still pending"
            )
        self._check_nothing_toxic_below(target, f"declare {code} the MTD")

    def _check_target(self, target: DoseLevel) -> None:
        dlts = self.dlts_at(target.code)
        if dlts >= _TOO_TOXIC:
            raise ConflictError(
                f"dose {target.code} is halted: {dlts} DLTs make it too toxic to treat again"
            )
        if self.counting_at(target.code) >= MAX_PER_DOSE:
            raise ConflictError(
                f"dose {target.code} already has {MAX_PER_DOSE} patients, the most the "
                "3+3 design treats at a dose"
            )

    # Applying events ----------------------------------------------------------------

    @event(SlotAssigned)
    def _slot_assigned(
        self, slot: int, subject_id: str, dose_level: str, cohort: int, audit: dict[str, Any]
    ) -> None:
        self.slots[slot] = Slot(
            slot, subject_id, dose_level, cohort, self.event_time, str(audit.get("user", ""))
        )

    @event(OutcomeRecorded)
    def _outcome_recorded(
        self,
        slot: int,
        subject_id: str,
        dose_level: str,
        dlt: bool,
        entry_id: str,
        revision: int,
        data_hash: str,
        audit: dict[str, Any],
    ) -> None:
        self._set_outcome(slot, SlotState.EVALUATED, dlt, entry_id, revision, data_hash, "")

    @event(SlotReleased)
    def _slot_released(
        self,
        slot: int,
        subject_id: str,
        dose_level: str,
        entry_id: str,
        revision: int,
        data_hash: str,
        reason: str,
        audit: dict[str, Any],
    ) -> None:
        self._set_outcome(slot, SlotState.RELEASED, False, entry_id, revision, data_hash, reason)

    @event(OutcomeWithdrawn)
    def _outcome_withdrawn(
        self,
        slot: int,
        subject_id: str,
        dose_level: str,
        entry_id: str,
        reason: str,
        audit: dict[str, Any],
    ) -> None:
        self._set_outcome(slot, SlotState.PENDING, False, None, None, None, reason)

    def _set_outcome(
        self,
        number: int,
        state: str,
        dlt: bool,
        entry_id: str | None,
        revision: int | None,
        data_hash: str | None,
        note: str,
    ) -> None:
        slot = self.slots[number]
        slot.state, slot.dlt, slot.note = state, dlt, note
        slot.entry_id, slot.revision, slot.data_hash = entry_id, revision, data_hash
        slot.outcome_at = self.event_time

    @event(DoseHalted)
    def _dose_halted(
        self, dose_level: str, dlts: int, evaluated: int, rule: str, audit: dict[str, Any]
    ) -> None:
        self.halted[dose_level] = halt_reason(dlts, evaluated)

    @event(DecisionRecorded)
    def _decision_recorded(
        self,
        number: int,
        action: str,
        dose_level: str | None,
        rationale: str,
        meaning: str,
        statement: str,
        recommendation: dict[str, Any],
        outcomes: str,
        follows_recommendation: bool,
        decision_hash: str,
        opens: dict[str, Any] | None,
        audit: dict[str, Any],
    ) -> None:
        self.decisions.append(
            Decision(
                number=number,
                action=action,
                dose_level=dose_level,
                rationale=rationale,
                meaning=meaning,
                statement=statement,
                recommendation=recommendation,
                outcomes=outcomes,
                follows_recommendation=follows_recommendation,
                decision_hash=decision_hash,
                opens=opens,
                signer=str(audit.get("user", "")),
                signer_name=str(audit.get("user_name", "")),
                at=self.event_time,
            )
        )
        if action == "stop":
            self.stopped = True
        elif opens is not None:
            # A decision that treats at a halted dose (possible only below 2 DLTs, after
            # a re-adjudication) lifts its halt.
            self.halted.pop(opens["dose_level"], None)
            self.cohorts.append(
                Cohort(
                    int(opens["cohort"]),
                    str(opens["dose_level"]),
                    int(opens["slots"]),
                    self.event_time,
                    number,
                )
            )


@dataclass(frozen=True)
class EscalationSnapshot:
    """The escalation read with what casebooks add: who is infused, whom a reader may see."""

    escalation: DoseEscalation
    infused: frozenset[str]
    visible: frozenset[str]
    position: int
