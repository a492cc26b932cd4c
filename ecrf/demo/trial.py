"""The demo trial: a seeded simulation driven through the application's own commands.

The trial runs on a calendar of clinical dates that starts on a fixed day, so the same
seed always gives the same trial and the same clinical data; only the event timestamps
(real server time) and generated ids differ between runs. Events of the calendar are
processed in date order: screening, enrolment into the slot the 3+3 escalation opens,
leukapheresis, lymphodepletion, the infusion at the assigned dose, the visits of the
schedule in `forms/study.json`, adverse events as they start, worsen and resolve, the
signed DLT assessment at day 28, Safety Review Committee (SRC) meetings that follow the
engine's recommendation, monitoring (SDV and queries), and the end of study.

Everyone acts under their own account and role: the coordinator enters data, the
investigator confirms eligibility, adjudicates DLTs and signs, the monitor verifies and
queries, the data manager queries, the safety reviewer decides. A few data-quality
incidents are staged on fixed patients so that every kind of correction shows up.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from ecrf.application import EcrfApplication
from ecrf.commands import (
    AnswerQuery,
    CloseQuery,
    CorrectEntry,
    CreateUser,
    DecideDose,
    EnrolSubject,
    OpenQuery,
    RecordEntry,
    RegisterSubject,
    Sign,
    VerifySource,
    VoidEntry,
)
from ecrf.demo.defaults import (
    DEFAULT_SEED,
    DEMO_ACCOUNTS,
    DEMO_PASSWORD,
    SITE,
    STUDY_START,
    DemoAccount,
)
from ecrf.demo.patients import (
    CRS_TERM,
    AdverseEvent,
    Baseline,
    Chart,
    FormData,
    ScreeningChart,
    draw_baseline,
    draw_course,
)
from ecrf.domain.access import Actor
from ecrf.domain.errors import ConflictError
from ecrf.domain.escalation import Advice, DoseEscalation, NoSlotError, SlotState
from ecrf.domain.subject import Subject
from ecrf.domain.user import User

SRC_MEETING_DELAY = 3  # days from the last outcome a cohort needs to the SRC meeting

# Staged data-quality incidents, by screening number. Patient 1 is always infused (the
# product failure is staged on patient 2 or 3), patient 4 is the replacement, and
# patient 5 is the first of the second cohort.
INCIDENTS: Mapping[int, tuple[str, ...]] = {
    1: ("weight_typo", "ctdna_confirm"),
    4: ("crs_grade_mismatch", "duplicate_ae"),
    5: ("ae_date_typo", "dlt_readjudication"),
}

# Same-day order of the calendar: clinical work, then outcomes, then the SRC, then new
# patients.
_PATIENT_DAY, _FOLLOW_UP, _DECISION, _SCREENING, _ENROLMENT = range(5)


class StoreNotEmptyError(ConflictError):
    """The store already holds subjects or accounts: a demo is never mixed into them."""


def ensure_empty(application: EcrfApplication) -> None:
    """Refuse a store that already holds subjects or user accounts."""
    held = []
    for kind, what in ((Subject.Registered, "subjects"), (User.Created, "user accounts")):
        topic = f"{kind.__module__}:{kind.__qualname__}"
        if application.recorder.select_notifications(start=None, limit=1, topics=[topic]):
            held.append(what)
    if held:
        raise StoreNotEmptyError(
            f"the store already holds {' and '.join(held)}; the demo only writes into an "
            "empty store, so that it never mixes simulated patients with real data"
        )


@dataclass(frozen=True)
class DecisionRecord:
    """One SRC decision as the demo took it: when (clinical date) and on what advice."""

    number: int
    day: date
    outcomes: str
    recommendation: dict[str, Any]
    action: str
    dose_level: str | None
    follows_recommendation: bool


@dataclass(frozen=True)
class DemoStep:
    """Progress: the clinical date reached and what was just done."""

    day: date
    what: str
    outcomes: str
    commands: int


@dataclass
class DemoResult:
    """What the simulated trial did and how its dose escalation ended."""

    seed: int
    start: date
    end: date
    subjects: list[str]
    enrolled: list[str]
    decisions: list[DecisionRecord]
    outcomes: str
    recommendation: Advice
    mtd: str | None
    stopped: bool
    activity: Counter[str]
    enrolled_on: dict[str, date] = field(default_factory=dict)
    infused_on: dict[str, date] = field(default_factory=dict)
    accounts: tuple[DemoAccount, ...] = DEMO_ACCOUNTS
    password: str = DEMO_PASSWORD


@dataclass
class _Patient:
    """One simulated patient and what the trial has entered for them."""

    baseline: Baseline
    rng: random.Random
    subject_id: str
    chart: Chart | None = None
    entries: dict[str, str] = field(default_factory=dict)
    incidents: tuple[str, ...] = ()


def run_demo(
    application: EcrfApplication,
    seed: int = DEFAULT_SEED,
    progress: Callable[[DemoStep], None] | None = None,
) -> DemoResult:
    """Simulate the whole trial into an empty store; raise StoreNotEmptyError otherwise."""
    ensure_empty(application)
    return _Trial(application, seed, progress).run()


def awaiting_decision(escalation: DoseEscalation) -> bool:
    """Whether the current cohort is complete (or its dose halted) with every outcome in."""
    if escalation.stopped or escalation.enrolment().open:
        return False
    if any(
        s.state == SlotState.PENDING and s.dose_level not in escalation.halted
        for s in escalation.slots.values()
    ):
        return False
    cohort = escalation.current_cohort
    members = [s for s in escalation.slots.values() if s.cohort == cohort.number and s.counts]
    return len(members) >= cohort.capacity or cohort.dose_level in escalation.halted


class _Trial:
    """The calendar of the simulated trial and the commands each of its events issues."""

    def __init__(
        self,
        application: EcrfApplication,
        seed: int,
        progress: Callable[[DemoStep], None] | None,
    ) -> None:
        self.app = application
        self.seed = seed
        self.rng = random.Random(seed)
        self.progress = progress
        self.study = application.forms.study
        self.zone = ZoneInfo(str(self.study.get("timezone", "UTC")))
        self.visit_forms: dict[str, list[str]] = {
            v["code"]: list(v.get("forms", [])) for v in self.study.get("visits", [])
        }
        accounts = {a.username: a.actor for a in DEMO_ACCOUNTS}
        self.admin, self.crc, self.pi = accounts["admin"], accounts["crc"], accounts["pi"]
        self.monitor, self.dm = accounts["monitor"], accounts["datamanager"]
        self.safety = accounts["safety"]
        self.agenda: list[tuple[int, int, int, str, Callable[[date], None]]] = []
        self.order = itertools.count()
        self.today = STUDY_START
        self.patients: dict[int, _Patient] = {}
        self.screening = 0
        self.numbers = itertools.count(1)
        self.decision_due = False
        self.decisions: list[DecisionRecord] = []
        self.enrolled_on: dict[str, date] = {}
        self.infused_on: dict[str, date] = {}
        self.count: Counter[str] = Counter()
        self.outcomes = ""  # the escalation's outcomes string, as of the last outcome
        self.not_infused = self.rng.choice((2, 3))

    # The calendar ------------------------------------------------------------------

    def at(self, day: date, priority: int, what: str, action: Callable[[date], None]) -> None:
        """Put an action on the calendar."""
        heapq.heappush(self.agenda, (day.toordinal(), priority, next(self.order), what, action))

    def run(self) -> DemoResult:
        """Create the accounts, then process the calendar until nothing is left."""
        self._create_accounts()
        self._open_slots(STUDY_START)
        while self.agenda:
            ordinal, _, _, what, action = heapq.heappop(self.agenda)
            self.today = date.fromordinal(ordinal)
            action(self.today)
            if self.progress is not None:
                self.progress(DemoStep(self.today, what, self.outcomes, self.count.total()))
        escalation = self.app.escalation()
        return DemoResult(
            seed=self.seed,
            start=STUDY_START,
            end=self.today,
            subjects=[p.subject_id for _, p in sorted(self.patients.items())],
            enrolled=[s.subject_id for _, s in sorted(escalation.slots.items())],
            decisions=list(self.decisions),
            outcomes=escalation.outcomes(),
            recommendation=escalation.recommendation(),
            mtd=escalation.mtd,
            stopped=escalation.stopped,
            activity=self._activity(),
            enrolled_on=dict(self.enrolled_on),
            infused_on=dict(self.infused_on),
        )

    def _create_accounts(self) -> None:
        admin = DEMO_ACCOUNTS[0]
        self.app.create_admin(admin.username, DEMO_PASSWORD, admin.full_name)
        for account in DEMO_ACCOUNTS[1:]:
            self.app.create_user(
                self.admin,
                CreateUser(
                    username=account.username,
                    full_name=account.full_name,
                    password=DEMO_PASSWORD,
                    roles=list(account.roles),
                    sites=list(account.sites),
                ),
            )
        self.count["accounts"] += len(DEMO_ACCOUNTS)

    def _activity(self) -> Counter[str]:
        activity = Counter(self.count)
        for patient in self.patients.values():
            subject = self.app.subject(self.monitor, patient.subject_id)
            activity["system queries"] += sum(1 for q in subject.queries.values() if q.system)
            activity["open queries"] += sum(
                1 for q in subject.queries.values() if q.state != "closed"
            )
        return activity

    # Slots, screening, enrolment -------------------------------------------------------

    def _open_slots(self, day: date) -> None:
        """Screen one new patient per open slot not already taken by someone in screening."""
        state = self.app.escalation().enrolment()
        free = state.open_slots if state.open else 0
        for index in range(free - self.screening):
            number = next(self.numbers)
            self.screening += 1
            consent = day + timedelta(days=1 + 6 * index + self.rng.randint(0, 3))
            seed = self.rng.getrandbits(64)
            self.at(consent, _SCREENING, f"screening {number}", partial(self._screen, number, seed))

    def _screen(self, number: int, seed: int, day: date) -> None:
        rng = random.Random(seed)
        baseline = draw_baseline(rng, number, day)
        subject, _ = self.app.register_subject(
            self.crc, RegisterSubject(site=SITE, screening_number=f"{number:03d}")
        )
        patient = _Patient(baseline, rng, subject.subject_id, incidents=INCIDENTS.get(number, ()))
        self.patients[number] = patient
        self.count["subjects registered"] += 1
        for form in ("informed_consent", "demographics", "surgery_history"):
            data = self._screening_chart(patient).screening_form(form)
            if data is None:
                continue
            if form == "demographics" and "weight_typo" in patient.incidents:
                # Typed 20 kg too high: the monitor finds it at source data verification.
                data["weight_kg"] = round(baseline.weight_kg + 20, 1)
            patient.entries[form] = self._record(patient, form, "SCR", data)
        self.at(
            baseline.eligibility_day,
            _PATIENT_DAY,
            f"{patient.subject_id} screening",
            partial(self._complete_screening, patient),
        )
        self.at(
            baseline.enrolment,
            _ENROLMENT,
            f"{patient.subject_id} enrolment",
            partial(self._enrol, patient),
        )

    def _screening_chart(self, patient: _Patient) -> ScreeningChart:
        """The patient's chart; before enrolment, one that writes the screening forms."""
        if patient.chart is not None:
            return patient.chart
        return ScreeningChart(patient.baseline, self.zone, patient.rng)

    def _complete_screening(self, patient: _Patient, day: date) -> None:
        chart = self._screening_chart(patient)
        later = [
            f
            for f in self.visit_forms.get("SCR", [])
            if f not in ("informed_consent", "demographics", "surgery_history", "eligibility")
        ]
        for form in [*later, "eligibility"]:
            data = chart.screening_form(form)
            if data is None:
                continue
            actor = self.pi if form == "eligibility" else self.crc
            patient.entries[form] = self._record(patient, form, "SCR", data, actor)
        self._sign(patient, patient.entries["eligibility"], "approval")

    def _enrol(self, patient: _Patient, day: date) -> None:
        self.screening -= 1
        try:
            subject, slot, _ = self.app.enrol_subject(
                self.crc, patient.subject_id, EnrolSubject(reason="Eligibility confirmed")
            )
        except NoSlotError as refused:
            # The cohort closed while the patient was in screening (a dose halted or
            # the study stopped): a screen failure, off study.
            data: FormData = {
                "end_date": day.isoformat(),
                "reason": "other",
                "reason_other": f"Not enrolled: {refused}"[:500],
                "last_contact_date": day.isoformat(),
            }
            self._record(patient, "end_of_study", "EOS", data, self.pi)
            self.count["screen failures"] += 1
            return
        self.count["subjects enrolled"] += 1
        self.enrolled_on[patient.subject_id] = day
        level = self.app.escalation().level(slot.dose_level)
        infused = patient.baseline.number != self.not_infused
        course = draw_course(
            patient.rng,
            patient.baseline,
            level.code,
            level.number,
            float(level.dose_per_kg),
            infused=infused,
        )
        infusion_day = day + timedelta(days=2 - course.leukapheresis_day)
        patient.chart = Chart(
            baseline=patient.baseline,
            zone=self.zone,
            rng=patient.rng,
            course=course,
            infusion_day=infusion_day,
        )
        self._plan(patient, str(subject.subject_id))

    def _plan(self, patient: _Patient, label: str) -> None:
        """Put every day on which something happens to the patient on the calendar."""
        chart = self._chart(patient)
        course = chart.course
        days = set(course.visit_days.values()) | {course.end_day}
        if course.infused:
            days |= set(self._unscheduled_days(chart))
            for event in course.adverse_events:
                days |= {event.onset_day, *(d for d, _ in event.grades)}
                if event.resolution_day is not None:
                    days.add(event.resolution_day)
            days |= {when for when, _, _ in chart.conmeds()}
            days.add(course.visit_days["D28"] + 5)  # monitoring visit
        for study_day in sorted(d for d in days if d <= course.end_day):
            self.at(
                chart.day(study_day),
                _PATIENT_DAY,
                f"{label} day {study_day}",
                partial(self._patient_day, patient, study_day),
            )

    @staticmethod
    def _chart(patient: _Patient) -> Chart:
        if patient.chart is None:
            raise RuntimeError(f"{patient.subject_id} has no course yet")
        return patient.chart

    def _unscheduled_days(self, chart: Chart) -> list[int]:
        """Days in a CRS or ICANS episode without a scheduled assessment (UNS visits)."""
        course = chart.course
        assessed = {
            day
            for code, day in course.visit_days.items()
            if "crs_assessment" in self.visit_forms.get(code, [])
        }
        days: set[int] = set()
        for episode in (course.crs, course.icans):
            if episode is not None:
                days |= set(range(episode.onset_day, episode.resolution_day + 1))
        return sorted(days - assessed)

    # A patient's day ------------------------------------------------------------------

    def _patient_day(self, patient: _Patient, study_day: int, day: date) -> None:
        chart = self._chart(patient)
        course = chart.course
        for code, visit_day in course.visits:
            if visit_day == study_day:
                self._visit(patient, code)
        if not course.infused:
            if study_day == course.end_day:
                self._not_infused(patient, day)
            return
        if study_day in self._unscheduled_days(chart):
            self._unscheduled(patient, study_day)
        for event in course.adverse_events:
            self._adverse_event(patient, event, study_day)
        for when, data, treats in chart.conmeds():
            if when == study_day:
                if treats is not None and f"ae:{treats}" in patient.entries:
                    data["ae_entry_id"] = patient.entries[f"ae:{treats}"]
                self._record(patient, "concomitant_medication", "LOG", data)
        if study_day == course.visit_days.get("D28"):
            self._dlt_assessment(patient, day)
        if study_day == course.visit_days["D28"] + 5:
            self._monitoring_visit(patient, day)
        if study_day == course.end_day:
            self._end_of_study(patient)

    def _visit(self, patient: _Patient, code: str) -> None:
        chart = self._chart(patient)
        for form in self.visit_forms.get(code, []):
            if form == "dlt_assessment":
                continue  # adjudicated by the investigator after the visit
            data = chart.visit_form(form, code)
            if data is None:
                continue
            if (
                form == "crs_assessment"
                and "crs_grade_mismatch" in patient.incidents
                and "crs:mismatch" not in patient.entries
            ):
                grade = int(data["investigator_grade"])
                data["investigator_grade"] = grade + 1
                entry_id = self._record(patient, form, code, data)
                patient.entries["crs:mismatch"] = entry_id
                self.at(
                    self.today + timedelta(days=1),
                    _FOLLOW_UP,
                    f"{patient.subject_id} CRS grade query",
                    partial(self._fix_crs_grade, patient, entry_id, grade),
                )
                continue
            patient.entries[f"{form}:{code}"] = self._record(patient, form, code, data)
            if form == "cart_infusion":
                self.infused_on[patient.subject_id] = chart.infusion_day
            if form == "pk_sample" and code == "D0":
                # The one-hour sample: the D0 visit holds the pre-dose one.
                patient.entries["pk_sample:1h"] = self._record(
                    patient, form, "UNS", chart.pk_one_hour()
                )

    def _unscheduled(self, patient: _Patient, study_day: int) -> None:
        chart = self._chart(patient)
        course = chart.course
        if course.crs is not None and course.crs.onset_day <= study_day <= (
            course.crs.resolution_day
        ):
            self._record(patient, "crs_assessment", "UNS", chart.crs_assessment(study_day))
        if course.icans is not None and course.icans.onset_day <= study_day <= (
            course.icans.resolution_day
        ):
            self._record(patient, "icans_assessment", "UNS", chart.icans_assessment(study_day))

    def _adverse_event(self, patient: _Patient, event: AdverseEvent, study_day: int) -> None:
        chart = self._chart(patient)
        key = f"ae:{event.key}"
        if study_day == event.onset_day:
            data = chart.adverse_event(event, study_day)
            patient.entries[key] = self._record(patient, "adverse_event", "LOG", data)
            if "duplicate_ae" in patient.incidents and event.key == "lymphopenia":
                duplicate = self._record(patient, "adverse_event", "LOG", data)
                self.at(
                    self.today + timedelta(days=2),
                    _FOLLOW_UP,
                    f"{patient.subject_id} duplicate AE",
                    partial(self._void_duplicate, patient, duplicate, patient.entries[key]),
                )
            return
        if key not in patient.entries:
            return
        rises = [grade for day, grade in event.grades if day == study_day and day > event.onset_day]
        if rises:
            self._correct(
                patient,
                patient.entries[key],
                chart.adverse_event(event, study_day),
                f"{event.term} worsened to grade {rises[-1]} on study day {study_day}",
            )
        if study_day == event.resolution_day:
            data = chart.adverse_event(event, study_day)
            if "ae_date_typo" in patient.incidents and "ae:typo" not in patient.entries:
                # The year is typed wrongly: the resolution date falls before the onset.
                wrong = date.fromisoformat(data["resolution_date"]) - timedelta(days=365)
                typo = {**data, "resolution_date": wrong.isoformat()}
                patient.entries["ae:typo"] = patient.entries[key]
                self._correct(patient, patient.entries[key], typo, f"{event.term} resolved")
                self.at(
                    self.today + timedelta(days=1),
                    _FOLLOW_UP,
                    f"{patient.subject_id} AE date query",
                    partial(self._fix_resolution_date, patient, patient.entries[key], data),
                )
                return
            self._correct(
                patient,
                patient.entries[key],
                data,
                f"{event.term} resolved on {data['resolution_date']}",
            )

    # DLT assessment, SRC --------------------------------------------------------------

    def _dlt_assessment(self, patient: _Patient, day: date) -> None:
        chart = self._chart(patient)
        course = chart.course
        study_day = course.visit_days["D28"]
        severe = [
            e for e in course.adverse_events if e.onset_day <= 28 and e.grade_on(study_day) >= 3
        ]
        considered = [patient.entries[f"ae:{e.key}"] for e in severe]
        data: FormData = {
            "assessment_date": day.isoformat(),
            "evaluable": True,
            "dlt": course.dlt_kind is not None,
            "ae_entry_ids": considered,
            "last_day_observed": study_day,
            "comment": _dlt_comment(chart, study_day),
        }
        if course.dlt_kind is not None and course.dlt_event_key is not None:
            culprit = patient.entries[f"ae:{course.dlt_event_key}"]
            data["ae_entry_ids"] = [culprit, *(i for i in considered if i != culprit)]
            data["dlt_categories"] = [course.dlt_kind]
        readjudicate = "dlt_readjudication" in patient.incidents and course.dlt_kind is None
        if readjudicate and considered:
            data["ae_entry_ids"] = considered[1:]
        entry_id = self._record(patient, "dlt_assessment", "D28", data, self.pi)
        patient.entries["dlt"] = entry_id
        self._sign(patient, entry_id, "approval")
        if readjudicate and considered:
            # The data manager asks why a grade >= 3 AE is not listed; the investigator
            # adds it and signs again (the correction withdrew the signed outcome).
            _, query_id, _ = self.app.open_query(
                self.dm,
                patient.subject_id,
                entry_id,
                OpenQuery(
                    path="/ae_entry_ids",
                    text=(
                        "A grade 3-4 adverse event in the DLT window is not listed among the "
                        "events considered. Please review the adjudication."
                    ),
                ),
            )
            self.count["queries by data manager"] += 1
            self._correct(
                patient,
                entry_id,
                {**data, "ae_entry_ids": considered},
                "Added the grade 3-4 event reviewed at adjudication (not a DLT) to the list",
                self.pi,
                query_id=query_id,
            )
            self._sign(patient, entry_id, "approval")
            self.app.close_query(
                self.dm, query_id, CloseQuery(text="Adjudication complete; signed again.")
            )
            self.count["queries closed"] += 1
        self._after_outcome(day)

    def _not_infused(self, patient: _Patient, day: date) -> None:
        """The product failed release: not evaluable, replaced, off study."""
        chart = self._chart(patient)
        data: FormData = {
            "assessment_date": day.isoformat(),
            "evaluable": False,
            "dlt": False,
            "reason_not_evaluable": (
                "Not infused: the CAR-T product did not meet its release criteria. "
                "Replaced at the same dose level."
            ),
            "ae_entry_ids": [],
        }
        entry_id = self._record(patient, "dlt_assessment", "D28", data, self.pi)
        self._sign(patient, entry_id, "approval")
        self.count["not evaluable"] += 1
        self._end_of_study(patient, chart.end_of_study())
        self._after_outcome(day)

    def _after_outcome(self, day: date) -> None:
        self._open_slots(day)
        escalation = self.app.escalation()
        self.outcomes = escalation.outcomes()
        if not self.decision_due and awaiting_decision(escalation):
            self.decision_due = True
            self.at(day + timedelta(days=SRC_MEETING_DELAY), _DECISION, "SRC", self._decide)

    def _decide(self, day: date) -> None:
        """The SRC meets and records the engine's recommendation as its signed decision."""
        self.decision_due = False
        snapshot = self.app.cohorts(self.safety)
        escalation = snapshot.escalation
        if not awaiting_decision(escalation):
            return
        advice = escalation.recommendation()
        if advice.action == "hold":
            raise RuntimeError(f"the 3+3 engine cannot advise on {escalation.outcomes()!r}")
        outcomes = escalation.outcomes()
        rationale = (
            f"SRC meeting of {day.isoformat()}: outcomes {outcomes}. {advice.rule} "
            "The committee follows the recommendation."
        )
        command = DecideDose.model_validate(
            {
                "action": advice.action,
                "dose_level": advice.dose_level,
                "rationale": rationale,
                "password": DEMO_PASSWORD,
                "meaning": "approval",
            }
        )
        _, decision, _ = self.app.decide_dose(self.safety, command)
        self.count["SRC decisions"] += 1
        self.decisions.append(
            DecisionRecord(
                number=decision.number,
                day=day,
                outcomes=decision.outcomes,
                recommendation=dict(decision.recommendation),
                action=decision.action,
                dose_level=decision.dose_level,
                follows_recommendation=decision.follows_recommendation,
            )
        )
        self._open_slots(day)

    # Monitoring, incidents, the end --------------------------------------------------------

    def _monitoring_visit(self, patient: _Patient, day: date) -> None:
        """Source data verification of the key entries, and the monitor's queries."""
        chart = self._chart(patient)
        keys = ["informed_consent", "eligibility", "cart_infusion:D0", "dlt"]
        keys += [
            f"ae:{e.key}"
            for e in chart.course.adverse_events
            if e.worst >= 3 and f"ae:{e.key}" in patient.entries
        ]
        for key in keys:
            if key in patient.entries:
                self._verify(patient, patient.entries[key])
        if "weight_typo" in patient.incidents:
            _, query_id, _ = self.app.open_query(
                self.monitor,
                patient.subject_id,
                patient.entries["demographics"],
                OpenQuery(
                    path="/weight_kg",
                    text=(
                        f"The screening nursing record gives {patient.baseline.weight_kg} kg. "
                        "Please check the weight entered."
                    ),
                ),
            )
            self.count["queries by monitor"] += 1
            self.at(
                day + timedelta(days=2),
                _FOLLOW_UP,
                f"{patient.subject_id} weight query",
                partial(self._fix_weight, patient, query_id),
            )
        if "ctdna_confirm" in patient.incidents:
            _, query_id, _ = self.app.open_query(
                self.dm,
                patient.subject_id,
                patient.entries["ctdna_result"],
                OpenQuery(
                    path="/sample_date",
                    text=(
                        "The report came back more than a week after the sample date. "
                        "Please confirm the draw date against the requisition form."
                    ),
                ),
            )
            self.count["queries by data manager"] += 1
            self.at(
                day + timedelta(days=1),
                _FOLLOW_UP,
                f"{patient.subject_id} ctDNA query",
                partial(
                    self._answer_and_close,
                    patient,
                    query_id,
                    "Confirmed: the draw date matches the requisition; the central "
                    "laboratory reported late.",
                    self.dm,
                ),
            )
        fever_days = [
            code
            for code, study_day in chart.course.visits
            if "vital_signs" in self.visit_forms.get(code, [])
            and chart.course.crs_days.get(study_day) is not None
            and chart.course.crs_days[study_day].grade >= 2
            and f"vital_signs:{code}" in patient.entries
        ]
        if fever_days and patient.rng.random() < 0.5:
            _, query_id, _ = self.app.open_query(
                self.monitor,
                patient.subject_id,
                patient.entries[f"vital_signs:{fever_days[0]}"],
                OpenQuery(
                    path="/heart_rate_bpm",
                    text="Tachycardia on this day: please confirm and say whether it is an AE.",
                ),
            )
            self.count["queries by monitor"] += 1
            self.at(
                day + timedelta(days=1),
                _FOLLOW_UP,
                f"{patient.subject_id} vital signs query",
                partial(
                    self._answer_and_close,
                    patient,
                    query_id,
                    f"Confirmed against the nursing chart: sinus tachycardia with the fever of "
                    f"{CRS_TERM.lower()}, captured within the CRS adverse event.",
                    self.monitor,
                ),
            )

    def _fix_weight(self, patient: _Patient, query_id: str, day: date) -> None:
        entry_id = patient.entries["demographics"]
        data = self._screening_chart(patient).demographics()
        self._correct(
            patient,
            entry_id,
            data,
            f"Transcription error: the source record gives {patient.baseline.weight_kg} kg",
            query_id=query_id,
        )
        self.at(
            day + timedelta(days=2),
            _FOLLOW_UP,
            f"{patient.subject_id} weight query closed",
            partial(self._close_and_verify, patient, query_id, entry_id),
        )

    def _close_and_verify(self, patient: _Patient, query_id: str, entry_id: str, _: date) -> None:
        self.app.close_query(
            self.monitor, query_id, CloseQuery(text="Correction verified against the source.")
        )
        self.count["queries closed"] += 1
        self._verify(patient, entry_id)

    def _answer_and_close(
        self, patient: _Patient, query_id: str, answer: str, closer: Actor, day: date
    ) -> None:
        self.app.answer_query(self.crc, query_id, AnswerQuery(text=answer))
        self.count["queries answered"] += 1
        self.at(
            day + timedelta(days=1),
            _FOLLOW_UP,
            f"{patient.subject_id} query closed",
            lambda _: self._close(query_id, closer),
        )

    def _close(self, query_id: str, closer: Actor) -> None:
        self.app.close_query(closer, query_id, CloseQuery(text="Answer accepted."))
        self.count["queries closed"] += 1

    def _fix_crs_grade(self, patient: _Patient, entry_id: str, grade: int, _: date) -> None:
        subject = self.app.subject(self.pi, patient.subject_id)
        data = {k: v for k, v in subject.entry(entry_id).data.items() if k != "grade"}
        self._correct(
            patient,
            entry_id,
            {**data, "investigator_grade": grade},
            f"Investigator grade re-assessed against the ASTCT 2019 criteria: grade {grade}",
            self.pi,
            query_id=self._system_query(subject, entry_id),
        )

    def _fix_resolution_date(
        self, patient: _Patient, entry_id: str, data: FormData, _: date
    ) -> None:
        subject = self.app.subject(self.crc, patient.subject_id)
        self._correct(
            patient,
            entry_id,
            data,
            f"Year mistyped in the resolution date; it is {data['resolution_date']}",
            query_id=self._system_query(subject, entry_id),
        )

    @staticmethod
    def _system_query(subject: Subject, entry_id: str) -> str | None:
        return next(
            (
                q.query_id
                for q in subject.queries.values()
                if q.entry_id == entry_id and q.system and q.state == "open"
            ),
            None,
        )

    def _void_duplicate(self, patient: _Patient, duplicate: str, original: str, _: date) -> None:
        self.app.void_entry(
            self.crc,
            patient.subject_id,
            duplicate,
            VoidEntry(
                reason=f"Duplicate of entry {original}: the same event was entered twice",
                expected_revision=1,
            ),
        )
        self.count["voids"] += 1

    def _end_of_study(self, patient: _Patient, data: FormData | None = None) -> None:
        chart = self._chart(patient)
        entry_id = self._record(
            patient, "end_of_study", "EOS", data or chart.end_of_study(), self.pi
        )
        self._sign(patient, entry_id, "approval")
        self._verify(patient, entry_id)
        self.app.sign_casebook(
            self.pi,
            patient.subject_id,
            Sign(username=self.pi.username, password=DEMO_PASSWORD, meaning="approval"),
        )
        self.count["casebook signatures"] += 1
        self.count[f"end of study: {chart.course.end_reason}"] += 1

    # Commands ------------------------------------------------------------------------

    def _record(
        self,
        patient: _Patient,
        form: str,
        visit: str,
        data: FormData,
        actor: Actor | None = None,
    ) -> str:
        _, entry, _ = self.app.record_entry(
            actor or self.crc, patient.subject_id, RecordEntry(form=form, visit=visit, data=data)
        )
        self.count["entries"] += 1
        return entry.entry_id

    def _correct(
        self,
        patient: _Patient,
        entry_id: str,
        data: FormData,
        reason: str,
        actor: Actor | None = None,
        query_id: str | None = None,
    ) -> None:
        """Correct an entry to ``data`` with the merge patch that gets it there."""
        who = actor or self.crc
        entry = self.app.subject(who, patient.subject_id).entry(entry_id)
        read_only = self.app.forms.get(entry.form, entry.version).read_only_fields
        current = {k: v for k, v in entry.data.items() if k not in read_only}
        changes: dict[str, Any] = {k: v for k, v in data.items() if current.get(k) != v}
        changes.update({k: None for k in current if k not in data})
        if not changes:
            return
        self.app.correct_entry(
            who,
            patient.subject_id,
            entry_id,
            CorrectEntry(
                changes=changes,
                reason=reason,
                expected_revision=entry.revision,
                query_id=query_id,
            ),
        )
        self.count["corrections"] += 1

    def _sign(self, patient: _Patient, entry_id: str, meaning: str) -> None:
        self.app.sign_entry(
            self.pi,
            patient.subject_id,
            entry_id,
            Sign(username=self.pi.username, password=DEMO_PASSWORD, meaning=meaning),
        )
        self.count["signatures"] += 1

    def _verify(self, patient: _Patient, entry_id: str) -> None:
        entry = self.app.subject(self.monitor, patient.subject_id).entry(entry_id)
        if entry.voided or entry.verified_revision == entry.revision:
            return
        self.app.verify_source(
            self.monitor, patient.subject_id, entry_id, VerifySource(revision=entry.revision)
        )
        self.count["source verifications"] += 1


