"""The verifier on synthetic logs built from the documented recipe (no database)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
import pytest

from ecrf.ledger.chain import GENESIS, seal_state, stored_hash
from ecrf.ledger.readers import read_held_seals
from ecrf.ledger.records import KEY_ADDED_TOPIC, LEDGER_STREAM, SEALED_TOPIC, Record
from ecrf.ledger.seals import Seal, SealKey, Tip, next_head
from ecrf.ledger.verify import Kind, Problem, Report, read_ledger_stream, verify_records

A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"
C = "00000000-0000-4000-8000-00000000000c"
KEY = SealKey.generate()


@dataclass
class Log:
    """Writes records as the application would: chained per stream, sealed on request."""

    records: list[Record] = field(default_factory=list)
    seals: list[Seal] = field(default_factory=list)
    _tips: dict[str, tuple[int, str]] = field(default_factory=dict)
    _head: str = GENESIS
    _changed: dict[str, Tip] = field(default_factory=dict)
    _next: int = 1

    def add(self, stream: str, topic: str = "test:Happened", **fields: object) -> Record:
        """Append the next version of a stream."""
        version, prev = self._tips.get(stream, (0, GENESIS))
        state = seal_state(stream, version + 1, topic, {"n": self._next, **fields}, prev)
        record = Record(self._next, stream, version + 1, topic, state)
        self._next += 1
        self.records.append(record)
        hash_ = stored_hash(state)
        self._tips[stream] = (version + 1, hash_)
        self._head = next_head(self._head, record.position, hash_)
        self._changed[stream] = (version + 1, hash_)
        return record

    def seal(self, key: SealKey = KEY) -> Seal:
        """Seal what is logged and log the seal (with its key the first time)."""
        seal = key.sign(self.records[-1].position, self._head, dict(self._changed))
        self._changed = {}
        if LEDGER_STREAM not in self._tips:
            self.add(
                LEDGER_STREAM,
                KEY_ADDED_TOPIC,
                key_id=key.key_id,
                algorithm="Ed25519",
                public_key_pem=key.public_key_pem,
            )
        body = seal.to_dict()
        del body["kind"], body["event_position"]
        record = self.add(LEDGER_STREAM, SEALED_TOPIC, **body)
        seal = replace(seal, event_position=record.position)
        self.seals.append(seal)
        return seal

    def at(self, stream: str, version: int) -> Record:
        """The record of one stream version."""
        return next(r for r in self.records if r.stream == stream and r.version == version)

    def verify(self, records: list[Record] | None = None, **options: object) -> Report:
        """Verify (the given records, or the log as written), trusting KEY."""
        records = self.records if records is None else records
        ledger = read_ledger_stream(records)
        return verify_records(
            records,
            ledger,
            trusted_keys={KEY.key_id: KEY.public_key},
            **options,  # type: ignore[arg-type]
        )


def _has(report: Report, kind: Kind, **where: object) -> Problem:
    for problem in report.problems:
        if problem.kind == kind and all(getattr(problem, k) == v for k, v in where.items()):
            return problem
    raise AssertionError(f"no {kind} at {where} in {[str(p) for p in report.problems]}")


def _without(log: Log, *drop: Record) -> list[Record]:
    return [r for r in log.records if r not in drop]


@pytest.fixture
def log() -> Log:
    """A, B, C with A at 3 versions; sealed; then two more events; sealed again."""
    log = Log()
    for stream in (A, B, A, C, A, B):
        log.add(stream)
    log.seal()
    log.add(C)
    log.add(A)
    log.seal()
    return log


class TestIntact:
    def test_a_clean_log(self, log: Log) -> None:
        report = log.verify()
        assert report.ok, [str(p) for p in report.problems]
        assert report.events == len(log.records)
        assert report.seals == 2
        assert report.sealed_through == log.seals[-1].position
        assert report.unsealed == 1  # the last seal's own event

    def test_an_empty_log(self) -> None:
        report = Log().verify()
        assert report.ok
        assert report.head == GENESIS

    def test_unsealed_events_are_counted_not_flagged(self, log: Log) -> None:
        log.add(B)
        report = log.verify()
        assert report.ok
        assert report.unsealed == 2


class TestEvents:
    def test_changed_content(self, log: Log) -> None:
        target = log.at(A, 2)
        changed = replace(target, state=target.state.replace(b'"n":3', b'"n":9'))
        records = [changed if r is target else r for r in log.records]
        _has(log.verify(records), Kind.HASH_MISMATCH, position=target.position, stream=A, version=2)

    def test_not_json(self, log: Log) -> None:
        target = log.at(B, 1)
        records = [replace(r, state=b"{oops") if r is target else r for r in log.records]
        _has(log.verify(records), Kind.UNREADABLE, position=target.position)

    def test_a_rechained_stream_without_seals_is_only_caught_by_seals(self) -> None:
        honest, forged = Log(), Log()
        honest.add(A, value=1)
        forged.add(A, value=2)
        assert honest.verify().ok
        assert forged.verify().ok  # no seal: nothing to compare with


class TestStreams:
    def test_a_gap(self, log: Log) -> None:
        missing = log.at(A, 2)
        report = log.verify(_without(log, missing))
        _has(report, Kind.MISSING_EVENT, position=log.at(A, 3).position, stream=A, version=2)

    def test_a_broken_link(self, log: Log) -> None:
        target = log.at(B, 2)
        document = orjson.loads(target.state)
        document.pop("hash")
        document["prev_hash"] = "1" * 64
        rechained = seal_state(B, 2, target.topic, document, "1" * 64)
        records = [replace(r, state=rechained) if r is target else r for r in log.records]
        _has(log.verify(records), Kind.BROKEN_LINK, position=target.position, stream=B, version=2)

    def test_a_moved_event(self, log: Log) -> None:
        moved = log.at(A, 2)
        end = log.records[-1].position
        records = [*_without(log, moved), replace(moved, position=end + 1)]
        report = log.verify(records)
        _has(report, Kind.REINSERTED, position=end + 1, stream=A, version=2)
        assert not any(p.kind == Kind.MISSING_EVENT for p in report.problems)

    def test_a_late_event_that_is_not_the_original(self, log: Log) -> None:
        moved = log.at(A, 2)
        end = log.records[-1].position
        other = seal_state(A, 2, moved.topic, {"n": 99}, stored_hash(log.at(A, 1).state))
        records = [*_without(log, moved), replace(moved, position=end + 1, state=other)]
        report = log.verify(records)
        _has(report, Kind.OUT_OF_ORDER, position=end + 1, stream=A, version=2)
        _has(report, Kind.MISSING_EVENT, stream=A, version=2)

    def test_positions_must_increase(self, log: Log) -> None:
        records = list(log.records)
        records[1], records[2] = records[2], records[1]
        _has(log.verify(records), Kind.POSITION_ORDER, position=records[2].position)


class TestSeals:
    def test_a_streams_last_event_removed(self, log: Log) -> None:
        last_b = log.at(B, 2)
        report = log.verify(_without(log, last_b))
        _has(report, Kind.MISSING_EVENT, position=log.seals[0].position, stream=B, version=2)
        _has(report, Kind.SEAL_MISMATCH, position=log.seals[0].position)

    def test_a_stream_removed(self, log: Log) -> None:
        report = log.verify([r for r in log.records if r.stream != B])
        _has(report, Kind.MISSING_STREAM, position=log.seals[0].position, stream=B, version=2)

    def test_an_event_inserted_before_a_seal(self, log: Log) -> None:
        # A correctly chained version 3 of B, at a free position before the first seal.
        prev = stored_hash(log.at(B, 2).state)
        position = log.seals[0].position
        shifted = [
            replace(r, position=r.position + 1) if r.position > position else r for r in log.records
        ]
        forged = Record(
            position + 1, B, 3, "test:Happened", seal_state(B, 3, "test:Happened", {"n": 0}, prev)
        )
        records = sorted([*shifted, forged], key=lambda r: r.position)
        report = log.verify(records)
        # The seal event moved up too; what matters is the forged event is named.
        _has(report, Kind.INSERTED_EVENT, position=position + 1, stream=B, version=3)

    def test_sealed_tip_rewritten_with_a_new_hash(self, log: Log) -> None:
        target = log.at(C, 1)
        document = orjson.loads(target.state)
        document.pop("hash")
        document["n"] = 1000
        rewritten = seal_state(C, 1, target.topic, document, GENESIS)
        records = [replace(r, state=rewritten) if r is target else r for r in log.records]
        report = log.verify(records)
        _has(report, Kind.REPLACED_EVENT, position=target.position, stream=C, version=1)

    def test_a_seal_with_a_bad_signature(self, log: Log) -> None:
        event = next(r for r in log.records if r.position == log.seals[0].event_position)
        document = orjson.loads(event.state)
        document.pop("hash")
        document["head"] = "f" * 64
        rewritten = seal_state(
            LEDGER_STREAM, event.version, event.topic, document, document["prev_hash"]
        )
        records = [replace(r, state=rewritten) if r is event else r for r in log.records]
        report = log.verify(records)
        _has(report, Kind.BAD_SIGNATURE, position=event.position, stream=LEDGER_STREAM)
        # The next seal's link to it breaks too, as it would for any changed event.
        _has(report, Kind.BROKEN_LINK, stream=LEDGER_STREAM)

    def test_a_seal_by_an_untrusted_key(self) -> None:
        log = Log()
        log.add(A)
        log.seal(SealKey.generate())
        _has(log.verify(), Kind.UNTRUSTED_KEY, stream=LEDGER_STREAM)

    def test_without_trusted_keys_the_logged_keys_are_used_and_said_so(self, log: Log) -> None:
        report = verify_records(log.records, read_ledger_stream(log.records), trusted_keys=None)
        assert report.ok
        assert report.notes

    def test_a_log_ending_before_a_seal(self, log: Log) -> None:
        cut = log.seals[1].position - 1
        report = log.verify(
            [r for r in log.records if r.position <= cut]
            + [r for r in log.records if r.position == log.seals[1].event_position]
        )
        _has(report, Kind.SEAL_MISMATCH, position=log.seals[1].position)

    def test_a_held_seal_missing_from_a_truncated_log(self, log: Log) -> None:
        first_event = log.seals[0].event_position
        assert first_event is not None
        kept = [r for r in log.records if r.position <= first_event]
        report = log.verify(kept, external_seals=log.seals)
        _has(report, Kind.TRUNCATED, position=log.seals[1].position)

    def test_a_held_seal_removed_from_the_log(self, log: Log) -> None:
        seal_event = next(r for r in log.records if r.position == log.seals[0].event_position)
        report = log.verify(_without(log, seal_event), external_seals=log.seals)
        _has(report, Kind.MISSING_SEAL, position=seal_event.position)

    def test_each_segment_is_judged_on_its_own(self, log: Log) -> None:
        # After a mismatch the walk continues from the signed head: later seals hold.
        report = log.verify(_without(log, log.at(B, 2)))
        mismatches = [p for p in report.problems if p.kind == Kind.SEAL_MISMATCH]
        assert [p.position for p in mismatches] == [log.seals[0].position]


def test_a_forged_huge_version_is_one_problem_not_millions() -> None:
    log = Log()
    first = log.add(A)
    state = seal_state(A, 10_000_000, "test:Happened", {"n": 2}, stored_hash(first.state))
    forged = Record(2, A, 10_000_000, "test:Happened", state)
    report = log.verify([first, forged])
    missing = [p for p in report.problems if p.kind == Kind.MISSING_EVENT]
    assert len(missing) == 1
    assert "9999998 events" in missing[0].detail
    assert len(report.problems) < 10


class TestHeldSealCopies:
    """The seal copies outside the database, as `read_held_seals` reads them."""

    def _mirror(self, tmp_path: Path, log: Log) -> Path:
        path = tmp_path / "seals.jsonl"
        path.write_bytes(b"".join(orjson.dumps(s.to_dict()) + b"\n" for s in log.seals))
        return path

    def test_every_seal_is_read(self, tmp_path: Path, log: Log) -> None:
        held = read_held_seals(self._mirror(tmp_path, log))
        assert held.seals == log.seals
        assert held.problems == []
        assert held.notes == []

    def test_a_torn_final_line_is_skipped_with_a_note(self, tmp_path: Path, log: Log) -> None:
        path = self._mirror(tmp_path, log)
        torn = orjson.dumps(log.seals[0].to_dict())[:40]
        path.write_bytes(path.read_bytes() + torn)
        held = read_held_seals(path)
        assert held.seals == log.seals
        assert held.problems == []
        [note] = held.notes
        assert "cut short" in note
        report = log.verify(external_seals=held.seals, notes=held.notes)
        assert report.ok
        assert report.notes == held.notes

    def test_a_final_line_without_its_newline_that_parses_is_kept(
        self, tmp_path: Path, log: Log
    ) -> None:
        path = self._mirror(tmp_path, log)
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
        assert read_held_seals(path).seals == log.seals

    @pytest.mark.parametrize("garbage", [b"{not json", b'{"kind":"seal"}', b"[1, 2]"])
    def test_a_corrupt_line_elsewhere_is_a_problem(
        self, tmp_path: Path, log: Log, garbage: bytes
    ) -> None:
        path = self._mirror(tmp_path, log)
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(lines[0] + garbage + b"\n" + b"".join(lines[1:]))
        held = read_held_seals(path)
        assert held.seals == log.seals
        [problem] = held.problems
        assert problem.kind == Kind.BAD_SEAL
        assert "seals.jsonl line 2" in problem.detail
        assert not log.verify(external_seals=held.seals, problems=held.problems).ok

    def test_a_saved_array_of_seals(self, tmp_path: Path, log: Log) -> None:
        path = tmp_path / "seals.json"
        path.write_bytes(orjson.dumps([s.to_dict() for s in log.seals]))
        assert read_held_seals(path).seals == log.seals
        path.write_bytes(b"[{")
        with pytest.raises(ValueError, match="unexpected end of data"):
            read_held_seals(path)
