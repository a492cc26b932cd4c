"""Casebook facts: the plain values the SDTM mappings read (no aggregates, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ecrf.domain.subject import Entry, Subject


@dataclass(frozen=True)
class EntryFact:
    """One live entry: its form, visit, current data, and whether a signature holds."""

    entry_id: str
    form: str
    version: int
    visit: str
    data: Mapping[str, Any]
    signed_at: datetime | None = None
    """When the newest signature that still holds was made (None when none holds)."""

    @property
    def signed(self) -> bool:
        """Whether a signature holds for the entry's current data."""
        return self.signed_at is not None


@dataclass(frozen=True)
class Casebook:
    """A subject and its live entries in the order they were recorded."""

    subject_id: str
    site: str
    status: str = "screening"
    dose_level: str | None = None
    slot: int | None = None
    entries: tuple[EntryFact, ...] = field(default=())

    def live(self, form: str) -> list[EntryFact]:
        """Live entries of one form, oldest first."""
        return [e for e in self.entries if e.form == form]

    def first(self, form: str) -> EntryFact | None:
        """The first live entry of a form, if any."""
        found = self.live(form)
        return found[0] if found else None


def casebook_facts(subject: Subject) -> Casebook:
    """The facts of a casebook: voided entries leave every analysis."""
    return Casebook(
        subject_id=subject.subject_id,
        site=subject.site,
        status=subject.status,
        dose_level=subject.dose_level,
        slot=subject.slot,
        entries=tuple(
            EntryFact(e.entry_id, e.form, e.version, e.visit, e.data, _signed_at(e))
            for e in subject.entries.values()
            if not e.voided
        ),
    )


def _signed_at(entry: Entry) -> datetime | None:
    """When the newest still-valid signature of ``entry`` was made."""
    return max((s.at for s in entry.signatures if entry.signature_valid(s)), default=None)
