"""The event store on SQLite and PostgreSQL: immutability, hash chaining, durability."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from ecrf.application import EcrfApplication
from ecrf.commands import CorrectEntry, CreateUser, RecordEntry, RegisterSubject
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.domain.errors import ConflictError
from ecrf.ledger.chain import GENESIS, event_hash

ADMIN = Actor("boot", "Boot Admin", ("admin",), ())
CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))


@pytest.fixture
def application(settings: Settings) -> Any:
    app = EcrfApplication(settings)
    yield app
    app.close()


def _subject_with_entry(application: EcrfApplication) -> tuple[str, str]:
    subject, _ = application.register_subject(
        CRC, RegisterSubject(site="CHH", screening_number="S1")
    )
    data = application.forms.get("demographics").schema["examples"][0]
    _, entry, _ = application.record_entry(
        CRC, subject.subject_id, RecordEntry(form="demographics", visit="SCR", data=data)
    )
    return subject.subject_id, entry.entry_id


def _raw_rows(application: EcrfApplication) -> list[tuple[Any, ...]]:
    table = application.table
    return table.execute(
        f"SELECT originator_id, originator_version, topic, state, {table.position_column} "
        f"FROM {table.qualified_name} ORDER BY {table.position_column}",
        fetch=True,
    )


class TestImmutability:
    def test_update_is_refused_by_the_database(self, application: EcrfApplication) -> None:
        _subject_with_entry(application)
        table = application.table
        with pytest.raises(Exception, match="immutable"):
            table.execute(f"UPDATE {table.qualified_name} SET topic = 'x'", commit=True)

    def test_delete_is_refused_by_the_database(self, application: EcrfApplication) -> None:
        _subject_with_entry(application)
        table = application.table
        before = len(_raw_rows(application))
        with pytest.raises(Exception, match="immutable"):
            table.execute(f"DELETE FROM {table.qualified_name}", commit=True)
        assert len(_raw_rows(application)) == before

    def test_guards_survive_a_restart(self, settings: Settings) -> None:
        EcrfApplication(settings).close()
        application = EcrfApplication(settings)
        try:
            table = application.table
            with pytest.raises(Exception, match="immutable"):
                table.execute(f"DELETE FROM {table.qualified_name}", commit=True)
        finally:
            application.close()


class TestHashChain:
    def test_every_stream_is_chained_from_genesis(self, application: EcrfApplication) -> None:
        subject_id, entry_id = _subject_with_entry(application)
        application.correct_entry(
            CRC,
            subject_id,
            entry_id,
            CorrectEntry(changes={"weight_kg": 70.0}, reason="typo", expected_revision=1),
        )
        previous: dict[str, str] = {}
        rows = _raw_rows(application)
        assert rows
        for originator_id, version, topic, state, _ in rows:
            stream = str(originator_id)
            if len(stream) == 32:  # SQLite stores UUIDs as hex
                stream = (
                    f"{stream[:8]}-{stream[8:12]}-{stream[12:16]}-{stream[16:20]}-{stream[20:]}"
                )
            document = orjson.loads(bytes(state))
            stored = document.pop("hash")
            assert document["prev_hash"] == previous.get(stream, GENESIS)
            assert event_hash(stream, version, topic, document) == stored
            previous[stream] = stored

    def test_stored_state_is_canonical_json(self, application: EcrfApplication) -> None:
        _subject_with_entry(application)
        for *_, state, _ in _raw_rows(application):
            raw = bytes(state)
            assert raw == orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)


class TestDurability:
    def test_a_new_instance_sees_everything_acknowledged(self, settings: Settings) -> None:
        first = EcrfApplication(settings)
        subject_id, entry_id = _subject_with_entry(first)
        first.close()
        second = EcrfApplication(settings)
        try:
            subject = second.subject(CRC, subject_id)
            assert subject.entry(entry_id).revision == 1
        finally:
            second.close()

    def test_seeding_and_bootstrap_happen_once(self, settings: Settings) -> None:
        from dataclasses import replace

        with_admin = replace(settings, bootstrap_admin="root:correct horse battery")
        EcrfApplication(with_admin).close()
        application = EcrfApplication(with_admin)
        try:
            assert application.user_view("root")["roles"] == ["admin"]
            assert not application.bootstrap_admin("other:correct horse battery")
            assert len(application.registry().sites) == 1
        finally:
            application.close()


def test_concurrent_corrections_of_one_entry_have_one_winner(
    application: EcrfApplication,
) -> None:
    subject_id, entry_id = _subject_with_entry(application)
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def correct(weight: float) -> None:
        barrier.wait()
        command = CorrectEntry(changes={"weight_kg": weight}, reason="r", expected_revision=1)
        try:
            application.correct_entry(CRC, subject_id, entry_id, command)
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=correct, args=(60.0 + i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["ok"]
    assert application.subject(CRC, subject_id).entry(entry_id).revision == 2


def test_concurrent_entries_on_one_casebook_all_land(application: EcrfApplication) -> None:
    subject, _ = application.register_subject(
        CRC, RegisterSubject(site="CHH", screening_number="S2")
    )
    data = application.forms.get("adverse_event").schema["examples"][0]
    barrier = threading.Barrier(5)
    errors: list[Exception] = []

    def record() -> None:
        barrier.wait()
        try:
            application.record_entry(
                CRC, subject.subject_id, RecordEntry(form="adverse_event", visit="LOG", data=data)
            )
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=record) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(application.subject(CRC, subject.subject_id).entries) == 5


def test_user_creation_needs_the_admin_role(application: EcrfApplication) -> None:
    from ecrf.domain.errors import ForbiddenError

    command = CreateUser(
        username="x1", full_name="X", password="correct horse battery", roles=["monitor"]
    )
    with pytest.raises(ForbiddenError):
        application.create_user(CRC, command)
    assert application.create_user(ADMIN, command).username == "x1"
