"""Verification of the whole log from raw records, trusting nothing of the application.

The verifier reads records in log order (``Record``: position, stream, version, topic,
stored bytes) and checks, in one pass and memory proportional to the number of streams:

1. each event on its own: its ``hash`` is the hash of exactly the bytes stored;
2. each stream: versions arrive 1, 2, 3, ... and each ``prev_hash`` is the hash of the
   version before (``GENESIS`` for version 1);
3. the whole log: the running head at each seal's position equals the signed head, and
   the last version and hash of every stream the seal lists are what the log holds there.

Seals are read first (they are events of the ledger stream, stored after the position
they cover), so that each can be checked when the walk passes its position. After a
seal that does not match, the walk continues from the signed head, so every problem is
reported in the segment between two seals where it happened.

A *partial* log (a monitor's export: the streams of some sites plus the ledger stream)
cannot reproduce the running head, which folds in every site's events. For it, check 3
is done stream by stream: each seal's signature, and the tip of every included stream
against the ``[version, hash]`` the seal signed for it; the head is checked only against
the export's own signed end record, which covers exactly the included events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ecrf.ledger.chain import GENESIS, HASH_FIELD, PREV_HASH_FIELD, stored_event_hash
from ecrf.ledger.records import KEY_ADDED_TOPIC, LEDGER_STREAM, SEALED_TOPIC, Record
from ecrf.ledger.seals import (
    EXPORT_KIND,
    PARTIAL_EXPORT_KIND,
    SEAL_KIND,
    Seal,
    head_hash_of,
    key_id_of,
    load_public_key,
    next_head,
    verify_seal,
)

MAX_LISTED_GAP = 1000
"""Longest run of missing versions listed one by one; longer runs are one problem."""


class Kind(StrEnum):
    """What is wrong, as named in problem reports."""

    UNREADABLE = "unreadable"
    """The stored state is not a JSON object with a ``hash`` (or a file line is not JSON)."""
    HASH_MISMATCH = "hash_mismatch"
    """The stored ``hash`` is not the hash of the stored content: the event was changed."""
    BROKEN_LINK = "broken_link"
    """``prev_hash`` is not the hash of the stream's previous version."""
    MISSING_EVENT = "missing_event"
    """A version of a stream is absent (a gap, or below the version a seal recorded)."""
    MISSING_STREAM = "missing_stream"
    """A stream a seal recorded is absent altogether."""
    REINSERTED = "reinserted"
    """A missing event turns up later in the log, unchanged: it was moved (re-inserted)."""
    OUT_OF_ORDER = "out_of_order"
    """An event appears after later versions of its stream and is not the missing original."""
    INSERTED_EVENT = "inserted_event"
    """An event at or before a seal's position that the seal does not record."""
    REPLACED_EVENT = "replaced_event"
    """A stream's sealed last event has a different hash now (rewritten with a new hash)."""
    SEAL_MISMATCH = "seal_mismatch"
    """The running head at a seal's position differs from the signed head."""
    BAD_SIGNATURE = "bad_signature"
    """A seal's signature does not verify."""
    UNTRUSTED_KEY = "untrusted_key"
    """A seal is signed by a key the verifier was not told to trust."""
    BAD_SEAL = "bad_seal"
    """A seal record is malformed or out of order."""
    BAD_KEY = "bad_key"
    """A recorded key is malformed or its key id does not match it."""
    TRUNCATED = "truncated"
    """The log (or export file) ends before a seal, or an export has no end record."""
    MISSING_SEAL = "missing_seal"
    """A seal held outside the database is not in the log."""
    POSITION_ORDER = "position_order"
    """Log positions do not increase (export files only)."""


