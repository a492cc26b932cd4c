"""The DoseEscalation aggregate: slots, signed outcomes, halts and SRC decisions (no I/O).

Worked cases are PROTOCOL.md "3+3 dose escalation"; the recommendation itself is the
engine tested in test_escalation.py.
"""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from ecrf.domain.errors import ConflictError, InvalidInputError
from ecrf.domain.escalation import (
    DoseEscalation,
    EscalationState,
    NoSlotError,
    SignedOutcome,
    enrolment_problems,
    escalation_plan,
    signed_dlt_outcome,
)
from ecrf.domain.subject import Entry, Subject

STUDY = json.loads((Path(__file__).parents[2] / "forms" / "study.json").read_text())
CRC = {"user": "crc", "user_name": "Carol", "role": "site_staff", "site": "CHH"}
PI = {"user": "pi", "user_name": "Ivan", "role": "investigator", "site": "CHH"}
SRC = {"user": "src", "user_name": "Sam", "role": "safety_reviewer", "site": ""}
WHY = "The committee reviewed every case in detail and agrees."


def escalation(**settings: Any) -> DoseEscalation:
    """A fresh escalation for the shipped study, with settings overridden."""
    levels, plan = escalation_plan(STUDY)
    return DoseEscalation(
        study_id=STUDY["study_id"], dose_levels=levels, settings={**plan, **settings}, audit=CRC
    )


_ids = count(1)


def enrol(esc: DoseEscalation, n: int = 1) -> list[str]:
    """Assign ``n`` new subjects; returns their ids."""
    subjects = []
    for _ in range(n):
        subject_id = f"CHH-S{next(_ids):03d}"
        esc.assign_slot(subject_id, CRC)
        subjects.append(subject_id)
    return subjects


def sign(esc: DoseEscalation, subject_id: str, outcome: str, revision: int = 1) -> bool:
    """Record a signed DLT assessment: ``N``, ``T`` or ``X`` (not evaluable)."""
    signed = SignedOutcome(
        entry_id=f"dlt-{subject_id}",
        revision=revision,
        data_hash=f"hash-{outcome}-{revision}",
        evaluable=outcome != "X",
        dlt=outcome == "T",
        reason_not_evaluable="withdrew on day 12" if outcome == "X" else "",
    )
    return esc.reconcile_outcome(subject_id, signed, PI)


def cohort(esc: DoseEscalation, outcomes: str) -> list[str]:
    """Enrol one subject per letter and sign their outcomes in order."""
    subjects = enrol(esc, len(outcomes))
    for subject_id, letter in zip(subjects, outcomes, strict=True):
        sign(esc, subject_id, letter)
    return subjects


def decide(esc: DoseEscalation, action: str, dose: str | None, rationale: str = "") -> Any:
    return esc.decide(action, dose, rationale, "approval", "I approve.", SRC)


