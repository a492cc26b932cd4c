"""Enrolment and dose escalation on real SQLite and PostgreSQL: atomic saves, concurrency,
signed DLT outcomes, halts, replacement slots and signed SRC decisions."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ecrf.application import EcrfApplication
from ecrf.commands import (
    CorrectEntry,
    CreateUser,
    DecideDose,
    EnrolSubject,
    RecordEntry,
    RegisterSubject,
    Sign,
    VoidEntry,
)
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.domain.errors import AccountLockedError, ConflictError, ForbiddenError
from ecrf.domain.escalation import DoseEscalation, NoSlotError, NotEligibleError

PASSWORD = "correct horse battery"
ADMIN = Actor("boot", "Boot Admin", ("admin",), ())
CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))
PI = Actor("pi", "Ivan Petrov", ("investigator",), ("CHH",))
SRC = Actor("src", "Sara Reyes", ("safety_reviewer",), ())
WHY = "The committee reviewed every case and departs from the rule deliberately."


@pytest.fixture
def application(settings: Settings) -> Iterator[EcrfApplication]:
    app = EcrfApplication(settings)
    app.create_admin("boot", PASSWORD, "Boot Admin")
    for actor in (CRC, PI, SRC):
        app.create_user(
            ADMIN,
            CreateUser(
                username=actor.username,
                full_name=actor.full_name,
                password=PASSWORD,
                roles=list(actor.roles),
                sites=list(actor.sites),
            ),
        )
    yield app
    app.close()


def example(application: EcrfApplication, form: str, index: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(application.forms.get(form).schema["examples"][index])
    return data


def record(application: EcrfApplication, subject_id: str, form: str, visit: str, data: Any) -> str:
    _, entry, _ = application.record_entry(
        CRC, subject_id, RecordEntry(form=form, visit=visit, data=data)
    )
    return entry.entry_id


def eligible_subject(application: EcrfApplication, number: int) -> str:
    """A registered subject with consent and confirmed eligibility."""
    subject, _ = application.register_subject(
        CRC, RegisterSubject(site="CHH", screening_number=f"S{number:03d}")
    )
    record(
        application,
        subject.subject_id,
        "informed_consent",
        "SCR",
        example(application, "informed_consent"),
    )
    record(
        application, subject.subject_id, "eligibility", "SCR", example(application, "eligibility")
    )
    return subject.subject_id


def enrol(application: EcrfApplication, subject_id: str) -> tuple[str, int]:
    subject, slot, _ = application.enrol_subject(CRC, subject_id, EnrolSubject())
    return str(subject.dose_level), slot.slot


def infuse(application: EcrfApplication, subject_id: str) -> None:
    """Record the infusion at the subject's assigned dose level (once)."""
    subject = application.subject(PI, subject_id)
    if subject.live_entries("cart_infusion"):
        return
    data = {**example(application, "cart_infusion"), "dose_level": str(subject.dose_level)}
    record(application, subject_id, "cart_infusion", "D0", data)


def assess(application: EcrfApplication, subject_id: str, outcome: str) -> str:
    """Record and sign a DLT assessment: ``N``, ``T`` or ``X`` (N and T infuse first)."""
    if outcome != "X":
        infuse(application, subject_id)
    data = example(application, "dlt_assessment", {"N": 0, "T": 1, "X": 2}[outcome])
    entry_id = record(application, subject_id, "dlt_assessment", "D28", data)
    sign(application, subject_id, entry_id)
    return entry_id


def sign(application: EcrfApplication, subject_id: str, entry_id: str) -> None:
    application.sign_entry(
        PI, subject_id, entry_id, Sign(username="pi", password=PASSWORD, meaning="approval")
    )


def decide(application: EcrfApplication, action: str, dose: str | None, why: str = "") -> Any:
    command = DecideDose(
        action=action,
        dose_level=dose,
        rationale=why,
        password=PASSWORD,
        meaning="approval",
    )
    return application.decide_dose(SRC, command)


def cohort(application: EcrfApplication, first: int, outcomes: str) -> list[str]:
    """Enrol one new subject per letter, then sign their assessments in order."""
    subjects = [eligible_subject(application, first + i) for i in range(len(outcomes))]
    for subject_id in subjects:
        enrol(application, subject_id)
    for subject_id, letter in zip(subjects, outcomes, strict=True):
        assess(application, subject_id, letter)
    return subjects


