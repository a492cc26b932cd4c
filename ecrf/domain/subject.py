"""The Subject aggregate: one casebook, with every form entry and every change to it.

Besides entries, corrections and voids, the casebook holds what monitoring adds to them:
queries, source data verification, electronic signatures and locks (21 CFR 11.10(e),
11.50, 11.70). All of it lives in one stream, so one casebook is one consistency boundary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate, event

from ecrf.domain.errors import ConflictError, InvalidInputError, LockedError, NotFoundError
from ecrf.domain.ids import subject_stream


def data_hash(data: dict[str, Any]) -> str:
    """SHA-256 of an entry's data as canonical JSON: what a signature is bound to."""
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


class SubjectStatus:
    """Subject status codes, in the order a subject usually moves through them."""

    SCREENING = "screening"
    ENROLLED = "enrolled"
    OFF_STUDY = "off_study"


class QueryState:
    """Query states: open -> answered -> closed, and closed -> open by reopen."""

    OPEN = "open"
    ANSWERED = "answered"
    CLOSED = "closed"


@dataclass(frozen=True)
class Signature:
    """One electronic signature manifestation (11.50): who, when, what it meant."""

    signer: str
    signer_name: str
    at: datetime
    meaning: str
    statement: str
    revision: int
    data_hash: str


@dataclass(frozen=True)
class Entry:
    """The current state of one form entry in a casebook."""

    entry_id: str
    form: str
    version: int
    visit: str
    data: dict[str, Any]
    schema_sha256: str
    recorded_at: datetime
    recorded_by: str
    revision: int = 1
    voided: bool = False
    updated_at: datetime | None = None
    locked: bool = False
    verified_revision: int | None = None
    verified_data: dict[str, Any] | None = None
    verified_by: str | None = None
    verified_at: datetime | None = None
    signatures: tuple[Signature, ...] = ()

    @property
    def sdv(self) -> str:
        """``not_verified``, ``verified``, or ``changed_since_verified``."""
        if self.verified_revision is None:
            return "not_verified"
        return "verified" if self.verified_revision == self.revision else "changed_since_verified"

    def signature_valid(self, signature: Signature) -> bool:
        """A signature holds while the entry is still at the signed data and revision."""
        return (
            not self.voided
            and signature.revision == self.revision
            and signature.data_hash == data_hash(self.data)
        )

    @property
    def signed(self) -> bool:
        """Whether any signature on the entry is still valid."""
        return any(self.signature_valid(s) for s in self.signatures)


@dataclass(frozen=True)
class QueryMessage:
    """One step in a query's conversation."""

    action: str
    text: str
    user: str
    user_name: str
    at: datetime


@dataclass(frozen=True)
class Query:
    """A question about one field of one entry, and its conversation."""

    query_id: str
    entry_id: str
    form: str
    path: str
    revision: int
    state: str
    system: bool
    opened_by: str
    opened_at: datetime
    messages: tuple[QueryMessage, ...] = ()


@dataclass(frozen=True)
class CasebookSignature:
    """A signature over a whole casebook: every live entry at its revision and hash."""

    signature: Signature
    entries: list[dict[str, Any]]


