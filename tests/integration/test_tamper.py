"""The tamper suite: an attacker with database access, on SQLite and PostgreSQL.

The attacker drops the immutability triggers and edits the events table with plain
SQL. Verification reads the table with its own connection (as `ecrf verify` does) and
must name every change by kind and place. Cases needing seals (a stream's last event
or a whole stream deleted, the tail truncated) seal before tampering.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest

from ecrf.application import EcrfApplication
from ecrf.cli_ledger import open_log
from ecrf.commands import AddSite, CorrectEntry, RecordEntry, RegisterSubject
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.domain.ids import ledger_stream, subject_stream
from ecrf.ledger.chain import HASH_FIELD, seal_state
from ecrf.ledger.readers import read_held_seals, verify_export, verify_log
from ecrf.ledger.records import LEDGER_STREAM, SEALED_TOPIC
from ecrf.ledger.seals import Seal, SealKey, signed_message
from ecrf.ledger.verify import Kind, Problem, Report

CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))
FDA = Actor("fda", "Food and Drug", ("regulator",), ())
CRA = Actor("cra", "Chris Ra", ("monitor",), ("CHH",))
ADMIN = Actor("admin", "Ada Admin", ("admin",), ())
RJH_CRC = Actor("rjh_crc", "Rui Jin", ("site_staff",), ("RJH",))


class Attacker:
    """Raw SQL on the events table, after dropping the immutability triggers."""

    def __init__(self, application: EcrfApplication) -> None:
        self.table = application.table
        if self.table.engine == "sqlite":
            for op in ("update", "delete"):
                self._run(f"DROP TRIGGER IF EXISTS {self.table.table}_refuse_{op}")
        else:
            for name in ("refuse_change", "refuse_truncate"):
                self._run(
                    f'DROP TRIGGER IF EXISTS "{self.table.table}_{name}" '
                    f"ON {self.table.qualified_name}"
                )

    def _run(self, sql: str, params: list[Any] | None = None) -> None:
        self.table.execute(sql, params or [], commit=True)

    @property
    def _pos(self) -> str:
        return self.table.position_column

    def _key(self, stream: UUID) -> Any:
        return stream.hex if self.table.engine == "sqlite" else stream

    def row(self, position: int) -> tuple[UUID, int, str, bytes]:
        """The stream, version, topic and state stored at a position."""
        rows = self.table.execute(
            f"SELECT originator_id, originator_version, topic, state "
            f"FROM {self.table.qualified_name} WHERE {self._pos} = ?",
            [position],
            fetch=True,
        )
        (stream, version, topic, state) = rows[0]
        return UUID(str(stream)), int(version), str(topic), bytes(state)

    def set_state(self, position: int, state: bytes) -> None:
        """Overwrite one event's stored bytes."""
        self._run(
            f"UPDATE {self.table.qualified_name} SET state = ? WHERE {self._pos} = ?",
            [state, position],
        )

    def delete(self, *positions: int) -> None:
        """Delete events by position."""
        for position in positions:
            self._run(f"DELETE FROM {self.table.qualified_name} WHERE {self._pos} = ?", [position])

    def delete_after(self, position: int) -> None:
        """Truncate the log after a position."""
        self._run(f"DELETE FROM {self.table.qualified_name} WHERE {self._pos} > ?", [position])

    def insert(
        self, stream: UUID, version: int, topic: str, state: bytes, position: int | None = None
    ) -> int:
        """Insert a row (at a chosen position, or wherever the database puts it)."""
        columns = "originator_id, originator_version, topic, state"
        values: list[Any] = [self._key(stream), version, topic, state]
        if position is not None:
            columns += f", {self._pos}"
            values.append(position)
        self._run(
            f"INSERT INTO {self.table.qualified_name} ({columns}) VALUES (?, ?, ?, ?"
            + (", ?" if position is not None else "")
            + ")",
            values,
        )
        return self.table.stream_positions(stream)[version]

    def shift_after(self, position: int) -> None:
        """Move every later event one position up, to make room at ``position + 1``."""
        far = 1_000_000_000
        table = self.table.qualified_name
        self._run(
            f"UPDATE {table} SET {self._pos} = {self._pos} + {far} WHERE {self._pos} > ?",
            [position],
        )
        self._run(
            f"UPDATE {table} SET {self._pos} = {self._pos} - {far - 1} WHERE {self._pos} > ?", [far]
        )


