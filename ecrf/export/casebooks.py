"""Casebooks as they stood at a cut: each event with its log position, replayed in order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ecrf.domain.subject import Subject
from ecrf.export.cut import LogCut, SubjectAtCut

if TYPE_CHECKING:
    from ecrf.application import EcrfApplication


def replay(application: EcrfApplication, ref: SubjectAtCut) -> Iterator[tuple[Any, int, Subject]]:
    """Each event of a casebook up to the cut, its log position, and the casebook after it.

    The casebook yielded is one object mutated in place: read it before the next step.
    """
    positions = application.table.stream_positions(ref.stream)
    subject: Any = None
    events: Iterator[Any] = application.events.get(ref.stream, lte=ref.version)
    for domain_event in events:
        subject = domain_event.mutate(subject)
        yield domain_event, positions.get(domain_event.originator_version, 0), subject


def casebook_at(application: EcrfApplication, ref: SubjectAtCut) -> Subject:
    """A casebook exactly as it stood at the cut."""
    subject: Subject | None = None
    for _, _, current in replay(application, ref):
        subject = current
    if subject is None:  # the cut only lists registered subjects
        raise LookupError(f"subject {ref.subject_id} has no events")
    return subject


def casebooks(application: EcrfApplication, cut: LogCut) -> Iterator[Subject]:
    """Every casebook in the cut, one at a time, by subject id."""
    for ref in cut.subjects:
        yield casebook_at(application, ref)
