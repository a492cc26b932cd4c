"""QueryList: every query with its state, for the monitors' and sites' work lists."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    select,
)

from ecrf.domain.subject import QueryState, Subject
from projections.runner import Projection, change_row, pending

metadata = MetaData()
queries = Table(
    "query_list",
    metadata,
    Column("query_id", String(100), primary_key=True),
    Column("subject_id", String(64), nullable=False, index=True),
    Column("stream", String(36), nullable=False, index=True),
    Column("site", String(16), nullable=False, index=True),
    Column("entry_id", String(64), nullable=False),
    Column("form", String(64), nullable=False, index=True),
    Column("path", String(500), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("system", Boolean, nullable=False),
    Column("opened_by", String(64), nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("last_text", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("position", BigInteger, nullable=False),
)
# The site of a casebook, remembered from its registration (query events do not repeat it).
casebooks = Table(
    "query_list_casebooks",
    metadata,
    Column("stream", String(36), primary_key=True),
    Column("subject_id", String(64), nullable=False),
    Column("site", String(16), nullable=False),
)
# One statement object, compiled once: the casebook of a query's stream.
_casebook = select(casebooks.c.subject_id, casebooks.c.site).where(
    casebooks.c.stream == bindparam("stream")
)


class QueryList(Projection):
    """One row per query: where it is, what it is about, and its state now."""

    name = "query_list"
    metadata = metadata

    @singledispatchmethod
    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """Events this projection does not need are ignored."""

    @process.register
    def registered(self, domain_event: Subject.Registered, conn: Connection, position: int) -> None:
        """Remember the casebook's subject id and site."""
        stream = str(domain_event.originator_id)
        pending(conn).add(
            casebooks,
            stream,
            {"stream": stream, "subject_id": domain_event.subject_id, "site": domain_event.site},
        )

    @process.register
    def query_opened(
        self, domain_event: Subject.QueryOpened, conn: Connection, position: int
    ) -> None:
        """A new open query."""
        stream = str(domain_event.originator_id)
        casebook = pending(conn).get(casebooks, stream)
        if casebook is None:
            found = conn.execute(_casebook, {"stream": stream}).one()
            casebook = {"subject_id": found.subject_id, "site": found.site}
        pending(conn).add(
            queries,
            domain_event.query_id,
            {
                "query_id": domain_event.query_id,
                "subject_id": casebook["subject_id"],
                "stream": stream,
                "site": casebook["site"],
                "entry_id": domain_event.entry_id,
                "form": domain_event.form,
                "path": domain_event.path,
                "state": QueryState.OPEN,
                "system": domain_event.audit.get("role") == "system",
                "opened_by": domain_event.audit["user"],
                "opened_at": domain_event.timestamp,
                "last_text": domain_event.text,
                "updated_at": domain_event.timestamp,
                "position": position,
            },
        )

    @process.register
    def query_answered(
        self, domain_event: Subject.QueryAnswered, conn: Connection, position: int
    ) -> None:
        """The site answered."""
        self._state(conn, domain_event, position, QueryState.ANSWERED)

    @process.register
    def query_closed(
        self, domain_event: Subject.QueryClosed, conn: Connection, position: int
    ) -> None:
        """Closed by a monitor or data manager."""
        self._state(conn, domain_event, position, QueryState.CLOSED)

    @process.register
    def query_reopened(
        self, domain_event: Subject.QueryReopened, conn: Connection, position: int
    ) -> None:
        """Opened again."""
        self._state(conn, domain_event, position, QueryState.OPEN)

    @staticmethod
    def _state(conn: Connection, domain_event: Any, position: int, state: str) -> None:
        change_row(
            conn,
            queries.c.query_id,
            domain_event.query_id,
            state=state,
            last_text=domain_event.text,
            updated_at=domain_event.timestamp,
            position=position,
        )
