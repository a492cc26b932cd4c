"""Storage wiring: database URLs, the hash-chaining event store, and immutability guards.

The eventsourcing library owns the events table; this module adds what the library does
not have: every event is chained to its predecessor in the same stream before it is
inserted (see `ecrf.ledger.chain`), and the table refuses UPDATE and DELETE.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    EventStore,
    JSONTranscoder,
    Mapper,
    Notification,
    Recording,
    StoredEvent,
)

from ecrf.ledger.chain import GENESIS, seal_state, stored_hash

DEFAULT_SQLITE_PATH = "ecrf.sqlite"


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed ``ECRF_DATABASE_URL``: which engine, and how to reach it."""

    engine: str  # "sqlite" or "postgres"
    sqlite_path: str = ""
    host: str = ""
    port: str = ""
    user: str = ""
    password: str = ""
    dbname: str = ""
    schema: str = ""
    connect_timeout: int = 2

    @classmethod
    def parse(cls, url: str | None) -> DatabaseUrl:
        """Parse a URL; ``None`` or empty selects the embedded SQLite default."""
        if not url:
            return cls(engine="sqlite", sqlite_path=str(Path(DEFAULT_SQLITE_PATH).resolve()))
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0]
        if scheme == "sqlite":
            # sqlite:///relative.db and sqlite:////absolute.db, as in SQLAlchemy.
            path = unquote(url.split("://", 1)[1])
            path = path[1:] if path.startswith("/") else path
            if not path:
                raise ValueError("sqlite URL needs a file path, e.g. sqlite:///ecrf.sqlite")
            if ":memory:" in path:
                raise ValueError("in-memory SQLite is not supported: the log must persist")
            return cls(engine="sqlite", sqlite_path=str(Path(path).resolve()))
        if scheme in ("postgres", "postgresql"):
            query = parse_qs(parts.query)
            dbname = parts.path.lstrip("/")
            if not dbname:
                raise ValueError("postgresql URL needs a database name")
            return cls(
                engine="postgres",
                host=parts.hostname or "127.0.0.1",
                port=str(parts.port or 5432),
                user=unquote(parts.username or "postgres"),
                password=unquote(parts.password or ""),
                dbname=dbname,
                schema=query.get("schema", [""])[0],
                connect_timeout=int(query.get("connect_timeout", ["2"])[0]),
            )
        raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")

    def eventsourcing_env(self) -> dict[str, str]:
        """The environment the eventsourcing library is configured with."""
        if self.engine == "sqlite":
            Path(self.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": self.sqlite_path,
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": self.port,
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            # Also the pool's wait for a free connection; the library retries each
            # call ten times, so this bounds how long a request waits in an outage.
            "POSTGRES_CONNECT_TIMEOUT": str(self.connect_timeout),
            "POSTGRES_POOL_SIZE": "10",
            "POSTGRES_MAX_OVERFLOW": "10",
            "POSTGRES_PRE_PING": "y",
            # A log follower was seen to miss events under concurrent writers with
            # the library's database functions enabled (DESIGN.md).
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        }
        if self.schema:
            env["POSTGRES_SCHEMA"] = self.schema
        return env

    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy URL of the read models' database.

        On PostgreSQL that is the same database. On SQLite it is a file beside the event
        store: SQLite has one writer at a time, and a projection batch holding the write
        lock would otherwise stall every command until it commits. Each projection's rows
        and tracking still commit in one transaction, in that file.
        """
        if self.engine == "sqlite":
            path = Path(self.sqlite_path)
            return f"sqlite:///{path.with_name(path.stem + '.views' + path.suffix)}"
        auth = quote(self.user, safe="") + (
            f":{quote(self.password, safe='')}" if self.password else ""
        )
        url = f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{self.dbname}"
        if self.schema:
            # Read models live in the same schema as the events table.
            url += f"?options=-csearch_path%3D{quote(self.schema, safe='')}"
        return url


def database_url_from_env() -> DatabaseUrl:
    """Read ``ECRF_DATABASE_URL``."""
    return DatabaseUrl.parse(os.environ.get("ECRF_DATABASE_URL"))


class StoredStateTranscoder(JSONTranscoder):
    """The library's JSON transcoder, reading stored states with orjson where it may.

    Decoding events is most of what reading the log costs (a rebuild, a casebook load, an
    ``as_of`` replay), and the library's decoder calls a Python hook for every JSON object.
    Every state this system stores is orjson's own canonical output (``seal_state``), which
    orjson reads back exactly; values the library transcodes (an event's ``timestamp``)
    are then converted at the top level, where events keep them. Whenever the result could
    differ from the library's, the library's decoder reads the state instead: a transcoded
    value anywhere else, an escape sequence (which could spell a key), or text orjson
    refuses. (orjson reads an integer beyond 64 bits as a float, but no stored state holds
    one: ``ChainedEventStore`` stores the library's text as orjson read it.) Writing is the
    library's, unchanged.
    """

    def decode(self, data: bytes) -> Any:
        """The value the library's decoder returns for ``data``."""
        if b"\\u" in data:
            return super().decode(data)
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return super().decode(data)
        # In JSON without escapes, every transcoded value has a "_type_" key (the text
        # can also hold the mark for other reasons, which then sends it to the library).
        marks = data.count(b'"_type_"')
        if not marks:
            return value
        if type(value) is not dict:
            return super().decode(data)
        for key, item in value.items():
            if type(item) is dict and len(item) == 2 and "_data_" in item:
                name = item.get("_type_")
                transcoding = self.names.get(name) if type(name) is str else None
                if transcoding is None:
                    return super().decode(data)  # the library's error, or its own result
                value[key] = transcoding.decode(item["_data_"])
                marks -= 1
        return value if marks == 0 else super().decode(data)


class ChainedEventStore(EventStore[UUID]):
    """An event store that hash-chains each new event onto its stream before insert.

    The hash of each stream's last committed event is remembered (a bounded LRU), so a
    save does not first read its predecessor back. A remembered head is used only when
    it is exactly the version before the new event; if another writer got there first,
    the insert fails on the version conflict as it would anyway, and the retry reads.
    """

    HEADS_REMEMBERED = 10_000

    def __init__(self, mapper: Mapper[UUID], recorder: AggregateRecorder) -> None:
        super().__init__(mapper=mapper, recorder=recorder)
        self._heads: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._heads_lock = threading.Lock()

    def put(
        self, domain_events: Sequence[DomainEventProtocol[UUID]], **kwargs: Any
    ) -> list[Recording[UUID]]:
        """Chain and store events; returns recordings with their log positions."""
        stored = [self.mapper.to_stored_event(e) for e in domain_events]
        chained, heads = self._chain(stored)
        notification_ids = self.recorder.insert_events(chained, **kwargs) or []
        self._remember(heads)  # only once committed
        return [
            Recording(
                d,
                Notification(
                    originator_id=s.originator_id,
                    originator_version=s.originator_version,
                    topic=s.topic,
                    state=s.state,
                    id=n,
                ),
            )
            for d, s, n in zip(domain_events, chained, notification_ids, strict=True)
        ]

    def _chain(
        self, stored: list[StoredEvent]
    ) -> tuple[list[StoredEvent], dict[str, tuple[int, str]]]:
        heads: dict[str, tuple[int, str]] = {}
        chained = []
        for event in stored:
            stream = str(event.originator_id)
            version = event.originator_version
            known = heads.get(stream) or self._remembered(stream)
            prev = known[1] if known and known[0] == version - 1 else self._head_before(event)
            state = seal_state(stream, version, event.topic, orjson.loads(event.state), prev)
            heads[stream] = (version, stored_hash(state))
            chained.append(
                StoredEvent(
                    originator_id=event.originator_id,
                    originator_version=version,
                    topic=event.topic,
                    state=state,
                )
            )
        return chained, heads

    def _remembered(self, stream: str) -> tuple[int, str] | None:
        with self._heads_lock:
            return self._heads.get(stream)

    def _remember(self, heads: dict[str, tuple[int, str]]) -> None:
        with self._heads_lock:
            for stream, head in heads.items():
                self._heads[stream] = head
                self._heads.move_to_end(stream)
            while len(self._heads) > self.HEADS_REMEMBERED:
                self._heads.popitem(last=False)

    def _head_before(self, event: StoredEvent) -> str:
        if event.originator_version <= 1:
            return GENESIS
        previous = self.recorder.select_events(
            event.originator_id, lte=event.originator_version - 1, desc=True, limit=1
        )
        if not previous:
            # The save will fail on the version conflict anyway; chain to genesis so
            # the error raised is the library's IntegrityError, not ours.
            return GENESIS
        return stored_hash(previous[0].state)


class EventTable:
    """Raw SQL access to the events table, for guards and log positions."""

    def __init__(self, recorder: ApplicationRecorder, engine: str) -> None:
        self.recorder = recorder
        self.engine = engine
        self.table: str = getattr(recorder, "events_table_name", "stored_events")
        datastore = getattr(recorder, "datastore", None)
        self.schema: str = getattr(datastore, "schema", "") if engine == "postgres" else ""

    @property
    def qualified_name(self) -> str:
        """Schema-qualified, quoted table name."""
        if self.engine == "postgres":
            return f'"{self.schema}"."{self.table}"'
        return f'"{self.table}"'

    @property
    def position_column(self) -> str:
        """The column that holds the notification id (log position)."""
        return "notification_id" if self.engine == "postgres" else "rowid"

    def execute(
        self, sql: str, params: Sequence[Any] = (), *, commit: bool = False, fetch: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run one statement on the recorder's own connection pool; rows if ``fetch``."""
        datastore = self.recorder.datastore  # type: ignore[attr-defined]
        if self.engine == "postgres":
            sql = sql.replace("?", "%s")
        with datastore.transaction(commit=commit) as cursor:
            if params:
                cursor.execute(sql, list(params))
            else:  # psycopg reads any % as a placeholder once parameters are given
                cursor.execute(sql)
            if not fetch:
                return []
            return [
                tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cursor.fetchall()
            ]

    def install_immutability_guards(self) -> None:
        """Make the database itself refuse UPDATE and DELETE of stored events."""
        if self.engine == "sqlite":
            for op in ("UPDATE", "DELETE"):
                self.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {self.table}_refuse_{op.lower()} "
                    f"BEFORE {op} ON {self.qualified_name} BEGIN "
                    f"SELECT RAISE(ABORT, 'ecrf: stored events are immutable ({op} refused)'); "
                    "END",
                    commit=True,
                )
            return
        function = f'"{self.schema}"."ecrf_refuse_event_change"'
        statements = [
            # Processes starting together would otherwise race on the same DDL.
            "SELECT pg_advisory_xact_lock(hashtext('ecrf: immutability guards'))",
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'ecrf: stored events are immutable (% refused)', TG_OP; "
            "END $$",
            f'CREATE OR REPLACE TRIGGER "{self.table}_refuse_change" BEFORE UPDATE OR DELETE '
            f"ON {self.qualified_name} FOR EACH ROW EXECUTE FUNCTION {function}()",
            f'CREATE OR REPLACE TRIGGER "{self.table}_refuse_truncate" BEFORE TRUNCATE '
            f"ON {self.qualified_name} FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        ]
        datastore = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=True) as cursor:
            for statement in statements:
                cursor.execute(statement)

    def stream_positions(self, stream_id: UUID) -> dict[int, int]:
        """Map each version of one stream to its log position."""
        key: Any = stream_id.hex if self.engine == "sqlite" else stream_id
        rows = self.execute(
            f"SELECT originator_version, {self.position_column} FROM {self.qualified_name} "
            "WHERE originator_id = ?",
            [key],
            fetch=True,
        )
        return {int(row[0]): int(row[1]) for row in rows}