@dataclass(frozen=True)
class Problem:
    """One finding, located by log position, stream and version where they are known."""

    kind: Kind
    position: int | None
    stream: str | None
    version: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind.value,
            "position": self.position,
            "stream": self.stream,
            "version": self.version,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        where = [
            f"position {self.position if self.position is not None else '-'}",
            f"stream {self.stream or '-'}",
            f"version {self.version if self.version is not None else '-'}",
        ]
        return f"{self.kind.value}: {', '.join(where)}: {self.detail}"


@dataclass
class Report:
    """The outcome of a verification."""

    events: int
    head: str
    last_position: int
    sealed_through: int
    seals: int
    unsealed: int
    problems: list[Problem]
    notes: list[str] = field(default_factory=list)
    partial: bool = False
    """True for a partial export: some checks could not be made (see ``notes``)."""

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``GET /ledger/verify``)."""
        return {
            "ok": self.ok,
            "events": self.events,
            "head": self.head,
            "last_position": self.last_position,
            "sealed_through": self.sealed_through,
            "seals": self.seals,
            "unsealed": self.unsealed,
            "problems": [p.to_dict() for p in self.problems],
            "notes": self.notes,
            "partial": self.partial,
        }


@dataclass(frozen=True)
class LoggedSeal:
    """A seal as found in the log, with where its own event is."""

    seal: Seal
    position: int
    version: int


@dataclass
class LedgerStream:
    """What the ledger stream records: seals in order, and the public keys it names."""

    seals: list[LoggedSeal] = field(default_factory=list)
    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    key_pems: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def read_ledger_stream(records: Iterable[Record]) -> LedgerStream:
    """Collect the seals and keys of the ledger stream (other records are ignored)."""
    ledger = LedgerStream()
    for record in sorted(
        (r for r in records if r.stream == LEDGER_STREAM), key=lambda r: r.version
    ):
        if record.topic not in (SEALED_TOPIC, KEY_ADDED_TOPIC):
            continue
        where = (record.position, record.stream, record.version)
        try:
            state = orjson.loads(record.state)
        except orjson.JSONDecodeError:
            continue  # reported as unreadable by the walk
        if record.topic == SEALED_TOPIC:
            try:
                seal = Seal.from_dict(state, kind=SEAL_KIND, event_position=record.position)
            except ValueError as error:
                ledger.problems.append(Problem(Kind.BAD_SEAL, *where, str(error)))
                continue
            ledger.seals.append(LoggedSeal(seal, record.position, record.version))
            continue
        try:
            key_id = state["key_id"]
            pem = state["public_key_pem"]
            public_key = load_public_key(pem.encode("ascii"))
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            ledger.problems.append(Problem(Kind.BAD_KEY, *where, f"unreadable key: {error}"))
            continue
        if key_id_of(public_key) != key_id:
            ledger.problems.append(
                Problem(Kind.BAD_KEY, *where, f"key id {key_id} does not match its public key")
            )
            continue
        ledger.keys[key_id] = public_key
        ledger.key_pems[key_id] = pem
    return ledger


@dataclass(slots=True)
class _Tip:
    version: int
    hash: str | None
    position: int


@dataclass(slots=True)
class _Gap:
    """A missing event, remembered so that it can be recognised if it turns up later."""

    problem: int
    prev: str | None
    hash: str | None
    before: int


_Where = tuple[int | None, str | None, int | None]


@dataclass
class _Checkpoint:
    seal: Seal
    source: str  # "log", "external" (held outside the database) or "end" (export file)
    valid: bool
    where: _Where


class Verifier:
    """Feed records in log order, then `finish`; see the module docstring for the checks."""

    def __init__(
        self,
        ledger: LedgerStream,
        *,
        trusted_keys: dict[str, Ed25519PublicKey] | None = None,
        external_seals: Sequence[Seal] = (),
        end: Seal | None = None,
        expect_end: bool = False,
        problems: Sequence[Problem] = (),
        notes: Sequence[str] = (),
        partial: bool = False,
    ) -> None:
        self.problems: list[Problem] = list(problems) + list(ledger.problems)
        self.notes: list[str] = list(notes)
        self._trusted = trusted_keys
        self._ledger = ledger
        self._end = end
        self._expect_end = expect_end
        self._partial = partial
        self._unchecked: set[str] = set()
        """Streams the seals record that a partial log does not hold (not checked)."""
        self._streams: dict[str, _Tip] = {}
        self._expected: dict[str, tuple[int, str]] = {}
        self._dirty: dict[str, list[tuple[int, str | None, int]]] = {}
        self._gaps: dict[tuple[str, int], _Gap] = {}
        self._reported_missing: dict[str, int] = {}
        self._head = GENESIS
        self._events = 0
        self._last_position = 0
        self._unsealed = 0
        if trusted_keys is None:
            self.notes.append(
                "seal signatures were checked against keys recorded in the log itself, "
                "which is not an independent check: give the public key to trust"
            )
        self._checkpoints = self._plan(external_seals)
        self._next = 0
        self._seals = sum(1 for c in self._checkpoints if c.source != "end")
        self.sealed_through = max(
            (c.seal.position for c in self._checkpoints if c.valid and c.source != "end"),
            default=0,
        )
        self._log_signatures = {s.seal.signature for s in ledger.seals}
        self._external = [c for c in self._checkpoints if c.source == "external"]
        end_valid = any(c.valid for c in self._checkpoints if c.source == "end")
        self._scope: set[str] | None = (
            {*end.streams, LEDGER_STREAM} if partial and end is not None and end_valid else None
        )
        """A partial log's streams as its signed end record lists them (``None``: unknown)."""
        self._log_end = end.position if partial and end is not None and end_valid else 0
        """Where a partial log's source ended (its own last event may come earlier)."""

    # Planning ------------------------------------------------------------------

    def _key(self, key_id: str) -> Ed25519PublicKey | None:
        if self._trusted is not None:
            return self._trusted.get(key_id)
        return self._ledger.keys.get(key_id)

    def _signature_ok(self, seal: Seal, where: _Where) -> bool:
        key = self._key(seal.key_id)
        if key is None:
            self.problems.append(
                Problem(
                    Kind.UNTRUSTED_KEY,
                    *where,
                    f"{self._label(seal)} is signed by key {seal.key_id}, which is not trusted",
                )
            )
            return False
        if not verify_seal(seal, key):
            self.problems.append(
                Problem(
                    Kind.BAD_SIGNATURE,
                    *where,
                    f"the signature of {self._label(seal)} does not verify with key {seal.key_id}",
                )
            )
            return False
        return True

    @staticmethod
    def _recorded(checkpoint: _Checkpoint) -> str:
        if checkpoint.source == "end" or checkpoint.where[0] is None:
            return ""
        return f" (recorded at position {checkpoint.where[0]})"

    @staticmethod
    def _label(seal: Seal) -> str:
        if seal.kind == EXPORT_KIND:
            return f"the export end record (through position {seal.position})"
        if seal.kind == PARTIAL_EXPORT_KIND:
            return f"the partial export's end record (through position {seal.position})"
        return f"the seal through position {seal.position}"

    def _held(self, stream: str) -> bool:
        """Whether a stream belongs to the log being verified (always, unless partial)."""
        if not self._partial:
            return True
        if self._scope is not None:
            return stream in self._scope
        # No trustworthy end record: judge by what the file holds so far.
        return stream in self._streams or stream == LEDGER_STREAM

    def _plan(self, external_seals: Sequence[Seal]) -> list[_Checkpoint]:
        checkpoints: list[_Checkpoint] = []
        previous = 0
        for logged in self._ledger.seals:
            where: _Where = (logged.position, LEDGER_STREAM, logged.version)
            seal = logged.seal
            valid = True
            if not previous < seal.position < logged.position:
                self.problems.append(
                    Problem(
                        Kind.BAD_SEAL,
                        *where,
                        f"seal covers position {seal.position}, which is not after the "
                        f"previous seal's {previous} and before its own event",
                    )
                )
                valid = False
            valid = self._signature_ok(seal, where) and valid
            previous = max(previous, seal.position)
            checkpoints.append(_Checkpoint(seal, "log", valid, where))
        logged_signatures = {s.seal.signature for s in self._ledger.seals}
        for seal in external_seals:
            if seal.signature in logged_signatures:
                continue
            where = (seal.event_position, LEDGER_STREAM, None)
            valid = self._signature_ok(seal, where)
            checkpoints.append(_Checkpoint(seal, "external", valid, where))
        if self._end is not None:
            where = (self._end.position, None, None)
            valid = self._signature_ok(self._end, where)
            checkpoints.append(_Checkpoint(self._end, "end", valid, where))
        order = {"log": 0, "external": 1, "end": 2}
        return sorted(checkpoints, key=lambda c: (c.seal.position, order[c.source]))

    # The walk --------------------------------------------------------------------

    def feed(self, record: Record) -> None:
        """Check one record; records must come in log order."""
        while (
            self._next < len(self._checkpoints)
            and self._checkpoints[self._next].seal.position < record.position
        ):
            self._checkpoint(self._checkpoints[self._next])
            self._next += 1
        position = record.position
        if self._events and position <= self._last_position:
            self._problem(
                Kind.POSITION_ORDER,
                record,
                f"log position {position} does not follow position {self._last_position}",
            )
        if self._end is not None and position > self._end.position:
            self._problem(
                Kind.INSERTED_EVENT,
                record,
                f"after the export's end record, which covers through {self._end.position}",
            )
        self._events += 1
        self._last_position = max(self._last_position, position)
        if position > self.sealed_through:
            self._unsealed += 1

        stored, prev = self._check_event(record)
        self._head = next_head(self._head, position, stored or head_hash_of(record.state))
        if self._scope is not None and record.stream not in self._scope:
            self._problem(
                Kind.INSERTED_EVENT,
                record,
                "its stream is not among those the partial export's signed end record lists",
            )
            return
        self._link(record, stored, prev)

    def _check_event(self, record: Record) -> tuple[str | None, str | None]:
        """Check an event on its own; return its stored hash and prev_hash when readable."""
        try:
            document = orjson.loads(record.state)
        except orjson.JSONDecodeError as error:
            self._problem(Kind.UNREADABLE, record, f"the stored state is not JSON ({error})")
            return None, None
        if not isinstance(document, dict):
            self._problem(Kind.UNREADABLE, record, "the stored state is not a JSON object")
            return None, None
        stored = document.get(HASH_FIELD)
        prev = document.get(PREV_HASH_FIELD)
        if not isinstance(stored, str) or not isinstance(prev, str):
            self._problem(Kind.UNREADABLE, record, "the stored state has no hash or prev_hash")
            return None, None
        try:
            computed = stored_event_hash(
                record.stream, record.version, record.topic, record.state, stored
            )
        except ValueError as error:
            self._problem(Kind.HASH_MISMATCH, record, str(error))
            return stored, prev
        if computed != stored:
            self._problem(
                Kind.HASH_MISMATCH,
                record,
                f"stored hash {stored[:12]}… but the content hashes to {computed[:12]}…",
            )
        return stored, prev

    def _link(self, record: Record, stored: str | None, prev: str | None) -> None:
        """Check the event's place in its stream."""
        position, stream, version = record.position, record.stream, record.version
        tip = self._streams.get(stream)
        last = tip.version if tip is not None else 0
        if version <= last:
            self._late(record, stored, prev, last)
            return
        if version == last + 1:
            expected = tip.hash if tip is not None else GENESIS
            if prev is not None and expected is not None and prev != expected:
                self._problem(
                    Kind.BROKEN_LINK,
                    record,
                    f"prev_hash {prev[:12]}… is not the hash of version {last} ({expected[:12]}…)",
                )
            gap = self._gaps.pop((stream, version), None)
            if gap is not None and gap.hash is not None and gap.hash == stored:
                self._reinserted(gap, record)
        else:
            before = tip.hash if tip is not None else GENESIS

            def remember(missing: int) -> None:
                # What the missing event must link to and hash to, were it to turn up.
                self._gaps[(stream, missing)] = _Gap(
                    problem=len(self.problems),
                    prev=before if missing == last + 1 else None,
                    hash=prev if missing == version - 1 else None,
                    before=position,
                )

            absent = range(last + 1, version)
            if len(absent) > MAX_LISTED_GAP:
                # A forged version number must not make the verifier list (and hold)
                # millions of problems: name the two ends of the gap only.
                absent = range(0)
                for missing in (last + 1, version - 1):
                    remember(missing)
                self.problems.append(
                    Problem(
                        Kind.MISSING_EVENT,
                        position,
                        stream,
                        last + 1,
                        f"absent: versions {last + 1} to {version - 1} "
                        f"({version - last - 1} events); version {version} at position "
                        f"{position} follows version {last}",
                    )
                )
            for missing in absent:
                remember(missing)
                self.problems.append(
                    Problem(
                        Kind.MISSING_EVENT,
                        position,
                        stream,
                        missing,
                        f"absent: version {version} at position {position} follows version {last}",
                    )
                )
        self._streams[stream] = _Tip(version, stored, position)
        if self._next < len(self._checkpoints):
            self._dirty.setdefault(stream, []).append((version, stored, position))

    def _late(self, record: Record, stored: str | None, prev: str | None, last: int) -> None:
        """An event that arrives after a later version of its own stream."""
        gap = self._gaps.pop((record.stream, record.version), None)
        if gap is not None:
            fits = (gap.prev is None or gap.prev == prev) and (
                gap.hash is None or gap.hash == stored
            )
            if fits:
                self._reinserted(gap, record)
                return
            self._gaps[(record.stream, record.version)] = gap
        self._problem(
            Kind.OUT_OF_ORDER,
            record,
            f"appears after version {last} of its stream and is not the original "
            f"version {record.version}",
        )

    def _reinserted(self, gap: _Gap, record: Record) -> None:
        self.problems[gap.problem] = Problem(
            Kind.REINSERTED,
            record.position,
            record.stream,
            record.version,
            f"belongs before position {gap.before} but was re-inserted at "
            f"position {record.position}",
        )

    # Seals ------------------------------------------------------------------------

    def _checkpoint(self, checkpoint: _Checkpoint) -> None:
        seal = checkpoint.seal
        if self._partial and checkpoint.source != "end":
            self._stream_checkpoint(checkpoint)
            return
        if not checkpoint.valid:
            # An unverifiable seal says nothing trustworthy: take the log's own tips as
            # the baseline so that the next good seal is compared like-for-like.
            for stream in set(seal.streams) | set(self._dirty):
                tip = self._streams.get(stream)
                if tip is not None and tip.hash is not None:
                    self._expected[stream] = (tip.version, tip.hash)
            self._dirty.clear()
            return
        if self._head != seal.head:
            self.problems.append(
                Problem(
                    Kind.SEAL_MISMATCH,
                    seal.position,
                    None,
                    None,
                    f"the running head after position {seal.position} is {self._head[:12]}… "
                    f"but {self._label(seal)}{self._recorded(checkpoint)} signed "
                    f"{seal.head[:12]}…: an event at or before it was changed, removed, "
                    "added or moved",
                )
            )
            self._head = seal.head
        for stream in sorted(set(seal.streams) | set(self._dirty)):
            expected = seal.streams.get(stream) or self._expected.get(stream)
            self._compare(stream, expected, seal)
        self._expected.update(seal.streams)
        self._dirty.clear()

    def _stream_checkpoint(self, checkpoint: _Checkpoint) -> None:
        """A log seal met in a partial log: compare the tips of the streams it holds.

        The signed head folds in every stream, so it is not compared here; a stream the
        seal records that the partial log does not hold is noted as unchecked, not missing.
        """
        seal = checkpoint.seal
        held = {s for s in seal.streams if self._held(s)}
        self._unchecked.update(s for s in seal.streams if s not in held)
        if not checkpoint.valid:
            for stream in held | set(self._dirty):
                tip = self._streams.get(stream)
                if tip is not None and tip.hash is not None:
                    self._expected[stream] = (tip.version, tip.hash)
            self._dirty.clear()
            return
        for stream in sorted(held | set(self._dirty)):
            expected = seal.streams.get(stream) or self._expected.get(stream)
            self._compare(stream, expected, seal)
        self._expected.update({s: seal.streams[s] for s in held})
        self._dirty.clear()

    def _compare(self, stream: str, expected: tuple[int, str] | None, seal: Seal) -> None:
        """Compare a stream's tip at a seal's position with what the seal recorded."""
        tip = self._streams.get(stream)
        history = self._dirty.get(stream, [])
        where = seal.position
        if expected is None:
            for version, _, position in history:
                self.problems.append(
                    Problem(
                        Kind.INSERTED_EVENT,
                        position,
                        stream,
                        version,
                        f"at or before position {where}, but {self._label(seal)} does not "
                        "record this stream",
                    )
                )
            return
        sealed_version, sealed_hash = expected
        actual = tip.version if tip is not None else 0
        if actual < sealed_version:
            first = max(actual, self._reported_missing.get(stream, 0)) + 1
            if first > sealed_version:
                return
            self._reported_missing[stream] = sealed_version
            if actual == 0 and first == 1:
                self.problems.append(
                    Problem(
                        Kind.MISSING_STREAM,
                        where,
                        stream,
                        sealed_version,
                        f"{self._label(seal)} records versions 1 to {sealed_version} of this "
                        "stream; none is in the log",
                    )
                )
                return
            for version in range(first, sealed_version + 1):
                self._gaps[(stream, version)] = _Gap(
                    problem=len(self.problems),
                    prev=tip.hash if tip is not None and version == actual + 1 else None,
                    hash=sealed_hash if version == sealed_version else None,
                    before=where,
                )
                self.problems.append(
                    Problem(
                        Kind.MISSING_EVENT,
                        where,
                        stream,
                        version,
                        f"{self._label(seal)} records version {sealed_version} of this "
                        f"stream; the log holds only up to version {actual} there",
                    )
                )
            return
        if actual > sealed_version:
            for version, hash_, position in history:
                if version > sealed_version:
                    self.problems.append(
                        Problem(
                            Kind.INSERTED_EVENT,
                            position,
                            stream,
                            version,
                            f"at or before position {where}, but {self._label(seal)} records "
                            f"this stream only up to version {sealed_version}",
                        )
                    )
                elif version == sealed_version and hash_ != sealed_hash:
                    self._replaced(stream, version, position, seal)
            return
        if tip is not None and tip.hash != sealed_hash:
            self._replaced(stream, tip.version, tip.position, seal)

    def _replaced(self, stream: str, version: int, position: int, seal: Seal) -> None:
        self.problems.append(
            Problem(
                Kind.REPLACED_EVENT,
                position,
                stream,
                version,
                f"{self._label(seal)} records a different hash for this version",
            )
        )

    def _problem(self, kind: Kind, record: Record, detail: str) -> None:
        self.problems.append(Problem(kind, record.position, record.stream, record.version, detail))

    # The end ----------------------------------------------------------------------

    def finish(self) -> Report:
        """Check what remains (seals beyond the end, seals missing from the log)."""
        end_of_log = max(self._last_position, self._log_end)
        while self._next < len(self._checkpoints):
            checkpoint = self._checkpoints[self._next]
            self._next += 1
            seal = checkpoint.seal
            if seal.position <= end_of_log:
                self._checkpoint(checkpoint)
                continue
            if not checkpoint.valid:
                continue
            self.problems.append(
                Problem(
                    Kind.TRUNCATED,
                    seal.position,
                    None,
                    None,
                    f"the log ends at position {end_of_log}, but "
                    f"{self._label(seal)} covers through {seal.position}",
                )
            )
        for checkpoint in self._external:
            seal = checkpoint.seal
            if not checkpoint.valid or seal.event_position is None:
                continue
            if seal.position > end_of_log:
                continue  # already reported as truncated
            if seal.event_position > end_of_log:
                self.problems.append(
                    Problem(
                        Kind.TRUNCATED,
                        seal.event_position,
                        LEDGER_STREAM,
                        None,
                        f"the log ends at position {end_of_log}, but "
                        f"{self._label(seal)} was recorded at position {seal.event_position}",
                    )
                )
            else:
                self.problems.append(
                    Problem(
                        Kind.MISSING_SEAL,
                        seal.event_position,
                        LEDGER_STREAM,
                        None,
                        f"{self._label(seal)} was recorded at position {seal.event_position} "
                        "but is not in the log",
                    )
                )
        if self._expect_end and self._end is None:
            self.problems.append(
                Problem(
                    Kind.TRUNCATED,
                    None,
                    None,
                    None,
                    "the export has no end record: the file is incomplete or was cut short",
                )
            )
        if self._partial:
            self.notes.extend(self._partial_notes())
        self.problems.sort(key=_problem_order)
        return Report(
            events=self._events,
            head=self._head,
            last_position=self._last_position,
            sealed_through=self.sealed_through,
            seals=self._seals,
            unsealed=self._unsealed,
            problems=self.problems,
            notes=self.notes,
            partial=self._partial,
        )

    def _partial_notes(self) -> list[str]:
        """What a partial log could not show, said plainly."""
        unchecked = self._unchecked - set(self._streams) - (self._scope or set())
        notes = [
            f"partial export: it holds {len(self._streams)} streams (some sites' casebooks "
            "and the ledger stream with its seals and keys), not the whole log",
            "checked: every included event's hash and its stream's chain, every seal's "
            "signature, each included stream's last version and hash against every seal "
            "that records it, and the running head over the included events against the "
            "export's signed end record",
            "not checked: the running head at each seal (it folds in every site's events, "
            f"and this file holds only some); the {len(unchecked)} streams the seals record "
            "that are not in this file (other sites, accounts, the study and dose "
            "escalation): they are out of scope, not missing; verify a full export or the "
            "database for them",
        ]
        if self._scope is None:
            notes.append(
                "the end record is missing or does not verify, so the streams the export "
                "should hold are not known: a whole stream removed from the file would not show"
            )
        return notes


def _problem_order(problem: Problem) -> tuple[int, int]:
    return (problem.position if problem.position is not None else 1 << 62, 0)


def verify_records(
    records: Iterable[Record],
    ledger: LedgerStream,
    *,
    trusted_keys: dict[str, Ed25519PublicKey] | None = None,
    external_seals: Sequence[Seal] = (),
    end: Seal | None = None,
    expect_end: bool = False,
    problems: Sequence[Problem] = (),
    notes: Sequence[str] = (),
    partial: bool = False,
    progress: Callable[[Record], None] | None = None,
) -> Report:
    """Verify a whole (or, with ``partial``, a site-limited) log given in order."""
    verifier = Verifier(
        ledger,
        trusted_keys=trusted_keys,
        external_seals=external_seals,
        end=end,
        expect_end=expect_end,
        problems=problems,
        notes=notes,
        partial=partial,
    )
    for record in records:
        verifier.feed(record)
        if progress is not None:
            progress(record)
    return verifier.finish()