class Subject(Aggregate):
    """A trial subject's casebook: entries, their changes, and their monitoring."""

    class Event(Aggregate.Event):
        """Base of the casebook's events: exposes the event time while it applies."""

        def mutate(self, aggregate: Any) -> Any:
            """Apply the event with ``aggregate.event_time`` set to this event's time."""
            # The library sets modified_on only after apply(); entries record when
            # they changed, so the applying method needs the time beforehand.
            if aggregate is not None:
                aggregate.event_time = self.timestamp
            return super().mutate(aggregate)

    class Registered(Aggregate.Created):
        """A subject was registered at a site under a screening number."""

        subject_id: str
        site: str
        screening_number: str
        audit: dict[str, Any]

    class EntryRecorded(Event):
        """A form was entered for the first time (revision 1)."""

        entry_id: str
        form: str
        form_version: int
        visit: str
        data: dict[str, Any]
        schema_sha256: str
        audit: dict[str, Any]

    class EntryCorrected(Event):
        """An entry was changed, with a reason; ``changes`` lists old and new per path.

        ``form_version`` and ``schema_sha256`` name the schema that validated ``data``.
        Version 1 of this event did not carry them; such events load with both None.
        """

        class_version = 2

        entry_id: str
        form: str
        form_version: int | None
        revision: int
        data: dict[str, Any]
        schema_sha256: str | None
        changes: list[dict[str, Any]]
        query_id: str | None
        audit: dict[str, Any]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Corrections stored before version 2 do not say which schema validated them."""
            state["form_version"] = None
            state["schema_sha256"] = None

    class EntryMigrated(Event):
        """An entry was moved to a newer version of its form, with a reason.

        ``data`` is the entry's data as validated by the target version (derived values
        recomputed), ``changes`` old and new per JSON Pointer path (often none), and
        ``schema_sha256`` the hash of the target schema. The revision moves only when the
        data changes, so signatures and SDV of unchanged data still hold.
        """

        entry_id: str
        form: str
        from_version: int
        to_version: int
        revision: int
        data: dict[str, Any]
        changes: list[dict[str, Any]]
        schema_sha256: str
        audit: dict[str, Any]

    class EntryVoided(Event):
        """An entry was marked entered-in-error; it stays in the audit trail."""

        entry_id: str
        form: str
        revision: int
        audit: dict[str, Any]

    class QueryOpened(Event):
        """A monitor, data manager or the system questioned one field of an entry."""

        query_id: str
        entry_id: str
        form: str
        path: str
        revision: int
        text: str
        audit: dict[str, Any]

    class QueryAnswered(Event):
        """The site answered a query."""

        query_id: str
        entry_id: str
        text: str
        audit: dict[str, Any]

    class QueryClosed(Event):
        """A monitor or data manager closed a query."""

        query_id: str
        entry_id: str
        text: str
        audit: dict[str, Any]

    class QueryReopened(Event):
        """A closed query was opened again."""

        query_id: str
        entry_id: str
        text: str
        audit: dict[str, Any]

    class EntryVerified(Event):
        """A monitor verified an entry's revision against source documents (SDV)."""

        entry_id: str
        form: str
        revision: int
        audit: dict[str, Any]

    class EntrySigned(Event):
        """An investigator signed an entry at a revision, bound to its data hash."""

        entry_id: str
        form: str
        revision: int
        data_hash: str
        meaning: str
        statement: str
        audit: dict[str, Any]

    class CasebookSigned(Event):
        """An investigator signed the whole casebook (every live entry as it stood)."""

        entries: list[dict[str, Any]]
        meaning: str
        statement: str
        audit: dict[str, Any]

    class EntryLocked(Event):
        """A data manager locked an entry against changes."""

        entry_id: str
        form: str
        audit: dict[str, Any]

    class EntryUnlocked(Event):
        """A data manager unlocked an entry."""

        entry_id: str
        form: str
        audit: dict[str, Any]

    class CasebookLocked(Event):
        """A data manager locked the whole casebook."""

        audit: dict[str, Any]

    class CasebookUnlocked(Event):
        """A data manager unlocked the whole casebook."""

        audit: dict[str, Any]

    class Enrolled(Event):
        """The subject was enrolled at a dose level in a slot of the dose escalation."""

        dose_level: str
        slot: int
        audit: dict[str, Any]

    @staticmethod
    def create_id(subject_id: str, **_: Any) -> UUID:
        """One stream per subject id, so registering a subject twice conflicts."""
        return subject_stream(subject_id)

    @event(Registered)
    def __init__(
        self, subject_id: str, site: str, screening_number: str, audit: dict[str, Any]
    ) -> None:
        self.subject_id = subject_id
        self.site = site
        self.screening_number = screening_number
        self.status = SubjectStatus.SCREENING
        self.dose_level: str | None = None
        self.slot: int | None = None
        self.entries: dict[str, Entry] = {}
        self.queries: dict[str, Query] = {}
        self.locked = False
        self.casebook_signatures: list[CasebookSignature] = []
        self.event_time: datetime = self.created_on

    # Reading ----------------------------------------------------------------------

    def entry(self, entry_id: str) -> Entry:
        """Return one entry or raise NotFoundError."""
        try:
            return self.entries[entry_id]
        except KeyError:
            raise NotFoundError(f"entry {entry_id} not found") from None

    def query(self, query_id: str) -> Query:
        """Return one query or raise NotFoundError."""
        try:
            return self.queries[query_id]
        except KeyError:
            raise NotFoundError(f"query {query_id} not found") from None

    def live_entries(self, form: str, visit: str | None = None) -> list[Entry]:
        """Entries of ``form`` (at ``visit`` if given) that are not voided."""
        return [
            e
            for e in self.entries.values()
            if e.form == form and (visit is None or e.visit == visit) and not e.voided
        ]

    def open_queries(self, entry_id: str) -> int:
        """How many queries on an entry are open or answered (not yet closed)."""
        return sum(
            1
            for q in self.queries.values()
            if q.entry_id == entry_id and q.state != QueryState.CLOSED
        )

    def casebook_signature_valid(self, signed: CasebookSignature) -> bool:
        """A casebook signature holds while every signed entry is unchanged."""
        for item in signed.entries:
            entry = self.entries.get(item["entry_id"])
            if entry is None or entry.voided or entry.revision != item["revision"]:
                return False
        live = {e.entry_id for e in self.entries.values() if not e.voided}
        return live == {item["entry_id"] for item in signed.entries}

    # Entering data ------------------------------------------------------------------

    def ensure_writable(self, entry_id: str | None = None) -> None:
        """Raise LockedError if the casebook (or the given entry) is locked."""
        self._check_unlocked(self.entry(entry_id) if entry_id is not None else None)

    def _check_unlocked(self, entry: Entry | None = None) -> None:
        if self.locked:
            raise LockedError(f"casebook {self.subject_id} is locked")
        if entry is not None and entry.locked:
            raise LockedError(f"entry {entry.entry_id} is locked")

    def record_entry(
        self,
        entry_id: str,
        form: str,
        form_version: int,
        visit: str,
        data: dict[str, Any],
        schema_sha256: str,
        audit: dict[str, Any],
    ) -> None:
        """Record a new entry."""
        self._check_unlocked()
        if entry_id in self.entries:
            raise ConflictError(f"entry {entry_id} already exists")
        self._entry_recorded(entry_id, form, form_version, visit, data, schema_sha256, audit)

    def correct_entry(
        self,
        entry_id: str,
        expected_revision: int,
        data: dict[str, Any],
        changes: list[dict[str, Any]],
        audit: dict[str, Any],
        query_id: str | None = None,
        schema_sha256: str | None = None,
    ) -> None:
        """Change an entry's data; stale revisions, voided and locked entries conflict.

        ``data`` was validated by the entry's pinned form version, whose schema hash is
        ``schema_sha256`` (the entry's own when not given). Citing a query records the
        correction as its answer.
        """
        entry = self._current(entry_id, expected_revision)
        self._check_unlocked(entry)
        if not changes:
            raise ConflictError("the correction changes nothing")
        if query_id is not None:
            query = self.query(query_id)
            if query.entry_id != entry_id:
                raise ConflictError(f"query {query_id} is about another entry")
            if query.state == QueryState.CLOSED:
                raise ConflictError(f"query {query_id} is closed")
        self._entry_corrected(
            entry_id,
            entry.form,
            entry.version,
            entry.revision + 1,
            data,
            schema_sha256 or entry.schema_sha256,
            changes,
            query_id,
            audit,
        )
        if query_id is not None:
            self._query_answered(
                query_id, entry_id, f"Corrected: {audit.get('reason', '')}".strip(), audit
            )

    def check_migration(
        self, entry_id: str, to_version: int, expected_revision: int | None = None
    ) -> Entry:
        """The entry, if it may move to ``to_version``: unlocked, live, current, older.

        Locks refuse first (423), then a voided entry or a stale revision (409), then a
        version that is not newer than the entry's (422).
        """
        entry = self.entry(entry_id)
        self._check_unlocked(entry)
        if entry.voided:
            raise ConflictError(f"entry {entry_id} is voided")
        if expected_revision is not None and entry.revision != expected_revision:
            raise ConflictError(
                f"entry {entry_id} is at revision {entry.revision}, "
                f"not {expected_revision}: reload it and migrate again"
            )
        if to_version <= entry.version:
            raise InvalidInputError.single(
                "/to_version",
                f"entry {entry_id} is at version {entry.version} of {entry.form}; "
                "migrate it to a newer version",
            )
        return entry

    def migrate_entry(
        self,
        entry_id: str,
        to_version: int,
        data: dict[str, Any],
        changes: list[dict[str, Any]],
        schema_sha256: str,
        audit: dict[str, Any],
        expected_revision: int | None = None,
    ) -> None:
        """Move an entry to a newer version of its form (data validated by the caller)."""
        entry = self.check_migration(entry_id, to_version, expected_revision)
        revision = entry.revision + 1 if changes else entry.revision
        self._entry_migrated(
            entry_id,
            entry.form,
            entry.version,
            to_version,
            revision,
            data,
            changes,
            schema_sha256,
            audit,
        )

    def void_entry(self, entry_id: str, expected_revision: int, audit: dict[str, Any]) -> None:
        """Mark an entry entered-in-error."""
        entry = self._current(entry_id, expected_revision)
        self._check_unlocked(entry)
        self._entry_voided(entry_id, entry.form, entry.revision + 1, audit)

    def _current(self, entry_id: str, expected_revision: int) -> Entry:
        entry = self.entry(entry_id)
        if entry.voided:
            raise ConflictError(f"entry {entry_id} is voided")
        if entry.revision != expected_revision:
            raise ConflictError(
                f"entry {entry_id} is at revision {entry.revision}, "
                f"not {expected_revision}: reload it and apply your change again"
            )
        return entry

    # Queries ------------------------------------------------------------------------

    def open_query(self, entry_id: str, path: str, text: str, audit: dict[str, Any]) -> str:
        """Open a query on a field of an entry at its current revision; returns its id."""
        entry = self.entry(entry_id)
        if entry.voided:
            raise ConflictError(f"entry {entry_id} is voided")
        query_id = f"{self.subject_id}.Q{len(self.queries) + 1}"
        self._query_opened(query_id, entry_id, entry.form, path, entry.revision, text, audit)
        return query_id

    def answer_query(self, query_id: str, text: str, audit: dict[str, Any]) -> None:
        """Answer an open query (the site's reply)."""
        query = self.query(query_id)
        if query.state != QueryState.OPEN:
            raise ConflictError(
                f"query {query_id} is {query.state}; only open queries are answered"
            )
        self._query_answered(query_id, query.entry_id, text, audit)

    def close_query(self, query_id: str, text: str, audit: dict[str, Any]) -> None:
        """Close an open or answered query."""
        query = self.query(query_id)
        if query.state == QueryState.CLOSED:
            raise ConflictError(f"query {query_id} is already closed")
        self._query_closed(query_id, query.entry_id, text, audit)

    def reopen_query(self, query_id: str, text: str, audit: dict[str, Any]) -> None:
        """Reopen a closed query."""
        query = self.query(query_id)
        if query.state != QueryState.CLOSED:
            raise ConflictError(f"query {query_id} is {query.state}; only closed queries reopen")
        self._query_reopened(query_id, query.entry_id, text, audit)

    # Verification, signatures, locks ------------------------------------------------

    def verify_entry(self, entry_id: str, revision: int, audit: dict[str, Any]) -> None:
        """Mark the current revision of an entry source-verified."""
        entry = self.entry(entry_id)
        if entry.voided:
            raise ConflictError(f"entry {entry_id} is voided")
        if revision != entry.revision:
            raise ConflictError(
                f"entry {entry_id} is at revision {entry.revision}, not {revision}: "
                "verify what is there now"
            )
        if entry.verified_revision == revision:
            raise ConflictError(f"revision {revision} of entry {entry_id} is already verified")
        self._entry_verified(entry_id, entry.form, revision, audit)

    def sign_entry(
        self,
        entry_id: str,
        meaning: str,
        statement: str,
        audit: dict[str, Any],
        expected_revision: int | None = None,
    ) -> Signature:
        """Sign an entry at its current revision (the one the signer read, if given)."""
        entry = self.entry(entry_id)
        if entry.voided:
            raise ConflictError(f"entry {entry_id} is voided")
        if expected_revision is not None and entry.revision != expected_revision:
            raise ConflictError(
                f"entry {entry_id} is at revision {entry.revision}, not {expected_revision}: "
                "reload it and sign what is there now"
            )
        self._entry_signed(
            entry_id, entry.form, entry.revision, data_hash(entry.data), meaning, statement, audit
        )
        return self.entry(entry_id).signatures[-1]  # entries are replaced, not changed

    def sign_casebook(
        self,
        meaning: str,
        statement: str,
        audit: dict[str, Any],
        expected_revision: int | None = None,
    ) -> CasebookSignature:
        """Sign every live entry of the casebook as it stands (as the signer read it, if given).

        The casebook's revision is its version: any change to it since the signer read
        it (an entry, a correction, a query, a lock) makes ``expected_revision`` stale.
        """
        if expected_revision is not None and self.version != expected_revision:
            raise ConflictError(
                f"casebook {self.subject_id} is at revision {self.version}, "
                f"not {expected_revision}: reload it and sign what is there now"
            )
        entries = [
            {"entry_id": e.entry_id, "revision": e.revision, "data_hash": data_hash(e.data)}
            for e in self.entries.values()
            if not e.voided
        ]
        if not entries:
            raise ConflictError("there is nothing to sign in this casebook")
        self._casebook_signed(entries, meaning, statement, audit)
        return self.casebook_signatures[-1]

    def lock_entry(self, entry_id: str, audit: dict[str, Any]) -> None:
        """Lock an entry against corrections and voids."""
        entry = self.entry(entry_id)
        if entry.locked:
            raise ConflictError(f"entry {entry_id} is already locked")
        self._entry_locked(entry_id, entry.form, audit)

    def unlock_entry(self, entry_id: str, audit: dict[str, Any]) -> None:
        """Unlock a locked entry."""
        entry = self.entry(entry_id)
        if not entry.locked:
            raise ConflictError(f"entry {entry_id} is not locked")
        self._entry_unlocked(entry_id, entry.form, audit)

    def lock_casebook(self, audit: dict[str, Any]) -> None:
        """Lock the whole casebook: no new entries, corrections or voids."""
        if self.locked:
            raise ConflictError(f"casebook {self.subject_id} is already locked")
        self._casebook_locked(audit)

    def unlock_casebook(self, audit: dict[str, Any]) -> None:
        """Unlock the casebook."""
        if not self.locked:
            raise ConflictError(f"casebook {self.subject_id} is not locked")
        self._casebook_unlocked(audit)

    def enrol(self, dose_level: str, slot: int, audit: dict[str, Any]) -> None:
        """Enrol a subject in screening at a dose level and slot (saved with the escalation)."""
        self._check_unlocked()
        if self.status != SubjectStatus.SCREENING:
            raise ConflictError(f"subject {self.subject_id} is {self.status}, not in screening")
        self._enrolled(dose_level, slot, audit)

    # Applying events ----------------------------------------------------------------

    @event(EntryRecorded)
    def _entry_recorded(
        self,
        entry_id: str,
        form: str,
        form_version: int,
        visit: str,
        data: dict[str, Any],
        schema_sha256: str,
        audit: dict[str, Any],
    ) -> None:
        self._put_entry(
            Entry(
                entry_id=entry_id,
                form=form,
                version=form_version,
                visit=visit,
                data=data,
                schema_sha256=schema_sha256,
                recorded_at=self.event_time,
                recorded_by=audit["user"],
            )
        )

    @event(EntryCorrected)
    def _entry_corrected(
        self,
        entry_id: str,
        form: str,
        form_version: int | None,
        revision: int,
        data: dict[str, Any],
        schema_sha256: str | None,
        changes: list[dict[str, Any]],
        query_id: str | None,
        audit: dict[str, Any],
    ) -> None:
        self._change_entry(
            entry_id,
            data=data,
            revision=revision,
            schema_sha256=schema_sha256 or self.entries[entry_id].schema_sha256,
            updated_at=self.event_time,
        )

    @event(EntryMigrated)
    def _entry_migrated(
        self,
        entry_id: str,
        form: str,
        from_version: int,
        to_version: int,
        revision: int,
        data: dict[str, Any],
        changes: list[dict[str, Any]],
        schema_sha256: str,
        audit: dict[str, Any],
    ) -> None:
        self._change_entry(
            entry_id,
            version=to_version,
            data=data,
            revision=revision,
            schema_sha256=schema_sha256,
            updated_at=self.event_time,
        )

    @event(EntryVoided)
    def _entry_voided(self, entry_id: str, form: str, revision: int, audit: dict[str, Any]) -> None:
        self._change_entry(entry_id, voided=True, revision=revision, updated_at=self.event_time)

    @event(QueryOpened)
    def _query_opened(
        self,
        query_id: str,
        entry_id: str,
        form: str,
        path: str,
        revision: int,
        text: str,
        audit: dict[str, Any],
    ) -> None:
        self.queries = {
            **self.queries,
            query_id: Query(
                query_id=query_id,
                entry_id=entry_id,
                form=form,
                path=path,
                revision=revision,
                state=QueryState.OPEN,
                system=audit.get("role") == "system",
                opened_by=audit["user"],
                opened_at=self.event_time,
            ),
        }
        self._message(query_id, "opened", text, audit)

    @event(QueryAnswered)
    def _query_answered(
        self, query_id: str, entry_id: str, text: str, audit: dict[str, Any]
    ) -> None:
        self._message(query_id, "answered", text, audit, QueryState.ANSWERED)

    @event(QueryClosed)
    def _query_closed(self, query_id: str, entry_id: str, text: str, audit: dict[str, Any]) -> None:
        self._message(query_id, "closed", text, audit, QueryState.CLOSED)

    @event(QueryReopened)
    def _query_reopened(
        self, query_id: str, entry_id: str, text: str, audit: dict[str, Any]
    ) -> None:
        self._message(query_id, "reopened", text, audit, QueryState.OPEN)

    def _message(
        self,
        query_id: str,
        action: str,
        text: str,
        audit: dict[str, Any],
        state: str | None = None,
    ) -> None:
        query = self.queries[query_id]
        message = QueryMessage(
            action, text, audit["user"], audit.get("user_name", ""), self.event_time
        )
        changed = replace(query, state=state or query.state, messages=(*query.messages, message))
        self.queries = {**self.queries, query_id: changed}

    # State is copy-on-write: entries, queries and their parts are frozen and replaced,
    # never changed in place, so a copy of the aggregate needs only a new top-level dict
    # (see __deepcopy__) while cached copies stay untouched by commands that fail.

    def _put_entry(self, entry: Entry) -> None:
        self.entries = {**self.entries, entry.entry_id: entry}

    def _change_entry(self, entry_id: str, **changes: Any) -> None:
        self._put_entry(replace(self.entries[entry_id], **changes))

    def __deepcopy__(self, memo: dict[int, Any]) -> Subject:
        """A copy sharing the immutable parts: O(1) in the size of the casebook."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.__dict__["_pending_events"] = list(self.__dict__.get("_pending_events", []))
        return clone

    @event(EntryVerified)
    def _entry_verified(
        self, entry_id: str, form: str, revision: int, audit: dict[str, Any]
    ) -> None:
        self._change_entry(
            entry_id,
            verified_revision=revision,
            verified_data=self.entries[entry_id].data,
            verified_by=audit["user"],
            verified_at=self.event_time,
        )

    @event(EntrySigned)
    def _entry_signed(
        self,
        entry_id: str,
        form: str,
        revision: int,
        data_hash: str,
        meaning: str,
        statement: str,
        audit: dict[str, Any],
    ) -> None:
        entry = self.entries[entry_id]
        signature = Signature(
            signer=audit["user"],
            signer_name=audit.get("user_name", ""),
            at=self.event_time,
            meaning=meaning,
            statement=statement,
            revision=revision,
            data_hash=data_hash,
        )
        self._change_entry(entry_id, signatures=(*entry.signatures, signature))

    @event(CasebookSigned)
    def _casebook_signed(
        self, entries: list[dict[str, Any]], meaning: str, statement: str, audit: dict[str, Any]
    ) -> None:
        manifest = hashlib.sha256(orjson.dumps(entries, option=orjson.OPT_SORT_KEYS)).hexdigest()
        signature = Signature(
            signer=audit["user"],
            signer_name=audit.get("user_name", ""),
            at=self.event_time,
            meaning=meaning,
            statement=statement,
            revision=self.version + 1,
            data_hash=manifest,
        )
        signed = CasebookSignature(signature, entries)
        self.casebook_signatures = [*self.casebook_signatures, signed]

    @event(EntryLocked)
    def _entry_locked(self, entry_id: str, form: str, audit: dict[str, Any]) -> None:
        self._change_entry(entry_id, locked=True)

    @event(EntryUnlocked)
    def _entry_unlocked(self, entry_id: str, form: str, audit: dict[str, Any]) -> None:
        self._change_entry(entry_id, locked=False)

    @event(CasebookLocked)
    def _casebook_locked(self, audit: dict[str, Any]) -> None:
        self.locked = True

    @event(CasebookUnlocked)
    def _casebook_unlocked(self, audit: dict[str, Any]) -> None:
        self.locked = False

    @event(Enrolled)
    def _enrolled(self, dose_level: str, slot: int, audit: dict[str, Any]) -> None:
        self.status = SubjectStatus.ENROLLED
        self.dose_level = dose_level
        self.slot = slot