class TestSlots:
    def test_the_first_cohort_opens_three_slots_at_the_starting_dose(self) -> None:
        esc = escalation()
        state = esc.enrolment()
        assert (state.open, state.dose_level, state.cohort, state.open_slots) == (
            True,
            "DL1",
            1,
            3,
        )
        assert esc.level_status("DL1") == "open"
        assert esc.level_status("DL2") == "closed"
        assert esc.recommendation().action == "continue"
        assert esc.outcomes() == ""

    def test_slots_are_numbered_and_assigned_at_the_cohort_dose(self) -> None:
        esc = escalation()
        subjects = enrol(esc, 3)
        assert [(s.slot, s.subject_id, s.dose_level, s.cohort) for s in esc.slots.values()] == [
            (1, subjects[0], "DL1", 1),
            (2, subjects[1], "DL1", 1),
            (3, subjects[2], "DL1", 1),
        ]

    def test_a_full_cohort_waits_for_its_dlt_window(self) -> None:
        esc = escalation()
        enrol(esc, 3)
        with pytest.raises(NoSlotError, match="DLT window pending"):
            enrol(esc)

    def test_a_complete_cohort_awaits_the_src_decision(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        with pytest.raises(NoSlotError, match="awaiting the Safety Review Committee decision"):
            enrol(esc)
        assert esc.recommendation().action == "escalate"

    def test_a_subject_holds_one_slot(self) -> None:
        esc = escalation()
        (subject_id,) = enrol(esc)
        with pytest.raises(ConflictError, match="already enrolled at DL1"):
            esc.assign_slot(subject_id, CRC)

    def test_max_subjects_closes_enrolment(self) -> None:
        esc = escalation(max_subjects=2)
        enrol(esc, 2)
        with pytest.raises(NoSlotError, match="max subjects"):
            enrol(esc)

    def test_a_not_evaluable_patient_is_replaced_at_the_same_dose(self) -> None:
        esc = escalation()
        first, second, third = enrol(esc, 3)
        sign(esc, second, "X")
        assert esc.slots[2].outcome == "not_evaluable"
        state = esc.enrolment()
        assert (state.open, state.dose_level, state.open_slots) == (True, "DL1", 1)
        (replacement,) = enrol(esc)
        assert esc.slot_of(replacement) is not None
        assert esc.slots[4].dose_level == "DL1"
        assert esc.slots[4].cohort == 1
        for subject_id in (first, third, replacement):
            sign(esc, subject_id, "N")
        assert esc.outcomes() == "1NNN"
        assert esc.recommendation().action == "escalate"


class TestOutcomes:
    def test_signed_outcomes_build_the_literature_notation(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "NT")
        assert esc.outcomes() == "1NNN 2NT"
        assert esc.dlts_at("DL2") == 1

    def test_signing_the_same_outcome_again_changes_nothing(self) -> None:
        esc = escalation()
        (subject_id,) = cohort(esc, "N")
        assert sign(esc, subject_id, "N") is False

    def test_the_second_dlt_halts_the_dose_mid_cohort(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        first, second, third = enrol(esc, 3)
        sign(esc, first, "T")
        assert esc.level_status("DL2") == "open"
        sign(esc, second, "T")
        assert esc.level_status("DL2") == "halted"
        assert esc.slots[6].outcome == "pending"
        halts = [e for e in esc.collect_events() if isinstance(e, DoseEscalation.DoseHalted)]
        assert [(h.dose_level, h.dlts, h.evaluated) for h in halts] == [("DL2", 2, 2)]
        advice = esc.recommendation()
        assert (advice.action, advice.dose_level) == ("deescalate", "DL1")
        assert "enrolment halted at the second DLT" in advice.rule
        # The halted dose's last outcome need not be in before the SRC de-escalates.
        decide(esc, "deescalate", "DL1")
        sign(esc, third, "N")
        assert esc.outcomes() == "1NNN 2TTN"

    def test_a_halt_refuses_replacement_slots(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        first, second, third = enrol(esc, 3)
        sign(esc, first, "T")
        sign(esc, second, "T")
        sign(esc, third, "X")
        with pytest.raises(NoSlotError, match="dose DL2 is halted"):
            enrol(esc)

    def test_a_withdrawn_outcome_is_pending_until_signed_again(self) -> None:
        esc = escalation()
        first, *_ = cohort(esc, "NNN")
        assert esc.reconcile_outcome(first, None, CRC) is True
        assert esc.slots[1].outcome == "pending"
        assert esc.outcomes() == "1NN"
        with pytest.raises(ConflictError, match="DLT window pending"):
            decide(esc, "escalate", "DL2")
        sign(esc, first, "T", revision=2)
        assert esc.outcomes() == "1TNN"
        assert esc.recommendation().action == "expand"

    def test_a_withdrawn_dlt_leaves_the_halt_standing_until_the_src_reopens(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        second = cohort(esc, "TTN")[1]
        esc.reconcile_outcome(second, None, CRC)
        assert esc.level_status("DL2") == "halted"
        sign(esc, second, "N", revision=2)
        assert esc.dlts_at("DL2") == 1
        assert esc.level_status("DL2") == "halted"
        decision = decide(esc, "expand", "DL2")
        assert decision.follows_recommendation is True
        assert esc.level_status("DL2") == "open"
        assert esc.enrolment().open_slots == 3

    def test_unknown_subjects_have_no_outcome_to_record(self) -> None:
        assert escalation().reconcile_outcome("CHH-NOBODY", None, PI) is False


class TestDecisions:
    def test_a_decision_opens_the_next_cohort_and_records_the_recommendation(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decision = decide(esc, "escalate", "DL2")
        assert decision.follows_recommendation is True
        assert decision.recommendation["action"] == "escalate"
        assert decision.recommendation["dose_level"] == "DL2"
        assert decision.outcomes == "1NNN"
        assert decision.opens == {"cohort": 2, "dose_level": "DL2", "slots": 3}
        assert len(decision.decision_hash) == 64
        assert (decision.signer, decision.meaning) == ("src", "approval")
        state = esc.enrolment()
        assert (state.open, state.dose_level, state.cohort, state.open_slots) == (
            True,
            "DL2",
            2,
            3,
        )
        assert esc.level_status("DL1") == "closed"

    def test_no_decision_before_the_cohort_is_complete(self) -> None:
        esc = escalation()
        cohort(esc, "NN")
        with pytest.raises(ConflictError, match="not complete"):
            decide(esc, "escalate", "DL2")
        enrol(esc)
        with pytest.raises(ConflictError, match="DLT window pending"):
            decide(esc, "escalate", "DL2")

    def test_departing_from_the_recommendation_needs_a_justification(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        with pytest.raises(InvalidInputError) as refused:
            decide(esc, "expand", "DL1", "too short")
        assert refused.value.problems[0].path == "/rationale"
        assert esc.decisions == []
        decision = decide(esc, "expand", "DL1", WHY)
        assert decision.follows_recommendation is False
        assert decision.rationale == WHY

    @pytest.mark.parametrize(
        ("action", "dose", "path"),
        [
            ("escalate", "DL3", "/dose_level"),
            ("escalate", "DL1", "/dose_level"),
            ("deescalate", "DL1", "/dose_level"),
            ("expand", "DL2", "/dose_level"),
            ("escalate", None, "/dose_level"),
            ("escalate", "DL9", "/dose_level"),
            ("jump", "DL2", "/action"),
        ],
    )
    def test_the_action_must_fit_the_dose_level(
        self, action: str, dose: str | None, path: str
    ) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        with pytest.raises(InvalidInputError) as refused:
            decide(esc, action, dose, WHY)
        assert refused.value.problems[0].path == path

    def test_a_too_toxic_dose_is_never_treated_again(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "NTT")
        decide(esc, "deescalate", "DL1")
        cohort(esc, "NNN")
        with pytest.raises(ConflictError, match="too toxic"):
            decide(esc, "escalate", "DL2", WHY)

    def test_a_dose_never_takes_more_than_six(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "expand", "DL1", WHY)
        cohort(esc, "NNN")
        with pytest.raises(ConflictError, match="already has 6 patients"):
            decide(esc, "expand", "DL1", WHY)

    def test_stop_ends_enrolment_and_declares_the_mtd(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "NTT")
        assert esc.recommendation().dose_level == "DL1"
        decide(esc, "deescalate", "DL1")
        cohort(esc, "NNT")
        advice = esc.recommendation()
        assert (advice.action, advice.dose_level, advice.mtd) == ("stop", "DL1", "DL1")
        decision = decide(esc, "stop", "DL1")
        assert decision.follows_recommendation is True
        assert esc.stopped
        assert esc.mtd == "DL1"
        assert {esc.level_status(code) for code in ("DL1", "DL2", "DL3")} == {"closed", "halted"}
        with pytest.raises(NoSlotError, match="study is stopped"):
            enrol(esc)
        with pytest.raises(ConflictError, match="already stopped"):
            decide(esc, "stop", None, WHY)

    def test_the_src_may_stop_at_any_time_with_a_justification(self) -> None:
        esc = escalation()
        enrol(esc)
        decision = decide(esc, "stop", None, "Sponsor halted the programme for a CMC issue.")
        assert decision.follows_recommendation is False
        assert decision.opens is None
        assert esc.mtd is None

    def test_worked_case_fifteen_patients(self) -> None:
        # PROTOCOL.md: 1NNN 2NNN 3NTT 2NTT 1NNN -> stop, MTD 1.
        esc = escalation()
        for outcomes, action, dose in [
            ("NNN", "escalate", "DL2"),
            ("NNN", "escalate", "DL3"),
            ("NTT", "deescalate", "DL2"),
            ("NTT", "deescalate", "DL1"),
            ("NNN", "stop", "DL1"),
        ]:
            cohort(esc, outcomes)
            assert decide(esc, action, dose).follows_recommendation
        assert esc.outcomes() == "1NNN 2NNN 3NTT 2NTT 1NNN"
        assert len(esc.slots) == 15
        assert esc.mtd == "DL1"


class TestRefusals:
    """What PROTOCOL.md forbids is refused (409) even with a written justification."""

    def refused(self, esc: DoseEscalation, action: str, dose: str | None, match: str) -> None:
        decisions = list(esc.decisions)
        with pytest.raises(ConflictError, match=match):
            decide(esc, action, dose, WHY)
        assert esc.decisions == decisions
        assert not esc.stopped

    def test_a_dose_never_treated_is_never_the_mtd(self) -> None:
        self.refused(escalation(), "stop", "DL3", r"DL3 cannot be declared the MTD: it has 0")

    def test_the_mtd_needs_mtd_requires_evaluated_patients(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        self.refused(esc, "stop", "DL1", r"3 evaluated patient\(s\) and the study requires 6")
        lenient = escalation(mtd_requires=3)
        cohort(lenient, "NNN")
        decision = decide(lenient, "stop", "DL1", WHY)
        assert (decision.follows_recommendation, lenient.mtd) == (False, "DL1")

    def test_a_too_toxic_dose_is_never_the_mtd(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "NTT")
        self.refused(esc, "stop", "DL2", "2 DLTs in 3 evaluated patients make it too toxic")

    def test_no_mtd_while_outcomes_are_pending_there(self) -> None:
        esc = escalation(mtd_requires=3)
        cohort(esc, "NNT")
        decide(esc, "expand", "DL1")
        enrol(esc, 3)
        self.refused(esc, "stop", "DL1", r"outcome of 3 patient\(s\) there is still pending")

    def test_no_mtd_above_a_too_toxic_dose(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "NNN")
        decide(esc, "expand", "DL2", WHY)
        cohort(esc, "NNN")
        decide(esc, "deescalate", "DL1", WHY)
        cohort(esc, "TT")
        assert esc.level_status("DL1") == "halted"
        self.refused(esc, "stop", "DL2", "above DL1, which is halted")
        decision = decide(esc, "stop", None)
        assert (decision.follows_recommendation, esc.mtd) == (True, None)

    def test_no_dose_above_a_halted_one_is_opened(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "TT")
        self.refused(esc, "escalate", "DL3", "cannot open DL3: it is above DL2, which is halted")

    def test_escalation_needs_the_current_dose_cleared(self) -> None:
        esc = escalation()
        cohort(esc, "NNT")
        self.refused(esc, "escalate", "DL2", r"cannot escalate from DL1: 1 DLT\(s\) in 3")
        decide(esc, "expand", "DL1")
        cohort(esc, "NNT")
        # 2 of 6: too toxic, and DL1 is the lowest dose.
        self.refused(esc, "escalate", "DL2", "above DL1, which is halted")

    def test_one_dlt_in_six_clears_the_dose(self) -> None:
        esc = escalation()
        cohort(esc, "NNT")
        decide(esc, "expand", "DL1")
        cohort(esc, "NNN")
        assert decide(esc, "escalate", "DL2").follows_recommendation

    @pytest.mark.parametrize("action", ["expand", "continue"])
    def test_a_too_toxic_level_is_not_expanded(self, action: str) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "NTT")
        self.refused(esc, action, "DL2", "too toxic")

    def test_a_closed_level_is_not_expanded(self) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "escalate", "DL2")
        cohort(esc, "NNN")
        with pytest.raises(InvalidInputError) as refused:
            decide(esc, "expand", "DL1", WHY)
        assert refused.value.problems[0].path == "/dose_level"

    def test_no_deescalation_below_the_first_dose(self) -> None:
        esc = escalation()
        cohort(esc, "NTT")
        with pytest.raises(InvalidInputError) as refused:
            decide(esc, "deescalate", "DL1", WHY)
        (problem,) = refused.value.problems
        assert problem.path == "/dose_level"
        assert "no dose level below DL1" in problem.message

    @pytest.mark.parametrize(
        ("action", "dose"),
        [("escalate", "DL2"), ("expand", "DL1"), ("continue", "DL1"), ("stop", "DL1")],
    )
    def test_nothing_is_decided_after_the_stop(self, action: str, dose: str) -> None:
        esc = escalation()
        cohort(esc, "NNN")
        decide(esc, "stop", None, WHY)
        with pytest.raises(ConflictError, match="already stopped"):
            decide(esc, action, dose, WHY)
        assert len(esc.decisions) == 1

    def test_a_more_cautious_mtd_is_allowed_and_flagged(self) -> None:
        esc = escalation()
        for outcomes, action, dose, why in [
            ("NNN", "expand", "DL1", WHY),
            ("NNN", "escalate", "DL2", ""),
            ("NNN", "expand", "DL2", WHY),
            ("NNT", "escalate", "DL3", ""),
        ]:
            cohort(esc, outcomes)
            decide(esc, action, dose, why)
        cohort(esc, "NTT")
        advice = esc.recommendation()
        assert (advice.action, advice.mtd) == ("stop", "DL2")
        decision = decide(esc, "stop", "DL1", WHY)
        assert decision.follows_recommendation is False
        assert esc.mtd == "DL1"


class TestState:
    def test_the_planned_state_reads_like_a_fresh_escalation(self) -> None:
        levels, plan = escalation_plan(STUDY)
        fresh = escalation()
        state = EscalationState.planned(levels, plan, fresh.created_on)
        assert state.levels == fresh.levels
        assert state.cohorts == fresh.cohorts
        assert state.enrolment() == fresh.enrolment()
        assert state.recommendation() == fresh.recommendation()
        assert state.level_counts(()) == fresh.level_counts(())


class TestReplay:
    def test_the_events_rebuild_the_same_state(self) -> None:
        esc = escalation()
        first, second, third = enrol(esc, 3)
        sign(esc, second, "X")
        for subject_id in (first, third, *enrol(esc)):
            sign(esc, subject_id, "N")
        decide(esc, "escalate", "DL2")
        cohort(esc, "TT")
        replayed: Any = None
        for domain_event in esc.collect_events():
            replayed = domain_event.mutate(replayed)
        assert isinstance(replayed, DoseEscalation)
        assert replayed.outcomes() == esc.outcomes() == "1NNN 2TT"
        assert replayed.slots == esc.slots
        assert replayed.halted == esc.halted
        assert replayed.decisions == esc.decisions
        assert replayed.cohorts == esc.cohorts


class TestPlan:
    def test_the_plan_comes_from_the_study_definition(self) -> None:
        levels, settings = escalation_plan(STUDY)
        assert [d["dose_level"] for d in levels] == ["DL1", "DL2", "DL3"]
        assert settings["mtd_requires"] == 6
        assert settings["max_subjects"] == 18

    def test_gaps_in_dose_numbers_are_refused(self) -> None:
        study = {**STUDY, "dose_levels": [{**STUDY["dose_levels"][0], "number": 2}]}
        with pytest.raises(ValueError, match="numbered"):
            escalation_plan(study)


ELIGIBLE: dict[str, Any] = {
    "criteria_met": True,
    "ctdna_positive": True,
    "cea_positive": True,
    "inc_ecog_0_to_1": True,
    "exc_cns_disorder": False,
}


def _subject(*entries: tuple[str, dict[str, Any]]) -> Subject:
    subject = Subject(subject_id="CHH-S1", site="CHH", screening_number="S1", audit=CRC)
    for index, (form, data) in enumerate(entries):
        subject.record_entry(f"e{index}", form, 1, "SCR", data, "sha", CRC)
    return subject


def _criteria(entry: Entry) -> list[str]:
    return ["criteria_met", "inc_ecog_0_to_1", "exc_cns_disorder"]


class TestEligibility:
    def test_consent_and_confirmed_eligibility_suffice(self) -> None:
        subject = _subject(
            ("informed_consent", {"consent_date": "2024-01-01"}), ("eligibility", ELIGIBLE)
        )
        assert enrolment_problems(subject, _criteria) == []

    def test_every_missing_piece_is_named(self) -> None:
        data = {**ELIGIBLE, "cea_positive": False, "exc_cns_disorder": True}
        del data["inc_ecog_0_to_1"]
        problems = enrolment_problems(_subject(("eligibility", data)), _criteria)
        assert problems == [
            "no informed consent is recorded",
            "eligibility cea_positive is not true",
            "exclusion criterion exc_cns_disorder is not recorded as absent",
            "inclusion criterion inc_ecog_0_to_1 is not recorded as met",
        ]

    def test_a_voided_eligibility_does_not_count(self) -> None:
        subject = _subject(("informed_consent", {}), ("eligibility", ELIGIBLE))
        subject.void_entry("e1", 1, CRC)
        assert enrolment_problems(subject, _criteria) == ["no eligibility assessment is recorded"]


class TestSignedOutcome:
    def test_only_a_valid_signature_counts(self) -> None:
        data = {"evaluable": True, "dlt": True, "ae_entry_ids": ["ae1"]}
        subject = _subject(("dlt_assessment", data), ("cart_infusion", {"dose_level": "DL1"}))
        assert signed_dlt_outcome(subject) is None
        subject.sign_entry("e0", "approval", "I approve.", PI)
        signed = signed_dlt_outcome(subject)
        assert signed is not None
        assert (signed.entry_id, signed.revision, signed.evaluable, signed.dlt) == (
            "e0",
            1,
            True,
            True,
        )
        changed = {**data, "dlt": False}
        subject.correct_entry("e0", 1, changed, [{"path": "/dlt", "old": True, "new": False}], CRC)
        assert signed_dlt_outcome(subject) is None

    def test_evaluable_needs_an_infusion(self) -> None:
        # PROTOCOL: "Evaluable for DLT: infused, and either had a DLT ... or completed day 28".
        data = {"evaluable": True, "dlt": False, "ae_entry_ids": []}
        subject = _subject(("dlt_assessment", data))
        subject.sign_entry("e0", "approval", "I approve.", PI)
        assert signed_dlt_outcome(subject) is None
        subject.record_entry("e1", "cart_infusion", 1, "D0", {"dose_level": "DL1"}, "sha", CRC)
        assert signed_dlt_outcome(subject) is not None

    def test_not_evaluable_carries_its_reason(self) -> None:
        data = {"evaluable": False, "dlt": False, "ae_entry_ids": [], "reason_not_evaluable": "x"}
        subject = _subject(("dlt_assessment", data))
        subject.sign_entry("e0", "approval", "I approve.", PI)
        signed = signed_dlt_outcome(subject)
        assert signed is not None
        assert (signed.evaluable, signed.dlt, signed.reason_not_evaluable) == (False, False, "x")