@dataclass
class Store:
    """A store with four casebooks, two seals, and an attacker at the ready."""

    application: EcrfApplication
    settings: Settings
    streams: dict[str, UUID]
    seals: list[Seal]

    def positions(self, name: str) -> dict[int, int]:
        """Version -> log position of one stream."""
        stream = self.streams[name] if name in self.streams else UUID(name)
        return self.application.table.stream_positions(stream)

    def attack(self) -> Attacker:
        """Become the attacker."""
        return Attacker(self.application)

    def verify(self, *, held: bool = True, key: SealKey | None = None) -> Report:
        """What `ecrf verify --database` says: raw rows, the server's key, held seals."""
        trusted = key or self.application.ledger.key
        source = open_log(self.settings.database)
        try:
            return verify_log(
                source,
                trusted_keys={trusted.key_id: trusted.public_key},
                held_seals=read_held_seals(self.application.ledger.mirror_path) if held else [],
            )
        finally:
            source.close()


def _stored(state: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(state)
    return value


def _rehash(stream: UUID, version: int, topic: str, state: dict[str, Any]) -> bytes:
    """What a careful attacker does: recompute the event's hash after changing it."""
    body = {k: v for k, v in state.items() if k != HASH_FIELD}
    return seal_state(str(stream), version, topic, body, body["prev_hash"])


def _has(report: Report, kind: Kind, **where: Any) -> Problem:
    for problem in report.problems:
        if problem.kind == kind and all(getattr(problem, k) == v for k, v in where.items()):
            return problem
    raise AssertionError(
        f"no {kind.value} at {where}; found:\n" + "\n".join(str(p) for p in report.problems)
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    application = EcrfApplication(settings)
    data = application.forms.get("demographics").schema["examples"][0]
    entries: dict[str, str] = {}

    def subject(number: str) -> None:
        subject, _ = application.register_subject(
            CRC, RegisterSubject(site="CHH", screening_number=number)
        )
        _, entry, _ = application.record_entry(
            CRC, subject.subject_id, RecordEntry(form="demographics", visit="SCR", data=data)
        )
        entries[number] = entry.entry_id

    def correct(number: str, revision: int) -> None:
        command = CorrectEntry(
            changes={"weight_kg": 62.0 + revision},
            reason="transcription",
            expected_revision=revision,
        )
        application.correct_entry(CRC, f"CHH-{number}", entries[number], command)

    for number in ("S1", "S2", "S3"):
        subject(number)
    correct("S1", 1)
    correct("S1", 2)  # S1 now has versions 1-4
    first = application.ledger.seal()
    subject("S4")
    correct("S1", 3)  # S1 version 5
    second = application.ledger.seal()
    assert first is not None
    assert second is not None
    streams = {n: subject_stream(f"CHH-{n}") for n in ("S1", "S2", "S3", "S4")}
    yield Store(application, settings, streams, [first, second])
    application.close()


def test_an_untouched_store_verifies_clean(store: Store) -> None:
    report = store.verify()
    assert report.ok, [str(p) for p in report.problems]
    assert report.seals == 2
    assert report.sealed_through == store.seals[1].position
    assert report.events == store.application.max_position()


def test_the_application_and_the_raw_reader_agree(store: Store) -> None:
    by_service = store.application.ledger.verify(FDA)
    by_reader = store.verify()
    assert by_service.to_dict() == by_reader.to_dict()


class TestChangedEvents:
    def test_one_byte_of_a_state_changed(self, store: Store) -> None:
        position = store.positions("S2")[2]
        state = store.attack().row(position)[3]
        index = state.index(b'"age":56') + len(b'"age":')
        store.attack().set_state(position, state[:index] + b"7" + state[index + 1 :])
        report = store.verify()
        _has(
            report,
            Kind.HASH_MISMATCH,
            position=position,
            stream=str(store.streams["S2"]),
            version=2,
        )

    def test_a_changed_state_with_its_hash_recomputed(self, store: Store) -> None:
        position = store.positions("S3")[2]
        stream, version, topic, state = store.attack().row(position)
        document = _stored(state)
        document["data"]["weight_kg"] = 99.0
        store.attack().set_state(position, _rehash(stream, version, topic, document))
        report = store.verify()
        # The chain on its own cannot tell (it is the stream's last event); the seal can.
        _has(report, Kind.REPLACED_EVENT, position=position, stream=str(stream), version=2)
        _has(report, Kind.SEAL_MISMATCH, position=store.seals[0].position)

    def test_two_events_states_swapped(self, store: Store) -> None:
        first, second = store.positions("S1")[2], store.positions("S2")[2]
        attacker = store.attack()
        a, b = attacker.row(first)[3], attacker.row(second)[3]
        attacker.set_state(first, b)
        attacker.set_state(second, a)
        report = store.verify()
        _has(report, Kind.HASH_MISMATCH, position=first, stream=str(store.streams["S1"]), version=2)
        _has(
            report, Kind.HASH_MISMATCH, position=second, stream=str(store.streams["S2"]), version=2
        )

    def test_bytes_rewritten_without_changing_the_content(self, store: Store) -> None:
        position = store.positions("S4")[1]
        state = store.attack().row(position)[3]
        store.attack().set_state(position, state.replace(b'{"audit":', b'{ "audit":', 1))
        # The hash covers the exact bytes, not just the JSON value they spell.
        _has(store.verify(), Kind.HASH_MISMATCH, position=position, version=1)


class TestRemovedEvents:
    def test_an_event_deleted_from_the_middle_of_a_stream(self, store: Store) -> None:
        positions = store.positions("S1")
        store.attack().delete(positions[2])
        report = store.verify()
        # Noticed where version 3 follows version 1.
        _has(
            report,
            Kind.MISSING_EVENT,
            position=positions[3],
            stream=str(store.streams["S1"]),
            version=2,
        )

    def test_the_last_event_of_a_stream_deleted(self, store: Store) -> None:
        store.attack().delete(store.positions("S3")[2])
        report = store.verify()
        sealed_at = store.seals[0].position  # the seal that recorded S3 at version 2
        _has(
            report,
            Kind.MISSING_EVENT,
            position=sealed_at,
            stream=str(store.streams["S3"]),
            version=2,
        )
        _has(report, Kind.SEAL_MISMATCH, position=sealed_at)

    def test_a_whole_stream_deleted(self, store: Store) -> None:
        store.attack().delete(*store.positions("S2").values())
        report = store.verify()
        _has(
            report,
            Kind.MISSING_STREAM,
            position=store.seals[0].position,
            stream=str(store.streams["S2"]),
            version=2,
        )

    def test_events_after_the_last_seal_truncated(self, store: Store) -> None:
        # The log is cut back to just after the first seal's own event: the second seal
        # goes with it, so only the copy of it kept outside the database can tell.
        first_seal_event = store.seals[0].event_position
        assert first_seal_event is not None
        store.attack().delete_after(first_seal_event)
        report = store.verify()
        _has(report, Kind.TRUNCATED, position=store.seals[1].position)

    def test_a_truncated_tail_is_invisible_without_a_seal_kept_elsewhere(
        self, store: Store
    ) -> None:
        first_seal_event = store.seals[0].event_position
        assert first_seal_event is not None
        store.attack().delete_after(first_seal_event)
        report = store.verify(held=False)
        assert report.ok  # documented limitation: the database alone cannot show it
        assert report.sealed_through == store.seals[0].position

    def test_truncation_then_new_writes_reusing_positions(self, store: Store) -> None:
        first_seal_event = store.seals[0].event_position
        assert first_seal_event is not None
        store.attack().delete_after(first_seal_event)
        store.application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S9"))
        store.application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S8"))
        report = store.verify()
        assert not report.ok
        kinds = {p.kind for p in report.problems}
        assert kinds & {Kind.SEAL_MISMATCH, Kind.MISSING_SEAL, Kind.TRUNCATED}


class TestAddedOrMovedEvents:
    def test_a_forged_event_inserted_into_sealed_history(self, store: Store) -> None:
        # A new last version of S3 with the right prev_hash and a correctly computed
        # hash, slipped in right after S3's last event (later events move up by one).
        positions = store.positions("S3")
        stream, _, _, state = store.attack().row(positions[2])
        previous = _stored(state)
        forged = {
            "audit": previous["audit"],
            "entry_id": previous["entry_id"],
            "form": "demographics",
            "revision": 2,
            "data": {**previous["data"], "weight_kg": 40.0},
            "changes": [{"path": "/weight_kg", "old": 62.0, "new": 40.0}],
            "timestamp": previous["timestamp"],
            "prev_hash": previous["hash"],
        }
        topic = "ecrf.domain.subject:Subject.EntryCorrected"
        attacker = store.attack()
        attacker.shift_after(positions[2])
        position = attacker.insert(
            stream,
            3,
            topic,
            seal_state(str(stream), 3, topic, forged, previous["hash"]),
            positions[2] + 1,
        )
        report = store.verify()
        _has(report, Kind.INSERTED_EVENT, position=position, stream=str(stream), version=3)
        # Its own hash and link are right: only the seal shows it does not belong.
        assert not {p.kind for p in report.problems} & {Kind.HASH_MISMATCH, Kind.BROKEN_LINK}

    def test_an_event_reinserted_with_a_new_position(self, store: Store) -> None:
        positions = store.positions("S1")
        attacker = store.attack()
        stream, version, topic, state = attacker.row(positions[2])
        attacker.delete(positions[2])
        moved = attacker.insert(stream, version, topic, state)
        assert moved > positions[2]
        report = store.verify()
        _has(report, Kind.REINSERTED, position=moved, stream=str(stream), version=2)
        assert not any(p.kind == Kind.MISSING_EVENT for p in report.problems)

    def test_a_streams_last_event_reinserted_at_the_end(self, store: Store) -> None:
        positions = store.positions("S3")
        attacker = store.attack()
        stream, version, topic, state = attacker.row(positions[2])
        attacker.delete(positions[2])
        moved = attacker.insert(stream, version, topic, state)
        report = store.verify()
        _has(report, Kind.REINSERTED, position=moved, stream=str(stream), version=2)


class TestSeals:
    def _last_seal_row(self, store: Store) -> tuple[int, UUID, int, str, dict[str, Any]]:
        position = store.seals[1].event_position
        assert position is not None
        stream, version, topic, state = store.attack().row(position)
        assert topic == SEALED_TOPIC
        return position, stream, version, topic, _stored(state)

    def test_a_seal_altered(self, store: Store) -> None:
        position, stream, version, topic, seal = self._last_seal_row(store)
        seal["head"] = "f" * 64
        store.attack().set_state(position, _rehash(stream, version, topic, seal))
        report = store.verify()
        _has(report, Kind.BAD_SIGNATURE, position=position, stream=LEDGER_STREAM, version=version)

    def test_a_seal_signed_with_another_key(self, store: Store) -> None:
        position, stream, version, topic, seal = self._last_seal_row(store)
        other = SealKey.generate()
        resigned = other.sign(seal["position"], "e" * 64, {}, at=seal["at"])
        seal.update(
            key_id=resigned.key_id, signature=resigned.signature, head=resigned.head, streams={}
        )
        store.attack().set_state(position, _rehash(stream, version, topic, seal))
        report = store.verify()
        _has(report, Kind.UNTRUSTED_KEY, position=position, stream=LEDGER_STREAM, version=version)

    def test_seals_only_verify_with_the_right_key(self, store: Store) -> None:
        report = store.verify(key=SealKey.generate())
        assert {p.kind for p in report.problems} == {Kind.UNTRUSTED_KEY}

    def test_the_seal_message_is_what_is_signed(self, store: Store) -> None:
        seal = store.seals[0]
        assert seal.message() == signed_message(
            "seal", seal.position, seal.head, seal.at, seal.key_id, seal.streams
        )

    def test_sealing_refuses_a_log_that_fails_its_hashes(self, store: Store) -> None:
        from ecrf.domain.errors import ConflictError

        store.application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S7"))
        position = store.application.max_position()
        state = store.attack().row(position)[3]
        store.attack().set_state(position, state.replace(b"S7", b"S6"))
        with pytest.raises(ConflictError, match=f"position {position}"):
            store.application.ledger.seal()


class TestFollower:
    def test_seals_every_n_events(self, settings: Settings) -> None:
        from dataclasses import replace

        application = EcrfApplication(replace(settings, seal_interval=5))
        try:
            assert application.ledger.maybe_seal() is None  # the study setup: 2 events
            for n in range(4):
                application.register_subject(
                    CRC, RegisterSubject(site="CHH", screening_number=f"F{n}")
                )
            seal = application.ledger.maybe_seal()
            assert seal is not None
            assert seal.position == 6
            assert application.ledger.maybe_seal() is None
            assert [s.position for s in application.ledger.seals(FDA)] == [6]
        finally:
            application.close()

    def test_seals_what_waited_longer_than_the_maximum_age(self, settings: Settings) -> None:
        from dataclasses import replace
        from datetime import UTC, datetime, timedelta

        application = EcrfApplication(
            replace(settings, seal_interval=1000, seal_max_age_seconds=60)
        )
        try:
            started = datetime.now(UTC)
            application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="T1"))
            assert application.ledger.maybe_seal(now=started + timedelta(seconds=30)) is None
            first = application.ledger.maybe_seal(now=started + timedelta(seconds=61))
            assert first is not None
            assert first.reason == "pending for over 60 s"
            assert first.position == application.max_position() - 3  # ledger, key, seal
            at = datetime.fromisoformat(first.at)
            # Only the seal's own events are pending: a quiet study is not re-sealed.
            assert application.ledger.maybe_seal(now=at + timedelta(days=3)) is None
            application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="T2"))
            assert application.ledger.maybe_seal(now=at + timedelta(seconds=59)) is None
            second = application.ledger.maybe_seal(now=at + timedelta(seconds=60))
            assert second is not None
            assert second.position == application.max_position() - 1
        finally:
            application.close()

    def test_a_maximum_age_of_zero_disables_it(self, settings: Settings) -> None:
        from dataclasses import replace
        from datetime import UTC, datetime, timedelta

        application = EcrfApplication(replace(settings, seal_max_age_seconds=0))
        try:
            application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="T1"))
            later = datetime.now(UTC) + timedelta(days=30)
            assert application.ledger.maybe_seal(now=later) is None
        finally:
            application.close()

    def test_the_follower_thread_seals_a_quiet_log(self, settings: Settings) -> None:
        import time
        from dataclasses import replace

        application = EcrfApplication(replace(settings, seal_max_age_seconds=1))
        try:
            application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="T1"))
            application.ledger.start(poll_seconds=0.05)
            deadline = time.monotonic() + 20
            while application.ledger.last_seal() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            application.ledger.stop(seal=False)
            last = application.ledger.last_seal()
            assert last is not None
            assert last.seal.reason == "pending for over 1 s"
        finally:
            application.close()

    def test_a_seal_with_nothing_new_returns_the_last(self, store: Store) -> None:
        again = store.application.ledger.seal()
        assert again == store.seals[1]

    def test_a_restarted_follower_continues_the_head(self, store: Store) -> None:
        restarted = EcrfApplication(store.settings)
        try:
            restarted.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S5"))
            third = restarted.ledger.seal()
        finally:
            restarted.close()
        assert third is not None
        assert third.position > store.seals[1].position
        report = store.verify()
        assert report.ok, [str(p) for p in report.problems]
        assert report.seals == 3

    def test_concurrent_sealers_keep_one_valid_chain(self, settings: Settings) -> None:
        import threading

        instances = [EcrfApplication(settings) for _ in range(3)]
        barrier = threading.Barrier(len(instances))
        errors: list[Exception] = []

        def work(index: int, application: EcrfApplication) -> None:
            barrier.wait()
            try:
                for n in range(4):
                    application.register_subject(
                        CRC, RegisterSubject(site="CHH", screening_number=f"P{index}{n}")
                    )
                    application.ledger.seal()
            except Exception as error:  # collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(instances)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            seals = instances[0].ledger.seals(FDA)
            positions = [s.position for s in seals]
            assert positions == sorted(set(positions))
            source = open_log(settings.database)
            try:
                key = instances[0].ledger.key
                report = verify_log(source, trusted_keys={key.key_id: key.public_key})
            finally:
                source.close()
            assert report.ok, [str(p) for p in report.problems]
            assert report.sealed_through == positions[-1]
        finally:
            for application in instances:
                application.close()

    def test_the_ledger_stream_id_and_topics_match_the_domain(self) -> None:
        from ecrf.domain.ledger import Ledger
        from ecrf.ledger.records import KEY_ADDED_TOPIC

        assert str(ledger_stream()) == LEDGER_STREAM
        assert f"{Ledger.Sealed.__module__}:{Ledger.Sealed.__qualname__}" == SEALED_TOPIC
        assert f"{Ledger.KeyAdded.__module__}:{Ledger.KeyAdded.__qualname__}" == KEY_ADDED_TOPIC