def _dlt_comment(chart: Chart, study_day: int) -> str:
    """The investigator's summary of the DLT window."""
    course = chart.course
    parts = []
    for name, episode in (("CRS", course.crs), ("ICANS", course.icans)):
        if episode is not None:
            parts.append(
                f"{name} grade {episode.worst} from day {episode.onset_day}, resolved by day "
                f"{episode.resolution_day}"
            )
    for event in course.adverse_events:
        if event.key in ("crs", "icans") or event.worst < 3 or event.onset_day > 28:
            continue
        if event.resolution_day is not None and event.resolution_day <= study_day:
            state = f"recovered by day {event.resolution_day}"
        else:
            state = "not recovered"
        parts.append(f"{event.term.lower()} grade {event.worst}, {state}")
    verdict = {
        None: "No DLT.",
        "crs_grade_4": "DLT: grade 4 CRS.",
        "crs_grade_3_over_72h": "DLT: grade 3 CRS lasting more than 72 hours.",
        "icans_grade_3_or_more": "DLT: grade 3 ICANS.",
        "non_haematological_grade_3_over_7_days": (
            "DLT: grade 3 colitis (on-target, off-tumour) not improving within 7 days."
        ),
        "neutropenia_grade_4_unrecovered_day_28": (
            "DLT: grade 4 neutropenia not recovered by day 28."
        ),
    }[course.dlt_kind]
    summary = "; ".join(parts)
    return f"{summary[:800]}. {verdict}" if summary else verdict
