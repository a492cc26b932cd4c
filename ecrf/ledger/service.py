"""The ledger wired to a running application: follow the log, seal it, serve it.

`LedgerService` keeps the running head from the last seal onward (recomputed on start,
then extended as the log grows), records a seal every ``seal_interval`` events, when
something has waited longer than ``seal_max_age_seconds`` since the last seal, on
demand and at shutdown, and serves events, keys, seals, verification and the export.
Seals are `Ledger` events saved through the application, so they are chained too; a
copy of each is appended to ``<data dir>/seals.jsonl`` so that a log cut short in the
database still shows against seals kept outside it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import ApplicationRecorder, IntegrityError

from ecrf.domain.access import SITE_BOUND_ROLES, SYSTEM, Action, Actor
from ecrf.domain.errors import ConflictError
from ecrf.domain.ids import ledger_stream
from ecrf.domain.ledger import Ledger
from ecrf.ledger.chain import GENESIS, HASH_FIELD, PREV_HASH_FIELD, stored_event_hash
from ecrf.ledger.export import export_lines
from ecrf.ledger.readers import BATCH, HeldSeals, read_held_seals, verify_log
from ecrf.ledger.records import (
    LEDGER_STREAM,
    SEALED_TOPIC,
    Record,
    mirror_path,
    state_bytes,
    stream_id,
)
from ecrf.ledger.seals import (
    ALGORITHM,
    Seal,
    SealKey,
    Tip,
    head_hash_of,
    load_public_key,
    next_head,
    verify_seal,
)
from ecrf.ledger.verify import LoggedSeal, Report, read_ledger_stream

if TYPE_CHECKING:
    from ecrf.application import EcrfApplication
    from ecrf.persistence import EventTable

logger = logging.getLogger("ecrf.ledger")

_SEAL_ATTEMPTS = 10


class RecorderLog:
    """The application's own log, read raw (stored bytes, never the mapper)."""

    def __init__(self, recorder: ApplicationRecorder, table: EventTable) -> None:
        self.recorder = recorder
        self.table = table

    def records(self, after: int = 0) -> Iterator[Record]:
        """Every record after ``after``, in log order, read in pages."""
        while True:
            page = self.recorder.select_notifications(
                start=after, limit=BATCH, inclusive_of_start=False
            )
            for n in page:
                yield Record(
                    n.id,
                    stream_id(n.originator_id),
                    n.originator_version,
                    n.topic,
                    state_bytes(n.state),
                )
            if len(page) < BATCH:
                return
            after = page[-1].id

    def stream_records(
        self, stream: str, after: int = 0, limit: int | None = None, topic: str | None = None
    ) -> list[Record]:
        """Records of one stream after ``after``; a negative ``limit`` keeps the newest."""
        key: Any = UUID(stream).hex if self.table.engine == "sqlite" else UUID(stream)
        column = self.table.position_column
        sql = (
            f"SELECT {column}, originator_id, originator_version, topic, state "
            f"FROM {self.table.qualified_name} WHERE originator_id = ? AND {column} > ?"
        )
        params: list[Any] = [key, after]
        if topic is not None:
            sql += " AND topic = ?"
            params.append(topic)
        sql += f" ORDER BY {column}"
        if limit is not None:
            sql += f" DESC LIMIT {abs(limit)}" if limit < 0 else f" LIMIT {limit}"
        rows = self.table.execute(sql, params, fetch=True)
        records = [
            Record(int(r[0]), stream_id(r[1]), int(r[2]), str(r[3]), state_bytes(r[4]))
            for r in rows
        ]
        return sorted(records, key=lambda r: r.position)

    def max_position(self) -> int:
        """The last log position."""
        return int(self.recorder.max_notification_id() or 0)

    def close(self) -> None:
        """Nothing to release: the application owns the connections."""


@dataclass
class _Segment:
    """The log since the last seal, folded into the running head."""

    base: int
    head: str
    upto: int
    count: int = 0
    others: int = 0
    tips: dict[str, Tip] = field(default_factory=dict)
    broken: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class EventPage:
    """A page of ``GET /ledger/events`` and where the next page starts."""

    events: list[dict[str, Any]]
    next_after: int
    """The ``after`` of the next page: the last event returned, or, when the log ended
    first, the last position read (later events the caller may not see were skipped)."""