# The export file --------------------------------------------------------------------


@dataclass
class Export:
    """An export file as lines, to tamper with and verify."""

    path: Path
    lines: list[dict[str, Any]]
    key: SealKey

    def events(self) -> list[dict[str, Any]]:
        """The event lines."""
        return [line for line in self.lines if line["kind"] == "event"]

    def find(self, stream: UUID, version: int) -> dict[str, Any]:
        """The event line of one stream version."""
        return next(
            e for e in self.events() if e["stream"] == str(stream) and e["version"] == version
        )

    def write(self) -> None:
        """Save the (tampered) lines."""
        self.path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in self.lines))

    def verify(self, *, trusted: bool = True) -> Report:
        """What `ecrf verify --file ... --public-key ...` says."""
        self.write()
        keys = {self.key.key_id: self.key.public_key} if trusted else None
        return verify_export(self.path, trusted_keys=keys)


@pytest.fixture
def export(store: Store, tmp_path: Path) -> Export:
    raw = b"".join(store.application.ledger.export(FDA))
    lines = [orjson.loads(line) for line in raw.splitlines()]
    return Export(tmp_path / "ledger.jsonl", lines, store.application.ledger.key)


class TestExportFile:
    def test_an_untouched_export_verifies_clean(self, export: Export) -> None:
        report = export.verify()
        assert report.ok, [str(p) for p in report.problems]
        assert export.lines[0]["kind"] == "header"
        assert export.lines[-1]["kind"] == "end"

    def test_without_a_trusted_key_it_says_so(self, export: Export) -> None:
        report = export.verify(trusted=False)
        assert report.ok
        assert report.notes

    def test_one_byte_changed(self, export: Export, store: Store) -> None:
        line = export.find(store.streams["S2"], 2)
        line["state"] = line["state"].replace('"age":56', '"age":57')
        _has(export.verify(), Kind.HASH_MISMATCH, position=line["position"], version=2)

    def test_an_event_removed_from_the_middle(self, export: Export, store: Store) -> None:
        line = export.find(store.streams["S1"], 2)
        export.lines.remove(line)
        _has(export.verify(), Kind.MISSING_EVENT, stream=str(store.streams["S1"]), version=2)

    def test_a_streams_last_event_removed(self, export: Export, store: Store) -> None:
        export.lines.remove(export.find(store.streams["S3"], 2))
        _has(
            export.verify(),
            Kind.MISSING_EVENT,
            position=store.seals[0].position,
            stream=str(store.streams["S3"]),
            version=2,
        )

    def test_a_whole_stream_removed(self, export: Export, store: Store) -> None:
        stream = str(store.streams["S2"])
        export.lines = [x for x in export.lines if x.get("stream") != stream]
        _has(export.verify(), Kind.MISSING_STREAM, stream=stream)

    def test_a_forged_event_appended(self, export: Export, store: Store) -> None:
        stream = store.streams["S4"]
        last = export.find(stream, 2)
        previous = _stored(last["state"].encode())
        body = {k: v for k, v in previous.items() if k != HASH_FIELD}
        topic = "ecrf.domain.subject:Subject.EntryVoided"
        forged = {
            "kind": "event",
            "position": export.events()[-1]["position"] + 1,
            "stream": str(stream),
            "version": 3,
            "topic": topic,
        }
        forged["state"] = seal_state(
            str(stream),
            3,
            topic,
            {
                "audit": body["audit"],
                "entry_id": body["entry_id"],
                "form": "demographics",
                "revision": 1,
                "timestamp": body["timestamp"],
            },
            previous["hash"],
        ).decode()
        export.lines.insert(-1, forged)
        _has(
            export.verify(),
            Kind.INSERTED_EVENT,
            position=forged["position"],
            stream=str(stream),
            version=3,
        )

    def test_two_states_swapped(self, export: Export, store: Store) -> None:
        a, b = export.find(store.streams["S1"], 2), export.find(store.streams["S2"], 2)
        a["state"], b["state"] = b["state"], a["state"]
        report = export.verify()
        _has(report, Kind.HASH_MISMATCH, position=a["position"])
        _has(report, Kind.HASH_MISMATCH, position=b["position"])

    def test_a_seal_altered(self, export: Export, store: Store) -> None:
        line = next(e for e in export.events() if e["position"] == store.seals[1].event_position)
        seal = _stored(line["state"].encode())
        seal["head"] = "0" * 64
        line["state"] = _rehash(UUID(line["stream"]), line["version"], line["topic"], seal).decode()
        _has(export.verify(), Kind.BAD_SIGNATURE, position=line["position"], stream=LEDGER_STREAM)

    def test_the_end_record_resigned_with_another_key(self, export: Export) -> None:
        other = SealKey.generate()
        end = export.lines[-1]
        forged = other.sign(end["position"], end["head"], {}, kind="export").to_dict()
        export.lines[-1] = {**forged, "kind": "end"}
        _has(export.verify(), Kind.UNTRUSTED_KEY)

    def test_the_file_cut_after_the_last_seal(self, export: Export, store: Store) -> None:
        cut = store.seals[1].event_position
        export.lines = [
            x
            for x in export.lines
            if x["kind"] in ("header", "seal") or (x["kind"] == "event" and x["position"] <= cut)
        ]
        report = export.verify()
        _has(report, Kind.TRUNCATED, position=None)

    def test_an_event_moved_to_the_end(self, export: Export, store: Store) -> None:
        line = export.find(store.streams["S1"], 2)
        export.lines.remove(line)
        moved = {**line, "position": export.events()[-1]["position"] + 1}
        export.lines.insert(-1, moved)
        _has(export.verify(), Kind.REINSERTED, position=moved["position"], version=2)

    def test_a_line_that_is_not_json(self, export: Export) -> None:
        export.write()
        with export.path.open("ab") as handle:
            handle.write(b"{not json\n")
        report = verify_export(export.path, trusted_keys={export.key.key_id: export.key.public_key})
        _has(report, Kind.UNREADABLE, position=None)

    def test_a_state_that_is_not_utf8_survives_the_export(
        self, store: Store, tmp_path: Path
    ) -> None:
        position = store.positions("S2")[1]
        state = store.attack().row(position)[3]
        store.attack().set_state(position, state.replace(b"S2", b"S\xff", 1))
        raw = b"".join(store.application.ledger.export(FDA))
        line = next(orjson.loads(x) for x in raw.splitlines() if b'"state_b64"' in x)
        assert base64.b64decode(line["state_b64"]) == state.replace(b"S2", b"S\xff", 1)
        path = tmp_path / "bad.jsonl"
        path.write_bytes(raw)
        key = store.application.ledger.key
        report = verify_export(path, trusted_keys={key.key_id: key.public_key})
        _has(report, Kind.UNREADABLE, position=position)


