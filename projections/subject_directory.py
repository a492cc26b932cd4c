"""SubjectDirectory: which subjects exist, at which site, in which status."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, DateTime, MetaData, String, Table

from ecrf.domain.subject import Subject
from projections.runner import Projection, change_row, pending

metadata = MetaData()
subjects = Table(
    "subject_directory",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("stream", String(36), nullable=False, unique=True),
    Column("site", String(16), nullable=False, index=True),
    Column("screening_number", String(32), nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("dose_level", String(16)),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("position", BigInteger, nullable=False),
)


class SubjectDirectory(Projection):
    """One row per registered subject, for listing and filtering casebooks."""

    name = "subject_directory"
    metadata = metadata

    @singledispatchmethod
    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """Events this projection does not need are ignored."""

    @process.register
    def registered(self, domain_event: Subject.Registered, conn: Connection, position: int) -> None:
        """A new subject row, in screening."""
        stream = str(domain_event.originator_id)
        pending(conn).add(
            subjects,
            stream,
            {
                "subject_id": domain_event.subject_id,
                "stream": stream,
                "site": domain_event.site,
                "screening_number": domain_event.screening_number,
                "status": "screening",
                "dose_level": None,
                "registered_at": domain_event.timestamp,
                "position": position,
            },
        )

    @process.register
    def enrolled(self, domain_event: Subject.Enrolled, conn: Connection, position: int) -> None:
        """The subject is enrolled at a dose level."""
        change_row(
            conn,
            subjects.c.stream,
            str(domain_event.originator_id),
            status="enrolled",
            dose_level=domain_event.dose_level,
            position=position,
        )
