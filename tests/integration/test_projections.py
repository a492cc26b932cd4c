"""The clinical projections against the real log: batching, rebuilds, as_of, enrolment, CLI."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ecrf.application import EcrfApplication
from ecrf.cli import app as cli
from ecrf.commands import CorrectEntry, RecordEntry, RegisterSubject, VoidEntry
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.domain.ids import subject_stream
from projections.as_of import replay_as_of
from projections.facts import ENROLLED, EntryFacts, dose_level_of, read_facts, study_zone
from projections.reading import load_facts
from projections.registry import build_runner
from projections.runner import ProjectionRunner
from projections.safety import SafetyTables, teae_report

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
                dict(row)
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
    incremental = {name: dump(runner, name) for name in runner.projections}
    for name in runner.projections:
        runner.rebuild(name)
    assert {name: dump(runner, name) for name in runner.projections} == incremental
    assert all(status["lag"] == 0 for status in runner.status())


def test_a_restarted_runner_resumes_where_it_stopped(
    application: EcrfApplication, runner: ProjectionRunner, settings: Settings
) -> None:
    enter_trial(application, subjects=1)
    runner.catch_up([SafetyTables.name])
    record(application, "CHH-S0", "adverse_event", "LOG", adverse_event(4))
    again = build_runner(application, settings)
    try:
        again.catch_up([SafetyTables.name])
        facts, position = load_facts(again, SafetyTables.name)
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
        application.recorder, application.mapper, [runner.projections[SafetyTables.name]], moment
    )
    try:
        with engine.connect() as conn:
            facts = read_facts(conn, SafetyTables.tables)
    finally:
        engine.dispose()
    assert replayed == position
    (row,) = teae_report(facts, application.forms.study).rows
    assert (row["teae_count"], row["worst_grade"]) == (1, 3)


@dataclass(frozen=True)
class Enrolled:
    """The shape of enrolment: a subject, a dose level, an event time (no class of ours yet)."""

    originator_id: UUID
    timestamp: datetime
    subject_id: str
    dose_level: str


def test_the_enrolment_dose_level_is_kept_until_an_infusion_says_otherwise(
    application: EcrfApplication, runner: ProjectionRunner
) -> None:
    subject, _ = application.register_subject(
        CRC, RegisterSubject(site="CHH", screening_number="S1")
    )
    runner.catch_up()
    projection = runner.projections[SafetyTables.name]
    enrolled = Enrolled(subject_stream("CHH-S1"), datetime.now(UTC), "CHH-S1", "DL2")
    with runner.engine.begin() as conn:
        assert isinstance(projection, SafetyTables)
        projection.enrolled(enrolled, conn, application.max_position())
    zone = study_zone(application.forms.study)
    facts, _ = load_facts(runner, SafetyTables.name)
    assert facts[0].enrolled_dose_level == "DL2"
    assert dose_level_of(facts[0], zone) == "DL2"
    record(
        application, subject.subject_id, "cart_infusion", "D0", {**INFUSION, "dose_level": "DL3"}
    )
    facts, _ = load_facts(runner, SafetyTables.name)
    assert dose_level_of(facts[0], zone) == "DL3"


@pytest.mark.skipif(ENROLLED is None, reason="Subject.Enrolled does not exist yet")
def test_the_enrolment_event_is_dispatched_when_it_exists() -> None:
    handler = EntryFacts.__dict__["process"].dispatcher.dispatch(ENROLLED)
    assert handler is EntryFacts.enrolled


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
        before = dump(runner, SafetyTables.name)
        cli_runner = CliRunner()
        result = cli_runner.invoke(cli, ["projections", "rebuild", "safety_tables"], env=env)
        assert result.exit_code == 0, result.output
        assert "safety_tables" in result.output
        assert dump(runner, SafetyTables.name) == before

        result = cli_runner.invoke(cli, ["projections", "rebuild", "--batch-size", "3"], env=env)
        assert result.exit_code == 0, result.output
        assert dump(runner, SafetyTables.name) == before

        record(application, "CHH-S0", "adverse_event", "LOG", adverse_event(2))
        result = cli_runner.invoke(cli, ["projections", "status"], env=env)
        assert result.exit_code == 0, result.output
        assert "patient_timeline" in result.output
        assert runner.status()[0]["lag"] > 0

        result = cli_runner.invoke(cli, ["projections", "run", "--once"], env=env)
        assert result.exit_code == 0, result.output
        assert all(status["lag"] == 0 for status in runner.status())

    def test_an_unknown_projection_is_refused(self, env: dict[str, str]) -> None:
        result = CliRunner().invoke(cli, ["projections", "rebuild", "nope"], env=env)
        assert result.exit_code == 2
        assert "unknown projection" in result.output