# A monitor's partial export -----------------------------------------------------------


@pytest.fixture
def partial(store: Store, tmp_path: Path) -> Export:
    """The CHH monitor's export of a store that also holds a second site's casebooks."""
    application = store.application
    application.add_site(ADMIN, AddSite(site_id="RJH", name="Ruijin"))
    data = application.forms.get("demographics").schema["examples"][0]
    for number in ("R1", "R2"):
        subject, _ = application.register_subject(
            RJH_CRC, RegisterSubject(site="RJH", screening_number=number)
        )
        application.record_entry(
            RJH_CRC, subject.subject_id, RecordEntry(form="demographics", visit="SCR", data=data)
        )
    assert application.ledger.seal() is not None
    application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S5"))
    raw = b"".join(application.ledger.export(CRA))
    lines = [orjson.loads(line) for line in raw.splitlines()]
    return Export(tmp_path / "partial.jsonl", lines, application.ledger.key)


RJH_STREAMS = {str(subject_stream("RJH-R1")), str(subject_stream("RJH-R2"))}


class TestPartialExport:
    def test_an_untouched_partial_export_verifies_clean(self, partial: Export) -> None:
        report = partial.verify()
        assert report.ok, [str(p) for p in report.problems]
        assert report.partial
        assert report.seals == 3
        streams = {e["stream"] for e in partial.events()}
        assert not streams & RJH_STREAMS
        assert LEDGER_STREAM in streams
        assert partial.lines[0]["scope"] == "partial"

    def test_it_is_not_called_complete(self, partial: Export) -> None:
        notes = " ".join(partial.verify().notes)
        assert "partial export" in notes
        assert "not checked: the running head at each seal" in notes
        assert "out of scope, not missing" in notes

    def test_one_byte_changed(self, partial: Export, store: Store) -> None:
        line = partial.find(store.streams["S2"], 2)
        line["state"] = line["state"].replace('"age":56', '"age":57')
        _has(partial.verify(), Kind.HASH_MISMATCH, position=line["position"], version=2)

    def test_an_event_removed_from_the_middle(self, partial: Export, store: Store) -> None:
        partial.lines.remove(partial.find(store.streams["S1"], 2))
        _has(partial.verify(), Kind.MISSING_EVENT, stream=str(store.streams["S1"]), version=2)

    def test_a_streams_sealed_last_event_removed(self, partial: Export, store: Store) -> None:
        partial.lines.remove(partial.find(store.streams["S3"], 2))
        _has(
            partial.verify(),
            Kind.MISSING_EVENT,
            position=store.seals[0].position,
            stream=str(store.streams["S3"]),
            version=2,
        )

    def test_an_unsealed_last_event_removed_shows_against_the_end_record(
        self, partial: Export
    ) -> None:
        stream = subject_stream("CHH-S5")
        partial.lines.remove(partial.find(stream, 1))
        _has(partial.verify(), Kind.MISSING_STREAM, stream=str(stream))

    def test_a_whole_stream_removed(self, partial: Export, store: Store) -> None:
        stream = str(store.streams["S2"])
        partial.lines = [x for x in partial.lines if x.get("stream") != stream]
        _has(partial.verify(), Kind.MISSING_STREAM, stream=stream)

    def test_another_sites_event_slipped_in(
        self, partial: Export, export: Export, store: Store
    ) -> None:
        foreign = next(e for e in export.events() if e["stream"] in RJH_STREAMS)
        at = next(
            i
            for i, x in enumerate(partial.lines)
            if x["kind"] == "event" and x["position"] > foreign["position"]
        )
        partial.lines.insert(at, foreign)
        _has(partial.verify(), Kind.INSERTED_EVENT, position=foreign["position"])

    def test_a_seal_altered(self, partial: Export, store: Store) -> None:
        line = next(e for e in partial.events() if e["position"] == store.seals[1].event_position)
        seal = _stored(line["state"].encode())
        seal["streams"] = {}
        line["state"] = _rehash(UUID(line["stream"]), line["version"], line["topic"], seal).decode()
        _has(partial.verify(), Kind.BAD_SIGNATURE, position=line["position"], stream=LEDGER_STREAM)

    def test_relabelled_as_a_full_export(self, partial: Export) -> None:
        del partial.lines[0]["scope"]
        report = partial.verify()
        assert report.partial  # the signed end record decides
        _has(report, Kind.BAD_SEAL, position=None)
        del partial.lines[-1]["scope"]
        _has(partial.verify(), Kind.BAD_SIGNATURE)

    def test_the_end_record_cut_off(self, partial: Export) -> None:
        partial.lines.pop()
        report = partial.verify()
        _has(report, Kind.TRUNCATED, position=None)
        assert report.partial
        assert any("whole stream removed" in note for note in report.notes)