class LedgerService:
    """Follows one application's log: seals, verification and the export."""

    def __init__(self, application: EcrfApplication) -> None:
        self.application = application
        settings = application.settings
        self.interval = settings.seal_interval
        self.max_age = settings.seal_max_age_seconds
        self.key_path = settings.seal_key_file or settings.data_dir / "seal-key.pem"
        self.mirror_path = mirror_path(settings.data_dir)
        self.log = RecorderLog(application.recorder, application.table)
        self.last_error: str | None = None
        self._key: SealKey | None = None
        self._lock = threading.RLock()
        self._segment: _Segment | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = datetime.now(UTC)
        """Before the first seal, pending events count as waiting from this moment."""

    @property
    def key(self) -> SealKey:
        """The signing key, created in the data directory on first use."""
        if self._key is None:
            self._key = SealKey.load_or_create(self.key_path)
        return self._key

    # Following and sealing ---------------------------------------------------------

    def last_seal(self) -> LoggedSeal | None:
        """The newest seal in the log."""
        records = self.log.stream_records(LEDGER_STREAM, limit=-1, topic=SEALED_TOPIC)
        seals = read_ledger_stream(records).seals
        return seals[-1] if seals else None

    def pending(self) -> int:
        """How many events are not yet covered by a seal."""
        with self._lock:
            return self._catch_up(self.last_seal()).count

    def _catch_up(self, last: LoggedSeal | None) -> _Segment:
        base = last.seal.position if last is not None else 0
        segment = self._segment
        if segment is None or segment.base != base:
            head = last.seal.head if last is not None else GENESIS
            segment = _Segment(base=base, head=head, upto=base)
        for record in self.log.records(after=segment.upto):
            stored = head_hash_of(record.state)
            if not _hash_holds(record):
                segment.broken.append(record.position)
            segment.head = next_head(segment.head, record.position, stored)
            segment.upto = record.position
            segment.count += 1
            if record.stream != LEDGER_STREAM:
                segment.others += 1
            segment.tips[record.stream] = (record.version, stored)
        self._segment = segment
        return segment

    def seal(self, actor: Actor = SYSTEM, reason: str = "on demand") -> Seal | None:
        """Seal everything logged so far; returns the newest seal (``None``: empty log).

        When only seals were logged since the last seal, that seal is returned as is.
        """
        role = "system" if actor is SYSTEM else actor.role_for(Action.READ_LEDGER)
        with self._lock:
            for _ in range(_SEAL_ATTEMPTS):
                last = self.last_seal()
                if last is not None:
                    self._check_last(last)
                segment = self._catch_up(last)
                if segment.others == 0:
                    return last.seal if last is not None else None
                if segment.broken:
                    raise ConflictError(
                        f"the event at position {segment.broken[0]} fails its hash check: "
                        "the log is not sealed; run `ecrf verify`"
                    )
                sealed = self._record(segment, actor.stamp(role, "", reason), reason)
                if sealed is not None:
                    return sealed
                # Lost a race with another sealer: let it finish before trying again.
                time.sleep(random.uniform(0.005, 0.05))
            raise ConflictError("the ledger is being sealed concurrently; try again")

    def _check_last(self, last: LoggedSeal) -> None:
        """Refuse to build on a seal that does not verify (the head chains from it)."""
        key = self.key.public_key if last.seal.key_id == self.key.key_id else None
        if key is None:
            ledger = self._ledger()
            pem = ledger.keys.get(last.seal.key_id) if ledger is not None else None
            key = load_public_key(pem.encode("ascii")) if pem else None
        if key is None or not verify_seal(last.seal, key):
            raise ConflictError(
                f"the seal at position {last.position} does not verify: the log is not "
                "sealed; run `ecrf verify`"
            )

    def _ledger(self) -> Ledger | None:
        try:
            ledger: Any = self.application.repository.get(ledger_stream())
        except AggregateNotFoundError:
            return None
        return ledger if isinstance(ledger, Ledger) else None

    def _record(self, segment: _Segment, audit: dict[str, Any], reason: str) -> Seal | None:
        key = self.key
        seal = key.sign(segment.upto, segment.head, dict(sorted(segment.tips.items())))
        ledger = self._ledger() or Ledger(audit=audit)
        if key.key_id not in ledger.keys:
            ledger.add_key(key.key_id, ALGORITHM, key.public_key_pem, audit)
        try:
            ledger.seal(
                position=seal.position,
                head=seal.head,
                at=seal.at,
                key_id=seal.key_id,
                signature=seal.signature,
                streams={s: [v, h] for s, (v, h) in seal.streams.items()},
                reason=reason,
                audit=audit,
            )
            recordings = self.application.save(ledger)
        except (ConflictError, IntegrityError):
            # Another process sealed first: start again from its seal.
            self._segment = None
            return None
        sealed = replace(seal, event_position=int(recordings[-1].notification.id), reason=reason)
        self._mirror(sealed)
        self._segment = None
        logger.info("sealed the log through position %s", sealed.position)
        return sealed

    def _mirror(self, seal: Seal) -> None:
        """Append the seal to the file kept outside the database."""
        self.mirror_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.mirror_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # One appender at a time (several workers share the data directory), so that
            # a torn line left by a crash is repaired by exactly one of them.
            fcntl.flock(fd, fcntl.LOCK_EX)
            _drop_torn_line(fd, self.mirror_path)
            os.write(fd, orjson.dumps(seal.to_dict()) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def maybe_seal(self, now: datetime | None = None) -> Seal | None:
        """Seal when ``seal_interval`` events are pending, or when anything is pending and
        the last seal is older than ``seal_max_age_seconds`` (``now``: the current time)."""
        with self._lock:
            last = self.last_seal()
            segment = self._catch_up(last)
            if self.interval > 0 and segment.count >= self.interval:
                return self.seal(reason=f"every {self.interval} events")
            if self.max_age > 0 and segment.others > 0:
                waited = (now or datetime.now(UTC)) - self._sealed_at(last)
                if waited.total_seconds() >= self.max_age:
                    return self.seal(reason=f"pending for over {self.max_age} s")
            return None

    def _sealed_at(self, last: LoggedSeal | None) -> datetime:
        """When the last seal was signed (before any seal: when this service started)."""
        if last is None:
            return self._since
        try:
            at = datetime.fromisoformat(last.seal.at)
        except ValueError:
            return datetime.min.replace(tzinfo=UTC)  # unreadable: treat as long ago
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)

    def start(self, poll_seconds: float = 1.0) -> None:
        """Load (or create) the key and follow the log in a background thread."""
        _ = self.key
        if self._thread is not None or (self.interval <= 0 and self.max_age <= 0):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._follow, args=(poll_seconds,), name="ledger", daemon=True
        )
        self._thread.start()

    def _follow(self, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            try:
                self.maybe_seal()
                self.last_error = None
            except Exception as error:  # keep following; shown in the log and status
                self.last_error = f"{type(error).__name__}: {error}"
                logger.warning("ledger follower: %s", self.last_error)

    def stop(self, seal: bool = True) -> None:
        """Stop following; by default seal what was logged (the shutdown seal)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if seal:
            try:
                self.seal(reason="shutdown")
            except Exception as error:  # shutting down must not fail on the ledger
                logger.error("no shutdown seal: %s", error)

    # Serving --------------------------------------------------------------------------

    def events(
        self, actor: Actor, after: int = 0, limit: int = 100, stream: UUID | None = None
    ) -> EventPage:
        """Up to ``limit`` events the caller may see, in log order after ``after``.

        A monitor sees the events of their own sites (and those of no site) only; the
        log is read on past other sites' events until ``limit`` are found or it ends, so
        that a short page always means the end of the log.
        """
        bound = actor.role_for(Action.READ_LEDGER) in SITE_BOUND_ROLES
        visible: list[dict[str, Any]] = []
        cursor = after
        # Read ahead in larger pages when most events may be another site's.
        size = max(limit, BATCH) if bound else limit
        while True:
            records = self._page(cursor, size, stream)
            for record in records:
                view = event_view(record)
                if not bound or _site_of(view) in ("", *actor.sites):
                    visible.append(view)
                    if len(visible) == limit:
                        return EventPage(visible, record.position)
            if len(records) < size:
                return EventPage(visible, records[-1].position if records else cursor)
            cursor = records[-1].position

    def _page(self, after: int, limit: int, stream: UUID | None) -> list[Record]:
        if stream is not None:
            return self.log.stream_records(str(stream), after=after, limit=limit)
        page = self.application.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        return [
            Record(
                n.id,
                stream_id(n.originator_id),
                n.originator_version,
                n.topic,
                state_bytes(n.state),
            )
            for n in page
        ]

    def held_seals(self) -> HeldSeals:
        """The seals kept outside the database (the mirror file), with what was unreadable."""
        if not self.mirror_path.exists():
            return HeldSeals()
        try:
            held = read_held_seals(self.mirror_path)
        except (OSError, ValueError) as error:
            logger.error("unreadable seal mirror %s: %s", self.mirror_path, error)
            return HeldSeals(notes=[f"the seal copies in {self.mirror_path} are unreadable"])
        for problem in held.problems:
            logger.error("seal mirror %s: %s", self.mirror_path, problem.detail)
        for note in held.notes:
            logger.warning("seal mirror %s: %s", self.mirror_path, note)
        return held

    def keys(self, actor: Actor) -> list[dict[str, str]]:
        """Every signing key recorded in the ledger, and the current one."""
        actor.role_for(Action.READ_LEDGER)
        return self._keys()

    def _keys(self) -> list[dict[str, str]]:
        ledger = read_ledger_stream(self.log.stream_records(LEDGER_STREAM))
        pems = dict(ledger.key_pems)
        pems.setdefault(self.key.key_id, self.key.public_key_pem)
        return [
            {"key_id": k, "algorithm": ALGORITHM, "public_key_pem": pem}
            for k, pem in sorted(pems.items())
        ]

    def seals(self, actor: Actor) -> list[Seal]:
        """Every seal in the log, oldest first."""
        actor.role_for(Action.READ_LEDGER)
        ledger = read_ledger_stream(self.log.stream_records(LEDGER_STREAM))
        return [s.seal for s in ledger.seals]

    def request_seal(self, actor: Actor) -> Seal | None:
        """Seal on a reader's request (attributed to them)."""
        return self.seal(actor, reason=f"on demand by {actor.username}")

    def verify(self, actor: Actor) -> Report:
        """Verify the whole log from its stored bytes, trusting this server's key."""
        actor.role_for(Action.READ_LEDGER)
        return verify_log(
            self.log,
            trusted_keys={self.key.key_id: self.key.public_key},
            held_seals=self.held_seals(),
        )

    def export(self, actor: Actor) -> Iterator[bytes]:
        """The export, line by line (checks the caller before the first line).

        A monitor gets a partial export: the streams of their sites and the ledger
        stream, which `ecrf verify --file` checks stream by stream against the seals.
        """
        role = actor.role_for(Action.READ_LEDGER)
        sites = actor.sites if role in SITE_BOUND_ROLES else None
        held = self.held_seals().seals
        return export_lines(self.log.records(), self.key, self._keys(), held, sites=sites)


def _hash_holds(record: Record) -> bool:
    """Whether a record's stored hash is the hash of its stored bytes."""
    try:
        stored = orjson.loads(record.state)[HASH_FIELD]
        computed = stored_event_hash(
            record.stream, record.version, record.topic, record.state, stored
        )
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError):
        return False
    return bool(stored == computed)