def event_types(application: EcrfApplication, stream: Any) -> list[str]:
    return [type(e).__name__ for e in application.events.get(stream)]


class TestEnrolment:
    def test_subject_and_escalation_are_saved_in_one_atomic_save(
        self, application: EcrfApplication
    ) -> None:
        subject_id = eligible_subject(application, 1)
        before = application.max_position()
        subject, slot, position = application.enrol_subject(CRC, subject_id, EnrolSubject())
        assert (subject.status, subject.dose_level, subject.slot) == ("enrolled", "DL1", 1)
        assert (slot.dose_level, slot.slot, slot.cohort) == ("DL1", 1, 1)
        escalation = application.escalation()
        # Started + SlotAssigned on the escalation, Enrolled on the casebook: one commit.
        assert event_types(application, escalation.id) == ["Started", "SlotAssigned"]
        notifications = application.recorder.select_notifications(
            start=before, limit=10, inclusive_of_start=False
        )
        assert len(notifications) == 3
        assert notifications[-1].id == position
        reloaded = application.subject(CRC, subject_id)
        assert (reloaded.status, reloaded.dose_level) == ("enrolled", "DL1")

    def test_enrolling_twice_conflicts(self, application: EcrfApplication) -> None:
        subject_id = eligible_subject(application, 1)
        enrol(application, subject_id)
        with pytest.raises(ConflictError, match="already enrolled at DL1"):
            enrol(application, subject_id)

    def test_consent_and_eligibility_are_required(self, application: EcrfApplication) -> None:
        subject, _ = application.register_subject(
            CRC, RegisterSubject(site="CHH", screening_number="S001")
        )
        not_eligible = example(application, "eligibility", 1)
        record(application, subject.subject_id, "eligibility", "SCR", not_eligible)
        before = application.max_position()
        with pytest.raises(NotEligibleError) as refused:
            enrol(application, subject.subject_id)
        assert "no informed consent is recorded" in str(refused.value)
        assert "eligibility criteria_met is not true" in str(refused.value)
        assert "eligibility cea_positive is not true" in str(refused.value)
        assert application.max_position() == before

    def test_a_monitor_or_reviewer_cannot_enrol(self, application: EcrfApplication) -> None:
        subject_id = eligible_subject(application, 1)
        monitor = Actor("cra", "Cora", ("monitor",), ("CHH",))
        for actor in (monitor, SRC):
            with pytest.raises(ForbiddenError):
                application.enrol_subject(actor, subject_id, EnrolSubject())


def test_twenty_concurrent_enrolments_fill_exactly_three_slots(
    application: EcrfApplication,
) -> None:
    subjects = [eligible_subject(application, n) for n in range(1, 21)]
    barrier = threading.Barrier(len(subjects))
    won: list[tuple[str, int]] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def attempt(subject_id: str) -> None:
        barrier.wait()
        try:
            result = enrol(application, subject_id)
        except ConflictError as error:
            with lock:
                refused.append(error)
        else:
            with lock:
                won.append(result)

    threads = [threading.Thread(target=attempt, args=(s,)) for s in subjects]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [("DL1", 1), ("DL1", 2), ("DL1", 3)]
    assert len(refused) == 17
    assert all(isinstance(e, NoSlotError) for e in refused), refused
    assert all("DLT window pending" in str(e) for e in refused)
    escalation = application.escalation()
    assert sorted(escalation.slots) == [1, 2, 3]
    enrolled = [s for s in subjects if application.subject(CRC, s).status == "enrolled"]
    assert sorted(escalation.slots[n].subject_id for n in (1, 2, 3)) == sorted(enrolled)