# Seal copies kept outside the database ------------------------------------------------


class TestSealMirror:
    def test_a_torn_last_line_is_skipped_with_a_note(self, store: Store) -> None:
        mirror = store.application.ledger.mirror_path
        with mirror.open("ab") as handle:
            handle.write(b'{"kind":"seal","position":99,"he')
        held = read_held_seals(mirror)
        assert [s.signature for s in held.seals] == [s.signature for s in store.seals]
        assert held.problems == []
        assert len(held.notes) == 1
        assert store.application.ledger.held_seals().seals == held.seals
        report = store.verify()
        assert report.ok, [str(p) for p in report.problems]
        assert any("cut short" in note for note in report.notes)

    def test_the_next_seal_repairs_a_torn_line(self, store: Store) -> None:
        mirror = store.application.ledger.mirror_path
        with mirror.open("ab") as handle:
            handle.write(b'{"kind":"seal","posi')
        store.application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S6"))
        third = store.application.ledger.seal()
        assert third is not None
        held = read_held_seals(mirror)
        assert [s.signature for s in held.seals] == [s.signature for s in (*store.seals, third)]
        assert held.problems == []
        assert held.notes == []

    def test_a_whole_last_line_without_its_newline_is_kept(self, store: Store) -> None:
        mirror = store.application.ledger.mirror_path
        mirror.write_bytes(mirror.read_bytes().rstrip(b"\n"))
        store.application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S6"))
        third = store.application.ledger.seal()
        assert third is not None
        held = read_held_seals(mirror)
        assert len(held.seals) == 3
        assert held.problems == []

    def test_a_corrupt_line_elsewhere_is_a_problem_not_a_crash(self, store: Store) -> None:
        mirror = store.application.ledger.mirror_path
        lines = mirror.read_bytes().splitlines(keepends=True)
        mirror.write_bytes(lines[0] + b"{garbage\n" + b"".join(lines[1:]))
        held = read_held_seals(mirror)
        assert len(held.seals) == 2
        [problem] = held.problems
        assert problem.kind == Kind.BAD_SEAL
        assert "line 2" in problem.detail
        report = store.verify()
        _has(report, Kind.BAD_SEAL, stream=LEDGER_STREAM)