def event_view(record: Record) -> dict[str, Any]:
    """One record as ``GET /ledger/events`` shows it."""
    try:
        state: Any = orjson.loads(record.state)
    except orjson.JSONDecodeError:
        state = None
    document: dict[str, Any] = dict(state) if isinstance(state, dict) else {}
    if "password_hash" in document:
        # A view, not the record: the stored bytes (and so verification and the export)
        # keep the argon2id hash; readers of the events page do not need it.
        document["password_hash"] = "withheld"
    audit = document.get("audit")
    return {
        "position": record.position,
        "stream": record.stream,
        "version": record.version,
        "type": record.topic,
        "at": _timestamp(document.get("timestamp")),
        "actor": _text(audit.get("user")) if isinstance(audit, dict) else None,
        # Tampered rows are shown as they are: whatever is not an object is no data.
        "data": document if isinstance(state, dict) else None,
        "prev_hash": _text(document.get(PREV_HASH_FIELD)),
        "hash": _text(document.get(HASH_FIELD)),
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _site_of(view: dict[str, Any]) -> str:
    """The site an event is stamped with ("" for events that belong to no site)."""
    audit = (view.get("data") or {}).get("audit")
    site = audit.get("site") if isinstance(audit, dict) else ""
    return site if isinstance(site, str) else ""


def _timestamp(value: Any) -> datetime | None:
    """The event time from the transcoder's ``{"_type_": "datetime_iso", "_data_": ...}``."""
    if isinstance(value, dict) and value.get("_type_") == "datetime_iso":
        try:
            return datetime.fromisoformat(str(value.get("_data_")))
        except ValueError:
            return None
    return None


def _drop_torn_line(fd: int, path: os.PathLike[str] | str) -> None:
    """Cut an unfinished last line (a crash mid-append) so the next seal starts clean.

    The cut bytes never formed a seal: each seal is written with its newline in one
    write, after its event is committed, so the seal itself is still in the log. A last
    line that is whole JSON but lacks its newline (written by hand) only gets the newline.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep = size
    while keep > 0:
        start = max(0, keep - 65536)
        newline = os.pread(fd, keep - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        keep = start
    try:
        orjson.loads(os.pread(fd, size - keep, keep))
    except orjson.JSONDecodeError:
        os.ftruncate(fd, keep)
        logger.warning("seal mirror %s: dropped a torn last line of %d bytes", path, size - keep)
    else:
        os.write(fd, b"\n")