class TestOutcomes:
    def test_a_subject_never_infused_is_not_evaluable(self, application: EcrfApplication) -> None:
        # PROTOCOL: evaluable means infused, then a DLT or day 28 completed without one.
        (subject_id,) = [eligible_subject(application, 1)]
        enrol(application, subject_id)
        data = example(application, "dlt_assessment", 0)
        sign(
            application, subject_id, record(application, subject_id, "dlt_assessment", "D28", data)
        )
        assert application.escalation().outcomes() == ""
        infuse(application, subject_id)  # the outcome counts once the infusion is recorded
        assert application.escalation().outcomes() == "1N"

    def test_signing_records_the_outcome_in_the_same_save(
        self, application: EcrfApplication
    ) -> None:
        (subject_id,) = [eligible_subject(application, 1)]
        enrol(application, subject_id)
        infuse(application, subject_id)
        entry_id = record(
            application, subject_id, "dlt_assessment", "D28", example(application, "dlt_assessment")
        )
        assert application.escalation().outcomes() == ""  # unsigned: does not count
        before = application.max_position()
        sign(application, subject_id, entry_id)
        written = application.recorder.select_notifications(
            start=before, limit=10, inclusive_of_start=False
        )
        # The re-authentication is a login event; then signature and outcome, one commit.
        assert [n.topic.rsplit(".", 1)[-1] for n in written] == [
            "LoginSucceeded",
            "EntrySigned",
            "OutcomeRecorded",
        ]
        assert application.escalation().outcomes() == "1N"

    def test_the_second_dlt_halts_the_dose_mid_cohort(self, application: EcrfApplication) -> None:
        cohort(application, 1, "NNN")
        decide(application, "escalate", "DL2")
        subjects = [eligible_subject(application, n) for n in (4, 5, 6)]
        assert [enrol(application, s) for s in subjects] == [("DL2", 4), ("DL2", 5), ("DL2", 6)]
        assess(application, subjects[0], "T")
        assess(application, subjects[1], "T")
        escalation = application.escalation()
        assert escalation.level_status("DL2") == "halted"
        assert escalation.outcomes() == "1NNN 2TT"
        assert event_types(application, escalation.id)[-2:] == ["OutcomeRecorded", "DoseHalted"]
        advice = escalation.recommendation()
        assert (advice.action, advice.dose_level) == ("deescalate", "DL1")
        with pytest.raises(NoSlotError, match="dose DL2 is halted"):
            enrol(application, eligible_subject(application, 7))
        # The SRC de-escalates without waiting for the halted cohort's third outcome.
        decision = decide(application, "deescalate", "DL1")[1]
        assert decision.follows_recommendation
        assert enrol(application, "CHH-S007") == ("DL1", 7)

    def test_a_not_evaluable_patient_opens_a_replacement_slot(
        self, application: EcrfApplication
    ) -> None:
        subjects = [eligible_subject(application, n) for n in (1, 2, 3, 4)]
        for subject_id in subjects[:3]:
            enrol(application, subject_id)
        with pytest.raises(NoSlotError, match="DLT window pending"):
            enrol(application, subjects[3])
        assess(application, subjects[1], "X")
        assert enrol(application, subjects[3]) == ("DL1", 4)
        escalation = application.escalation()
        assert escalation.slots[2].outcome == "not_evaluable"
        assert escalation.slots[4].cohort == 1

    def test_a_correction_withdraws_the_outcome_until_signed_again(
        self, application: EcrfApplication
    ) -> None:
        subjects = cohort(application, 1, "NNN")
        subject = application.subject(PI, subjects[0])
        (entry,) = subject.live_entries("dlt_assessment")
        application.correct_entry(
            CRC,
            subjects[0],
            entry.entry_id,
            CorrectEntry(
                changes={"comment": "Re-adjudicated at the SRC's request."},
                reason="Comment added",
                expected_revision=1,
            ),
        )
        escalation = application.escalation()
        assert event_types(application, escalation.id)[-1] == "OutcomeWithdrawn"
        assert escalation.outcomes() == "1NN"
        with pytest.raises(ConflictError, match="DLT window pending"):
            decide(application, "escalate", "DL2")
        sign(application, subjects[0], entry.entry_id)
        assert application.escalation().outcomes() == "1NNN"
        assert decide(application, "escalate", "DL2")[1].follows_recommendation

    def test_a_void_withdraws_the_outcome(self, application: EcrfApplication) -> None:
        subjects = cohort(application, 1, "N")
        (entry,) = application.subject(PI, subjects[0]).live_entries("dlt_assessment")
        application.void_entry(
            CRC, subjects[0], entry.entry_id, VoidEntry(reason="Wrong subject", expected_revision=1)
        )
        assert application.escalation().outcomes() == ""
        assert application.escalation().slots[1].outcome == "pending"

    def test_corrections_of_other_forms_leave_the_escalation_alone(
        self, application: EcrfApplication
    ) -> None:
        subjects = cohort(application, 1, "N")
        version = application.escalation().version
        subject = application.subject(PI, subjects[0])
        (consent,) = subject.live_entries("informed_consent")
        application.correct_entry(
            CRC,
            subjects[0],
            consent.entry_id,
            CorrectEntry(changes={"icf_version": "2.2"}, reason="Typo", expected_revision=1),
        )
        assert application.escalation().version == version


