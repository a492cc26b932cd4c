"""The clinical projections against the real log: batching, rebuilds, as_of, enrolment, CLI."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ecrf.application import EcrfApplication
from ecrf.cli import app as cli
from ecrf.clinical.values import study_zone
from ecrf.commands import (
    CorrectEntry,
    CreateUser,
    DecideDose,
    EnrolSubject,
    MigrateEntry,
    RecordEntry,
    RegisterSubject,
    Sign,
    VoidEntry,
)
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.domain.escalation import EscalationRules
from projections.as_of import replay_as_of
from projections.clinical_facts import ClinicalFacts
from projections.dose_cohorts import DoseCohorts, load_dose_cohorts
from projections.facts import (
    dose_level_of,
    read_facts,
)
from projections.reading import load_facts
from projections.registry import build_runner
from projections.runner import ProjectionRunner
from projections.safety import FORMS as SAFETY_FORMS
from projections.safety import teae_report
from tests.rows import comparable

CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))
INFUSION = {
    "infusion_datetime": "2023-04-25T09:40:00+08:00",
    "dose_level": "DL1",
    "weight_kg": 62.0,
    "total_car_t_cells": 62_000_000,
}


def adverse_event(grade: int, onset: str = "2023-04-27") -> dict[str, Any]:
    return {
        "term": "Fatigue",
        "onset_date": onset,
        "ongoing": True,
        "grade": grade,
        "serious": False,
        "relationship": "possible",
    }


@pytest.fixture
def application(settings: Settings) -> Iterator[EcrfApplication]:
    app = EcrfApplication(settings)
    yield app
    app.close()


@pytest.fixture
def runner(application: EcrfApplication, settings: Settings) -> Iterator[ProjectionRunner]:
    projections = build_runner(application, settings)
    yield projections
    projections.engine.dispose()


def record(application: EcrfApplication, subject: str, form: str, visit: str, data: Any) -> str:
    _, entry, _ = application.record_entry(
        CRC, subject, RecordEntry(form=form, visit=visit, data=data)
    )
    return entry.entry_id


def enter_trial(application: EcrfApplication, subjects: int = 3) -> list[str]:
    """Subjects with an infusion and a few AEs, one corrected and one voided each."""
    ids = []
    for n in range(subjects):
        subject, _ = application.register_subject(
            CRC, RegisterSubject(site="CHH", screening_number=f"S{n}")
        )
        ids.append(subject.subject_id)
        record(application, subject.subject_id, "cart_infusion", "D0", INFUSION)
        corrected = record(
            application, subject.subject_id, "adverse_event", "LOG", adverse_event(1)
        )
        voided = record(application, subject.subject_id, "adverse_event", "LOG", adverse_event(2))
        application.correct_entry(
            CRC,
            subject.subject_id,
            corrected,
            CorrectEntry(changes={"grade": 3}, reason="source says 3", expected_revision=1),
        )
        application.void_entry(
            CRC, subject.subject_id, voided, VoidEntry(reason="duplicate", expected_revision=1)
        )
    return ids


def dump(runner: ProjectionRunner, name: str) -> dict[str, list[dict[str, Any]]]:
    projection = runner.projections[name]
    with runner.engine.connect() as conn:
        return {
            table.name: [
                comparable(row)
                for row in conn.execute(
                    select(table).order_by(*table.primary_key.columns)
                ).mappings()
            ]
            for table in projection.metadata.sorted_tables
        }


def test_small_batches_and_a_rebuild_agree(
    application: EcrfApplication, runner: ProjectionRunner
) -> None:
    runner.batch_size = 2
    application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S9"))
    runner.catch_up()
    enter_trial(application)
    runner.catch_up()
    escalation = Escalation(application)
    escalation.open_and_escalate()
    escalation.halt_and_deescalate()
    runner.catch_up()
    incremental = {name: dump(runner, name) for name in runner.projections}
    assert all(incremental[DoseCohorts.name].values())  # every dose-cohort table has rows
    for name in runner.projections:
        runner.rebuild(name)
    assert {name: dump(runner, name) for name in runner.projections} == incremental
    assert all(status["lag"] == 0 for status in runner.status())


def test_a_restarted_runner_resumes_where_it_stopped(
    application: EcrfApplication, runner: ProjectionRunner, settings: Settings
) -> None:
    enter_trial(application, subjects=1)
    runner.catch_up([ClinicalFacts.name])
    record(application, "CHH-S0", "adverse_event", "LOG", adverse_event(4))
    again = build_runner(application, settings)
    try:
        again.catch_up([ClinicalFacts.name])
        facts, position = load_facts(again, SAFETY_FORMS)
    finally:
        again.engine.dispose()
    assert position == application.max_position()
    (row,) = teae_report(facts, application.forms.study).rows
    assert (row["teae_count"], row["worst_grade"]) == (2, 4)


def test_as_of_replays_exactly_the_events_up_to_the_moment(
    application: EcrfApplication, runner: ProjectionRunner
) -> None:
    (subject,) = enter_trial(application, subjects=1)
    moment = datetime.now(UTC)
    position = application.max_position()
    record(application, subject, "adverse_event", "LOG", adverse_event(4))
    engine, replayed = replay_as_of(
        application.recorder, application.mapper, [ClinicalFacts(SAFETY_FORMS)], moment
    )
    try:
        with engine.connect() as conn:
            facts = read_facts(conn, ClinicalFacts.tables)
    finally:
        engine.dispose()
    assert replayed == position
    (row,) = teae_report(facts, application.forms.study).rows
    assert (row["teae_count"], row["worst_grade"]) == (1, 3)


def test_a_migrated_entry_is_read_at_its_new_revision_incrementally_and_rebuilt(
    application: EcrfApplication, runner: ProjectionRunner
) -> None:
    (subject,) = enter_trial(application, subjects=1)
    _, entry, _ = application.record_entry(
        CRC,
        subject,
        RecordEntry(form="adverse_event", version=1, visit="LOG", data=adverse_event(2)),
    )
    # Corrected first, so the migration has a revision (2) to keep.
    application.correct_entry(
        CRC,
        subject,
        entry.entry_id,
        CorrectEntry(changes={"grade": 4}, reason="r", expected_revision=1),
    )
    runner.catch_up()
    manager = Actor("dm", "Dana Data", ("data_manager",), ())
    command = MigrateEntry(to_version=2, reason="adverse_event v2 released")
    _, migration, _ = application.migrate_entry(manager, subject, entry.entry_id, command)
    assert (migration.from_version, migration.to_version, migration.changes) == (1, 2, [])
    runner.catch_up()
    facts, position = load_facts(runner, SAFETY_FORMS)
    assert position == application.max_position()
    [migrated] = [e for e in facts[0].entries if e.entry_id == entry.entry_id]
    assert (migrated.revision, migrated.data["grade"]) == (2, 4)
    (row,) = teae_report(facts, application.forms.study).rows
    assert (row["teae_count"], row["worst_grade"]) == (2, 4)
    incremental = {name: dump(runner, name) for name in runner.projections}
    for name in runner.projections:
        runner.rebuild(name)
    assert {name: dump(runner, name) for name in runner.projections} == incremental


def test_the_enrolment_dose_level_is_kept_until_an_infusion_says_otherwise(
    application: EcrfApplication, runner: ProjectionRunner
) -> None:
    subject, _ = application.register_subject(
        CRC, RegisterSubject(site="CHH", screening_number="S1")
    )
    for form in ("informed_consent", "eligibility"):
        example = copy.deepcopy(application.forms.get(form).schema["examples"][0])
        record(application, subject.subject_id, form, "SCR", example)
    _, slot, _ = application.enrol_subject(CRC, subject.subject_id, EnrolSubject())
    zone = study_zone(application.forms.study)
    facts, _ = load_facts(runner, SAFETY_FORMS)  # Subject.Enrolled, as recorded
    assert (facts[0].enrolled_dose_level, slot.dose_level) == ("DL1", "DL1")
    assert facts[0].enrolled_at is not None
    assert dose_level_of(facts[0], zone) == "DL1"
    record(
        application, subject.subject_id, "cart_infusion", "D0", {**INFUSION, "dose_level": "DL3"}
    )
    facts, _ = load_facts(runner, SAFETY_FORMS)
    assert dose_level_of(facts[0], zone) == "DL3"


class TestCommandLine:
    @pytest.fixture
    def env(self, settings: Settings, database_url: str) -> dict[str, str]:
        return {
            "ECRF_DATABASE_URL": database_url,
            "ECRF_DATA_DIR": str(settings.data_dir),
            "ECRF_ARGON2_TIME_COST": "1",
            "ECRF_ARGON2_MEMORY_KIB": "1024",
        }

    def test_rebuild_status_and_run_once(
        self,
        application: EcrfApplication,
        runner: ProjectionRunner,
        env: dict[str, str],
    ) -> None:
        enter_trial(application)
        runner.catch_up()
        before = dump(runner, ClinicalFacts.name)
        cli_runner = CliRunner()
        result = cli_runner.invoke(cli, ["projections", "rebuild", "clinical_facts"], env=env)
        assert result.exit_code == 0, result.output
        assert "clinical_facts" in result.output
        assert dump(runner, ClinicalFacts.name) == before

        result = cli_runner.invoke(cli, ["projections", "rebuild", "--batch-size", "3"], env=env)
        assert result.exit_code == 0, result.output
        assert dump(runner, ClinicalFacts.name) == before

        record(application, "CHH-S0", "adverse_event", "LOG", adverse_event(2))
        result = cli_runner.invoke(cli, ["projections", "status"], env=env)
        assert result.exit_code == 0, result.output
        assert "clinical_facts" in result.output
        assert runner.status()[0]["lag"] > 0

        result = cli_runner.invoke(cli, ["projections", "run", "--once"], env=env)
        assert result.exit_code == 0, result.output
        assert all(status["lag"] == 0 for status in runner.status())

    def test_an_unknown_projection_is_refused(self, env: dict[str, str]) -> None:
        result = CliRunner().invoke(cli, ["projections", "rebuild", "nope"], env=env)
        assert result.exit_code == 2
        assert "unknown projection" in result.output


# Dose escalation: every DoseEscalation event, in the generic checks above and below -------

PASSWORD = "correct horse battery"
PI = Actor("pi", "Ivan Petrov", ("investigator",), ("CHH",))
SRC = Actor("src", "Sara Reyes", ("safety_reviewer",), ())


@dataclass
class Escalation:
    """A short 3+3 course through the commands, raising every DoseEscalation event."""

    application: EcrfApplication
    enrolled: int = 0

    def example(self, form: str, index: int = 0) -> dict[str, Any]:
        data: dict[str, Any] = copy.deepcopy(
            self.application.forms.get(form).schema["examples"][index]
        )
        return data

    def enrol(self, dose_level: str) -> str:
        """A consented, eligible subject enrolled at ``dose_level`` and infused there."""
        self.enrolled += 1
        subject, _ = self.application.register_subject(
            CRC, RegisterSubject(site="CHH", screening_number=f"E{self.enrolled:02d}")
        )
        subject_id = subject.subject_id
        for form in ("informed_consent", "eligibility"):
            record(self.application, subject_id, form, "SCR", self.example(form))
        _, slot, _ = self.application.enrol_subject(PI, subject_id, EnrolSubject())
        assert slot.dose_level == dose_level
        infusion = {**self.example("cart_infusion"), "dose_level": dose_level}
        record(self.application, subject_id, "cart_infusion", "D0", infusion)
        return subject_id

    def assess(self, subject_id: str, outcome: str) -> str:
        """A signed DLT assessment: ``N``, ``T`` or ``X`` (not evaluable)."""
        data = self.example("dlt_assessment", {"N": 0, "T": 1, "X": 2}[outcome])
        entry_id = record(self.application, subject_id, "dlt_assessment", "D28", data)
        self.sign(subject_id, entry_id)
        return entry_id

    def sign(self, subject_id: str, entry_id: str) -> None:
        command = Sign(username="pi", password=PASSWORD, meaning="approval")
        self.application.sign_entry(PI, subject_id, entry_id, command)

    def decide(self, action: str, dose_level: str) -> None:
        command = DecideDose(
            action=action,
            dose_level=dose_level,
            rationale="",
            password=PASSWORD,
            meaning="approval",
        )
        self.application.decide_dose(SRC, command)

    def open_and_escalate(self) -> None:
        """Users; DL1 cohort 1NXN with a replacement (SlotReleased); escalate to DL2."""
        self.application.create_admin("boot", PASSWORD, "Boot Admin")
        admin = Actor("boot", "Boot Admin", ("admin",), ())
        for actor in (PI, SRC):
            self.application.create_user(
                admin,
                CreateUser(
                    username=actor.username,
                    full_name=actor.full_name,
                    password=PASSWORD,
                    roles=list(actor.roles),
                    sites=list(actor.sites),
                ),
            )
        first, second, third = (self.enrol("DL1") for _ in range(3))
        self.assess(first, "N")
        self.assess(second, "X")
        self.assess(third, "N")
        self.assess(self.enrol("DL1"), "N")
        self.decide("escalate", "DL2")

    def halt_and_deescalate(self) -> None:
        """DL2 halts at its second DLT; one is withdrawn and signed again; back to DL1."""
        first, second = self.enrol("DL2"), self.enrol("DL2")
        self.assess(first, "T")
        entry_id = self.assess(second, "T")
        self.application.correct_entry(
            CRC,
            second,
            entry_id,
            CorrectEntry(changes={"comment": "reviewed"}, reason="typo", expected_revision=1),
        )
        self.sign(second, entry_id)
        self.decide("deescalate", "DL1")
        self.enrol("DL1")


def dump_engine(engine: Any, projection: Any) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {
            table.name: [
                comparable(row)
                for row in conn.execute(
                    select(table).order_by(*table.primary_key.columns)
                ).mappings()
            ]
            for table in projection.metadata.sorted_tables
        }


def test_every_projection_as_of_a_moment_is_its_state_then(
    application: EcrfApplication, runner: ProjectionRunner
) -> None:
    enter_trial(application, subjects=1)
    escalation = Escalation(application)
    escalation.open_and_escalate()
    runner.catch_up()
    then = {name: dump(runner, name) for name in runner.projections}
    moment = datetime.now(UTC)
    escalation.halt_and_deescalate()
    record(application, "CHH-S0", "adverse_event", "LOG", adverse_event(4))
    runner.catch_up()
    assert {name: dump(runner, name) for name in runner.projections} != then
    for name, projection in runner.projections.items():
        engine, _ = replay_as_of(application.recorder, application.mapper, [projection], moment)
        try:
            assert dump_engine(engine, projection) == then[name], name
        finally:
            engine.dispose()


def test_the_dose_cohorts_read_as_the_aggregate_holds_them(
    application: EcrfApplication, runner: ProjectionRunner
) -> None:
    escalation = Escalation(application)
    escalation.open_and_escalate()
    escalation.halt_and_deescalate()
    reading = load_dose_cohorts(runner, application.forms.study)
    live = application.escalation()
    assert reading.position == application.max_position()
    state: EscalationRules = reading.state
    for attribute in ("levels", "settings", "slots", "cohorts", "halted", "decisions", "stopped"):
        assert getattr(state, attribute) == getattr(live, attribute), attribute
    assert state.outcomes() == live.outcomes() == "1NNN 2TT"
    assert state.recommendation() == live.recommendation()
    assert state.enrolment() == live.enrolment()
    snapshot = application.cohorts(SRC)
    assert reading.infused == snapshot.infused
    assert state.level_counts(reading.infused) == live.level_counts(snapshot.infused)
    assert {s.subject_id for s in state.slots.values()} == set(reading.patients)
    infused_at = reading.infused_at(next(iter(reading.patients)))
    assert infused_at == datetime.fromisoformat("2023-04-25T09:40:00+08:00")
