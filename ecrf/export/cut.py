"""Where an export stands in the log: its cut (log position and ledger head) and contents.

Every export reflects one prefix of the log and says which: the log position of the last
event it includes, and the ledger's running head after that position (the value a seal
at that position signs and ``ecrf verify`` recomputes). The ledger has no "head at
position N" call, so the cut folds the log itself with the ledger's own byte recipe
(`ecrf.ledger.seals.next_head` over each stored event's ``hash``); the stored hash of the
last included event is given too.

Which events a cut includes, as for ``as_of`` reports (``projections/as_of.py``) and
casebooks: the log is read in commit order up to its end when the export starts (later
commits never leak into a running export); with ``as_of=T`` each stream stops at its first
event stamped after T. Re-running an export with the ``as_of`` it states (the newest event
time it includes) gives the same content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ecrf.domain.study import StudyRegistry
from ecrf.domain.subject import Subject
from ecrf.domain.user import User
from ecrf.ledger.chain import GENESIS
from ecrf.ledger.records import state_bytes
from ecrf.ledger.seals import head_hash_of, next_head

if TYPE_CHECKING:
    from ecrf.application import EcrfApplication

BATCH = 1000


@dataclass(frozen=True)
class SubjectAtCut:
    """A casebook the cut includes, and the last version of it that it includes."""

    subject_id: str
    site: str
    stream: UUID
    version: int


@dataclass
class Account:
    """A user account as it stood at the cut."""

    username: str
    full_name: str
    roles: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SiteAtCut:
    """A study site as it stood at the cut, and when it was added."""

    site_id: str
    name: str
    added_at: datetime


@dataclass(frozen=True)
class LogCut:
    """The log prefix an export reflects, with the subjects, accounts and sites in it."""

    position: int
    head: str
    event_hash: str
    at: datetime | None
    as_of: datetime | None
    subjects: tuple[SubjectAtCut, ...]
    accounts: tuple[Account, ...]
    sites: tuple[SiteAtCut, ...]

    def provenance(self) -> dict[str, Any]:
        """What the export states about itself (JSON-ready)."""
        return {
            "position": self.position,
            "head": self.head,
            "event_hash": self.event_hash,
            "as_of": iso_utc(self.at) if self.at is not None else None,
            "requested_as_of": iso_utc(self.as_of) if self.as_of is not None else None,
        }

    def headers(self) -> dict[str, str]:
        """HTTP headers stating the cut."""
        headers = {
            "X-Ecrf-Ledger-Position": str(self.position),
            "X-Ecrf-Ledger-Head": self.head,
        }
        if self.at is not None:
            headers["X-Ecrf-As-Of"] = iso_utc(self.at)
        return headers


def iso_utc(moment: datetime) -> str:
    """An instant as ISO 8601 UTC with ``Z`` (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def take_cut(application: EcrfApplication, as_of: datetime | None = None) -> LogCut:
    """Read the log once, in commit order, up to its current end (or ``as_of``)."""
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    end = application.max_position()
    head = GENESIS
    position, cut_head, cut_hash = 0, GENESIS, ""
    newest: datetime | None = None
    finished: set[UUID | str] = set()
    subjects: dict[UUID, SubjectAtCut] = {}
    accounts: dict[UUID, Account] = {}
    sites: dict[str, SiteAtCut] = {}
    start: int | None = None
    while end > 0:
        page = application.recorder.select_notifications(
            start=start, limit=BATCH, stop=end, inclusive_of_start=False
        )
        for notification in page:
            stored = head_hash_of(state_bytes(notification.state))
            head = next_head(head, notification.id, stored)
            stream = notification.originator_id
            if stream in finished:
                continue
            domain_event: Any = application.mapper.to_domain_event(notification)
            if as_of is not None and domain_event.timestamp > as_of:
                finished.add(stream)
                continue
            position, cut_head, cut_hash = notification.id, head, stored
            if newest is None or domain_event.timestamp > newest:
                newest = domain_event.timestamp
            _note(domain_event, notification.originator_version, subjects, accounts, sites)
        if len(page) < BATCH:
            break
        start = page[-1].id
    return LogCut(
        position=position,
        head=cut_head,
        event_hash=cut_hash,
        at=newest,
        as_of=as_of,
        subjects=tuple(sorted(subjects.values(), key=lambda s: s.subject_id)),
        accounts=tuple(sorted(accounts.values(), key=lambda a: a.username)),
        sites=tuple(sorted(sites.values(), key=lambda s: s.site_id)),
    )


def _note(
    domain_event: Any,
    version: int,
    subjects: dict[UUID, SubjectAtCut],
    accounts: dict[UUID, Account],
    sites: dict[str, SiteAtCut],
) -> None:
    """Keep what AdminData and the casebook list need from one included event."""
    stream: UUID = domain_event.originator_id
    if isinstance(domain_event, Subject.Registered):
        subjects[stream] = SubjectAtCut(domain_event.subject_id, domain_event.site, stream, version)
    elif isinstance(domain_event, Subject.Event) and stream in subjects:
        known = subjects[stream]
        subjects[stream] = SubjectAtCut(known.subject_id, known.site, stream, version)
    elif isinstance(domain_event, User.Created):
        accounts[stream] = Account(
            domain_event.username,
            domain_event.full_name,
            list(domain_event.roles),
            list(domain_event.sites),
        )
    elif isinstance(domain_event, User.RolesChanged) and stream in accounts:
        accounts[stream].roles = list(domain_event.roles)
    elif isinstance(domain_event, User.SitesChanged) and stream in accounts:
        accounts[stream].sites = list(domain_event.sites)
    elif isinstance(domain_event, StudyRegistry.SiteAdded):
        sites[domain_event.site_id] = SiteAtCut(
            domain_event.site_id, domain_event.name, domain_event.timestamp
        )
