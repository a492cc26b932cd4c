"""Projection tables that no longer match their definitions are replayed at start, and
batched writes leave exactly the rows that per-event writes leave."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    select,
    text,
)

from ecrf.application import EcrfApplication
from ecrf.commands import (
    CorrectEntry,
    CreateUser,
    RecordEntry,
    RegisterSubject,
    Sign,
    VoidEntry,
)
from ecrf.config import Settings
from ecrf.domain.access import Actor
from projections.clinical_facts import ClinicalFacts
from projections.facts import EntryFacts, fact_tables
from projections.registry import all_projections, build_runner
from projections.runner import (
    Projection,
    ProjectionRunner,
    flush_pending,
    make_engine,
    pending,
    tracking,
    writing,
)
from projections.safety import FORMS as SAFETY_FORMS
from projections.timeline import FORMS as TIMELINE_FORMS

CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))
PI = Actor("pi", "Ivan Petrov", ("investigator",), ("CHH",))
PASSWORD = "correct horse battery"
INFUSION = {
    "infusion_datetime": "2023-04-25T09:40:00+08:00",
    "dose_level": "DL1",
    "weight_kg": 62.0,
    "total_car_t_cells": 62_000_000,
}


def adverse_event(grade: int) -> dict[str, Any]:
    return {
        "term": "Fatigue",
        "onset_date": "2023-04-27",
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


def record(application: EcrfApplication, subject: str, form: str, data: Any) -> str:
    visit = "D0" if form == "cart_infusion" else "LOG"
    _, entry, _ = application.record_entry(
        CRC, subject, RecordEntry(form=form, visit=visit, data=data)
    )
    return entry.entry_id


def enter_trial(application: EcrfApplication, subjects: int = 3) -> None:
    """Infusions and AEs: corrected, voided and signed, so every facts handler runs."""
    application.create_admin("boot", PASSWORD, "Boot Admin")
    admin = Actor("boot", "Boot Admin", ("admin",), ())
    application.create_user(
        admin,
        CreateUser(
            username=PI.username,
            full_name=PI.full_name,
            password=PASSWORD,
            roles=list(PI.roles),
            sites=list(PI.sites),
        ),
    )
    for n in range(subjects):
        subject, _ = application.register_subject(
            CRC, RegisterSubject(site="CHH", screening_number=f"S{n}")
        )
        sid = subject.subject_id
        record(application, sid, "cart_infusion", INFUSION)
        kept = record(application, sid, "adverse_event", adverse_event(1))
        voided = record(application, sid, "adverse_event", adverse_event(2))
        application.correct_entry(
            CRC, sid, kept, CorrectEntry(changes={"grade": 3}, reason="source", expected_revision=1)
        )
        application.void_entry(CRC, sid, voided, VoidEntry(reason="dup", expected_revision=1))
        sign = Sign(username="pi", password=PASSWORD, meaning="approval", expected_revision=2)
        application.sign_entry(PI, sid, kept, sign)


def dump(engine: Engine, metadata: MetaData) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {
            table.name: [
                dict(row)
                for row in conn.execute(
                    select(table).order_by(*table.primary_key.columns)
                ).mappings()
            ]
            for table in metadata.sorted_tables
        }


def dump_all(runner: ProjectionRunner) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {name: dump(runner.engine, p.metadata) for name, p in runner.projections.items()}


# The clinical facts as a release before ``signed_position`` defined them.
old_metadata = MetaData()
fact_tables("clinical_facts", old_metadata)
old_metadata.remove(old_metadata.tables["clinical_facts_entries"])
Table(
    "clinical_facts_entries",
    old_metadata,
    Column("entry_id", String(64), primary_key=True),
    Column("stream", String(36), nullable=False, index=True),
    Column("form", String(64), nullable=False, index=True),
    Column("visit", String(16), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("data", JSON, nullable=False),
    Column("signed_revision", Integer),
    Column("recorded_position", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
)


class OldClinicalFacts(Projection):
    """The clinical facts projection under its old table definition (it keeps no rows here)."""

    name = ClinicalFacts.name
    metadata: ClassVar[MetaData] = old_metadata

    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """Nothing: only the tables and the tracking position matter to these tests."""


def test_a_changed_table_definition_is_replayed_at_start(
    application: EcrfApplication, settings: Settings
) -> None:
    enter_trial(application)
    engine = make_engine(settings.database.sqlalchemy_url())
    try:
        others = [p for p in all_projections() if p.name != ClinicalFacts.name]
        old = ProjectionRunner(
            application.recorder, application.mapper, engine, [*others, OldClinicalFacts()]
        )
        old.catch_up()
        assert old.position(ClinicalFacts.name) == application.max_position()
        kept = {p.name: old.position(p.name) for p in others}
    finally:
        engine.dispose()

    runner = build_runner(application, settings)
    try:
        # Only the changed projection starts again from zero; the others keep their rows.
        assert runner.reset_at_start == [ClinicalFacts.name]
        assert runner.position(ClinicalFacts.name) == 0
        assert {p.name: runner.position(p.name) for p in others} == kept
        runner.catch_up()
        assert all(status["lag"] == 0 for status in runner.status())
        incremental = dump_all(runner)
        signed = [
            row
            for row in incremental[ClinicalFacts.name]["clinical_facts_entries"]
            if row["signed_position"] is not None
        ]
        assert len(signed) == 3
        runner.rebuild()
        assert dump_all(runner) == incremental
    finally:
        runner.engine.dispose()


def test_tables_from_before_fingerprints_are_judged_by_their_columns(
    application: EcrfApplication, settings: Settings
) -> None:
    enter_trial(application, subjects=1)
    runner = build_runner(application, settings)
    try:
        runner.catch_up()
        before = dump_all(runner)
        # What a release without fingerprints and without the new column left behind.
        with runner.engine.begin() as conn:
            conn.execute(text("DROP TABLE projection_schemas"))
            conn.execute(text("ALTER TABLE clinical_facts_entries DROP COLUMN signed_position"))
    finally:
        runner.engine.dispose()

    again = build_runner(application, settings)
    try:
        assert again.reset_at_start == [ClinicalFacts.name]
        assert again.position(ClinicalFacts.name) == 0
        again.catch_up()
        assert dump_all(again) == before
    finally:
        again.engine.dispose()

    # Now every fingerprint is stored and matches: nothing is replayed.
    record(application, "CHH-S0", "adverse_event", adverse_event(4))
    third = build_runner(application, settings)
    try:
        assert third.reset_at_start == []
        assert third.position(ClinicalFacts.name) == application.max_position() - 1
        third.catch_up()
        facts = dump(third.engine, ClinicalFacts.metadata)
        safety = [r for r in facts["clinical_facts_entries"] if r["form"] in SAFETY_FORMS]
        assert len(safety) == 3  # infusion, corrected AE, new AE
    finally:
        third.engine.dispose()


def test_projections_of_earlier_releases_are_dropped_at_start(
    application: EcrfApplication, settings: Settings
) -> None:
    """A store upgraded from five copies of the clinical facts keeps none of the old ones."""
    enter_trial(application, subjects=1)
    engine = make_engine(settings.database.sqlalchemy_url())
    try:
        # What the release before ClinicalFacts left: a facts projection per report.
        others = [p for p in all_projections() if p.name != ClinicalFacts.name]
        ProjectionRunner(
            application.recorder, application.mapper, engine, [*others, OldTimeline()]
        ).catch_up()
        assert {"patient_timeline_subjects", "patient_timeline_entries"} <= tables_in(engine)
    finally:
        engine.dispose()

    runner = build_runner(application, settings)
    try:
        assert not {"patient_timeline_subjects", "patient_timeline_entries"} & tables_in(
            runner.engine
        )
        with runner.engine.connect() as conn:
            names = set(conn.execute(select(tracking.c.name)).scalars())
        assert names == set(runner.projections)
        runner.catch_up()
        assert [s["name"] for s in runner.status()] == list(runner.projections)
    finally:
        runner.engine.dispose()


def tables_in(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


timeline_metadata = MetaData()
timeline_tables = fact_tables("patient_timeline", timeline_metadata)


class OldTimeline(EntryFacts):
    """The patient timeline as a projection of its own, as an earlier release kept it."""

    name = "patient_timeline"
    metadata = timeline_metadata
    tables = timeline_tables
    forms = TIMELINE_FORMS


def test_batches_of_one_and_of_everything_write_the_same_rows(
    application: EcrfApplication, settings: Settings
) -> None:
    """Rows pending in a batch are changed in memory; across batches, in the tables."""
    runner = build_runner(application, settings)
    try:
        runner.batch_size = 1
        enter_trial(application)
        runner.catch_up()
        one_by_one = dump_all(runner)
        assert one_by_one[ClinicalFacts.name]["clinical_facts_entries"]
        runner.batch_size = 10_000
        runner.rebuild()
        assert dump_all(runner) == one_by_one
        runner.batch_size = 3
        runner.rebuild(ClinicalFacts.name)
        assert dump_all(runner) == one_by_one
        facts_rows = one_by_one[ClinicalFacts.name]["clinical_facts_entries"]
        assert {row["revision"] for row in facts_rows if row["form"] == "adverse_event"} == {2}
    finally:
        runner.engine.dispose()


flaky_metadata = MetaData()
flaky_rows = Table(
    "flaky_events",
    flaky_metadata,
    Column("position", BigInteger, primary_key=True),
    Column("topic", String(200), nullable=False),
)


class Flaky(Projection):
    """One row per event; fails once, in the middle of its first batch."""

    name = "flaky"
    metadata: ClassVar[MetaData] = flaky_metadata

    def __init__(self) -> None:
        self.failed = False

    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """A pending row per event; the third event fails the first time."""
        pending(conn).add(
            flaky_rows, position, {"position": position, "topic": type(domain_event).__name__}
        )
        if position == 3 and not self.failed:
            self.failed = True
            raise RuntimeError("a handler failed")


def test_a_failed_batch_leaves_nothing_pending_behind(
    application: EcrfApplication, settings: Settings
) -> None:
    """The rows buffered before a handler failed are not written by the next batch."""
    enter_trial(application, subjects=1)
    engine = make_engine(settings.database.sqlalchemy_url())
    try:
        runner = ProjectionRunner(application.recorder, application.mapper, engine, [Flaky()])
        with pytest.raises(RuntimeError):
            runner.catch_up()
        assert runner.position(Flaky.name) == 0
        runner.catch_up()
        rows = dump(engine, flaky_metadata)["flaky_events"]
        assert [row["position"] for row in rows] == list(range(1, application.max_position() + 1))
    finally:
        engine.dispose()


class Broken(Flaky):
    """Fails at the third event until it is mended."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """As Flaky, but failing every time while broken."""
        self.failed = not self.broken
        super().process(domain_event, conn, position)


def test_a_failing_projection_holds_back_only_itself(
    application: EcrfApplication, settings: Settings
) -> None:
    """Projections catch up together; while one fails, the others still move on."""
    enter_trial(application, subjects=1)
    broken = Broken()
    engine = make_engine(settings.database.sqlalchemy_url())
    try:
        runner = ProjectionRunner(
            application.recorder, application.mapper, engine, [*all_projections(), broken]
        )
        with pytest.raises(RuntimeError):
            runner.catch_up()
        head = application.max_position()
        others = [name for name in runner.projections if name != broken.name]
        assert runner.position(broken.name) == 0
        assert {name: runner.position(name) for name in others} == dict.fromkeys(others, head)
        broken.broken = False
        runner.catch_up()
        assert all(status["lag"] == 0 for status in runner.status())
        rows = dump(engine, flaky_metadata)["flaky_events"]
        assert [row["position"] for row in rows] == list(range(1, head + 1))
    finally:
        engine.dispose()


wide_metadata = MetaData()
wide_rows = Table(
    "wide_values",
    wide_metadata,
    Column("key", String(16), primary_key=True),
    Column("number", BigInteger, nullable=False),
    Column("data", JSON, nullable=False),
)


def test_a_batch_orjson_cannot_write_is_bound_row_by_row(settings: Settings) -> None:
    """Rows normally go in as one JSON document; a value orjson refuses falls back intact."""
    engine = make_engine(settings.database.sqlalchemy_url())
    try:
        wide_metadata.create_all(engine)
        huge = 2**70  # beyond orjson's 64-bit integers, still a JSON number
        plain = {"key": "plain", "number": 2**62, "data": {"n": 1.5, "text": "é"}}
        with writing(engine) as conn:
            rows = pending(conn)
            rows.add(wide_rows, "plain", plain)
            rows.add(wide_rows, "huge", {"key": "huge", "number": 7, "data": {"n": huge}})
            flush_pending(conn)
        with writing(engine) as conn:
            rows = pending(conn)
            for key in ("a", "b"):
                rows.add(wide_rows, key, {"key": key, "number": -1, "data": [key, None]})
            flush_pending(conn)
        stored = dump(engine, wide_metadata)["wide_values"]
        assert {row["key"]: (row["number"], row["data"]) for row in stored} == {
            "a": (-1, ["a", None]),
            "b": (-1, ["b", None]),
            "huge": (7, {"n": huge}),
            "plain": (2**62, {"n": 1.5, "text": "é"}),
        }
    finally:
        engine.dispose()


class Colliding(Flaky):
    """At position 5 writes a row under the key position 1 already has: its INSERT fails."""

    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """A pending row per event, keyed by position, except that 5 takes 1's key."""
        key = 1 if position == 5 and not self.failed else position
        pending(conn).add(flaky_rows, key, {"position": key, "topic": type(domain_event).__name__})