class TestDecisions:
    def test_a_decision_is_signed_with_the_reviewers_own_password(
        self, application: EcrfApplication
    ) -> None:
        cohort(application, 1, "NNN")
        wrong = DecideDose(
            action="escalate", dose_level="DL2", password="wrong", meaning="approval"
        )
        with pytest.raises(ForbiddenError, match="signature refused"):
            application.decide_dose(SRC, wrong)
        escalation, decision, position = decide(application, "escalate", "DL2")
        assert (decision.signer, decision.signer_name, decision.meaning) == (
            "src",
            "Sara Reyes",
            "approval",
        )
        assert decision.recommendation["action"] == "escalate"
        assert decision.outcomes == "1NNN"
        assert position == application.max_position()
        reloaded = application.escalation()
        assert reloaded.decisions == escalation.decisions

    def test_wrong_passwords_count_towards_lockout(self, application: EcrfApplication) -> None:
        wrong = DecideDose(action="stop", password="wrong", meaning="approval", rationale=WHY)
        for _ in range(application.settings.max_failed_logins - 1):
            with pytest.raises(ForbiddenError):
                application.decide_dose(SRC, wrong)
        with pytest.raises(AccountLockedError):
            application.decide_dose(SRC, wrong)
        assert application.user_view("src")["locked"] is True
        assert application.escalation().decisions == []

    def test_only_the_safety_reviewer_decides(self, application: EcrfApplication) -> None:
        cohort(application, 1, "NNN")
        command = DecideDose(
            action="escalate", dose_level="DL2", password=PASSWORD, meaning="approval"
        )
        for actor in (CRC, PI):
            with pytest.raises(ForbiddenError):
                application.decide_dose(actor, command)

    def test_protocol_worked_case_to_the_mtd(self, application: EcrfApplication) -> None:
        # PROTOCOL.md: 1NNN 2NTT -> back to dose 1; 1NNN 2NTT 1NNT -> stop, MTD 1.
        cohort(application, 1, "NNN")
        decide(application, "escalate", "DL2")
        cohort(application, 4, "NTT")
        escalation = application.escalation()
        assert escalation.outcomes() == "1NNN 2NTT"
        assert escalation.recommendation().dose_level == "DL1"
        decide(application, "deescalate", "DL1")
        cohort(application, 7, "NNT")
        advice = application.escalation().recommendation()
        assert (advice.action, advice.mtd) == ("stop", "DL1")
        decide(application, "stop", "DL1")
        escalation = application.escalation()
        assert escalation.stopped
        assert escalation.mtd == "DL1"
        assert escalation.outcomes() == "1NNN 2NTT 1NNT"
        with pytest.raises(NoSlotError, match="study is stopped"):
            enrol(application, eligible_subject(application, 10))
        snapshot = application.cohorts(SRC)
        rows = {r.dose_level: r for r in snapshot.escalation.level_counts(snapshot.infused)}
        assert (rows["DL1"].assigned, rows["DL1"].evaluable, rows["DL1"].dlt) == (6, 6, 1)
        assert (rows["DL2"].status, rows["DL2"].dlt) == ("halted", 2)


def test_the_escalation_replays_identically(application: EcrfApplication) -> None:
    cohort(application, 1, "NNN")
    decide(application, "escalate", "DL2")
    cohort(application, 4, "TT")
    live = application.escalation()
    replayed: DoseEscalation | None = None
    for domain_event in application.subject_events(live.id):
        replayed = domain_event.mutate(replayed)
    assert replayed is not None
    assert replayed.outcomes() == live.outcomes() == "1NNN 2TT"
    assert replayed.halted == live.halted