@pytest.mark.parametrize("failing", [Broken, Colliding], ids=["handler", "write"])
def test_a_rebuild_failing_part_way_keeps_the_batches_it_committed(
    application: EcrfApplication, settings: Settings, failing: type[Flaky]
) -> None:
    """A rebuild commits batch by batch: a failing handler or write stops it after the last."""
    enter_trial(application, subjects=1)
    projection = failing()
    engine = make_engine(settings.database.sqlalchemy_url())
    try:
        runner = ProjectionRunner(application.recorder, application.mapper, engine, [projection])
        runner.batch_size = 2
        with pytest.raises(Exception):  # noqa: B017, PT011 - the handler's or the database's error
            runner.rebuild()
        committed = runner.position(projection.name)
        assert committed == (2 if failing is Broken else 4)
        rows = dump(engine, flaky_metadata)["flaky_events"]
        assert [row["position"] for row in rows] == list(range(1, committed + 1))
        if isinstance(projection, Broken):
            projection.broken = False
        projection.failed = True
        runner.rebuild()
        head = application.max_position()
        assert runner.position(projection.name) == head
        rows = dump(engine, flaky_metadata)["flaky_events"]
        assert [row["position"] for row in rows] == list(range(1, head + 1))
    finally:
        engine.dispose()


def test_a_table_dropped_by_hand_is_created_again_at_start(
    application: EcrfApplication, settings: Settings
) -> None:
    """Start-up reads the catalogue once; a missing table of a known projection returns."""
    runner = build_runner(application, settings)
    expected = {table for p in runner.projections.values() for table in p.metadata.tables}
    try:
        assert expected <= tables_in(runner.engine)
        with runner.engine.begin() as conn:
            conn.execute(text("DROP TABLE query_list"))
    finally:
        runner.engine.dispose()
    restarted = build_runner(application, settings)
    try:
        assert expected <= tables_in(restarted.engine)
        assert restarted.reset_at_start == []
    finally:
        restarted.engine.dispose()


@pytest.mark.parametrize("fails", [False, True], ids=["completing", "failing"])
def test_a_rebuild_leaves_the_process_and_its_connection_as_they_were(
    application: EcrfApplication, settings: Settings, fails: bool
) -> None:
    """The collector, GIL switching and SQLite settings a rebuild tunes are put back."""
    enter_trial(application, subjects=1)
    engine = make_engine(settings.database.sqlalchemy_url())
    pragmas = ("cache_size", "wal_autocheckpoint", "secure_delete", "synchronous")

    def connection_settings() -> dict[str, Any]:
        if engine.dialect.name != "sqlite":
            return {}
        with engine.connect() as conn:
            return {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in pragmas}

    try:
        projection = Broken()
        projection.broken = fails
        runner = ProjectionRunner(application.recorder, application.mapper, engine, [projection])
        runner.batch_size = 2
        process = (gc.get_threshold(), sys.getswitchinterval())
        connection = connection_settings()
        with contextlib.suppress(RuntimeError):
            runner.rebuild()
        assert runner.position(projection.name) == (2 if fails else application.max_position())
        assert (gc.get_threshold(), sys.getswitchinterval()) == process
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]  # the one used throughout
        assert connection_settings() == connection
    finally:
        engine.dispose()
