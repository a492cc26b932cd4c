"""Runs projections: follows the notification log, writing rows and tracking together.

Each projection's rows and its tracking position are written in one SQLAlchemy
transaction, so a crash between the two is impossible and a restart resumes exactly
where the last committed batch ended. SQLite has no LISTEN, so the runner polls; a read
can also call ``catch_up`` first to see its own writes.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

tracking_metadata = MetaData()
tracking = Table(
    "projection_tracking",
    tracking_metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False),
)


class Projection(ABC):
    """A read model: tables plus a handler that applies one event to them."""

    name: ClassVar[str]
    metadata: ClassVar[MetaData]

    @abstractmethod
    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """Apply one event (at log ``position``) to the projection's tables."""


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine whose SQLite transactions take the write lock up front."""
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        # pysqlite defers BEGIN until the first write; two runners could then both read
        # the same tracking position. BEGIN IMMEDIATE serialises them (SQLAlchemy's
        # documented recipe for SQLite transaction control).
        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA busy_timeout = 30000")

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _: Any) -> None:
            # Readers never wait for the writer in WAL mode.
            dbapi_connection.execute("PRAGMA journal_mode = WAL")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Only writers take the lock up front; reads must not queue behind each other.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITING) else "BEGIN")

    return engine


_WRITING = "ecrf_writing"


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction (on SQLite: BEGIN IMMEDIATE, so two writers never interleave)."""
    with engine.connect() as conn:
        conn.info[_WRITING] = True  # info belongs to the pooled connection: reset below
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info.pop(_WRITING, None)


class ProjectionRunner:
    """Keeps a set of projections up to date with an application's log."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        mapper: Mapper[Any],
        engine: Engine,
        projections: Sequence[Projection],
        batch_size: int = 500,
    ) -> None:
        self.recorder = recorder
        self.mapper = mapper
        self.engine = engine
        self.projections = {p.name: p for p in projections}
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        with writing(engine) as conn:
            if conn.dialect.name == "postgresql":
                # Several processes may start at once; CREATE TABLE IF NOT EXISTS can race.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('ecrf: read models'))"))
            tracking_metadata.create_all(conn)
            for projection in projections:
                projection.metadata.create_all(conn)
            # Every projection has a tracking row from the start, so that SELECT ... FOR
            # UPDATE always has a row to lock and two runners never apply one batch twice.
            for projection in projections:
                _ensure_tracking(conn, projection.name)

    def position(self, name: str) -> int:
        """The log position a projection reflects."""
        with self.engine.connect() as conn:
            value = conn.execute(select(tracking.c.position).where(tracking.c.name == name))
            return int(value.scalar() or 0)

    def catch_up(self, names: Sequence[str] | None = None, stop: int | None = None) -> None:
        """Process every new event (up to ``stop``) for the named projections.

        Positions are compared with the log head first, so an idle poll costs two reads;
        each batch of events is read and decoded once for all lagging projections.
        """
        with self._lock:
            wanted = list(names or self.projections)
            head = int(self.recorder.max_notification_id() or 0)
            if stop is not None:
                head = min(head, stop)
            while True:
                positions = self._positions()
                lagging = [n for n in wanted if positions.get(n, 0) < head]
                if not lagging:
                    return
                start = min(positions.get(n, 0) for n in lagging)
                notifications = self.recorder.select_notifications(
                    start=start, limit=self.batch_size, stop=head, inclusive_of_start=False
                )
                if not notifications:
                    return
                events = [(n.id, self.mapper.to_domain_event(n)) for n in notifications]
                for name in lagging:
                    self._apply_batch(self.projections[name], events)

    def _positions(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tracking.c.name, tracking.c.position))
            return {str(name): int(position) for name, position in rows}

    def _apply_batch(self, projection: Projection, events: Sequence[tuple[int, Any]]) -> None:
        """Apply the events after the projection's position, and move it, in one transaction."""
        with writing(self.engine) as conn:
            query = select(tracking.c.position).where(tracking.c.name == projection.name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            # Re-read under the lock: another runner may have moved it since.
            position = int(conn.execute(query).scalar() or 0)
            applied = [(n, e) for n, e in events if n > position]
            if not applied:
                return
            for notification_id, domain_event in applied:
                projection.process(domain_event, conn, notification_id)
            _set_position(conn, projection.name, applied[-1][0])

    def _process_batch(self, projection: Projection, stop: int | None) -> bool:
        """Process one batch for one projection; True if there may be more."""
        with writing(self.engine) as conn:
            query = select(tracking.c.position).where(tracking.c.name == projection.name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            position = int(conn.execute(query).scalar() or 0)
            if stop is not None and position >= stop:
                return False
            notifications = self.recorder.select_notifications(
                start=position, limit=self.batch_size, stop=stop, inclusive_of_start=False
            )
            if not notifications:
                return False
            for notification in notifications:
                self._apply(projection, conn, notification)
            _set_position(conn, projection.name, notifications[-1].id)
            return len(notifications) == self.batch_size

    def _apply(self, projection: Projection, conn: Connection, notification: Notification) -> None:
        domain_event = self.mapper.to_domain_event(notification)
        projection.process(domain_event, conn, notification.id)

    def rebuild(self, name: str, progress: Callable[[int, int], None] | None = None) -> None:
        """Drop a projection's tables and replay the whole log into them."""
        projection = self.projections[name]
        with self._lock:
            # One transaction: a crash part-way must not leave empty tables behind an old
            # tracking position (the projection would then never catch up).
            with writing(self.engine) as conn:
                projection.metadata.drop_all(conn)
                projection.metadata.create_all(conn)
                _set_position(conn, name, 0)
            total = int(self.recorder.max_notification_id() or 0)
            while self._process_batch(projection, None):
                if progress is not None:
                    progress(self.position(name), total)
            if progress is not None:
                progress(total, total)

    def start(self, interval: float = 0.2) -> None:
        """Follow the log in a background thread until ``stop``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._follow, args=(interval,), name="projections", daemon=True
        )
        self._thread.start()

    def _follow(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.catch_up()
                self.last_error = None
            except Exception as error:  # keep following; the error is shown in status
                self.last_error = f"{type(error).__name__}: {error}"

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def status(self) -> list[dict[str, Any]]:
        """Each projection's position and how far it lags the log."""
        head = int(self.recorder.max_notification_id() or 0)
        return [
            {"name": name, "position": (p := self.position(name)), "lag": max(head - p, 0)}
            for name in self.projections
        ]


def _ensure_tracking(conn: Connection, name: str) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        insert(tracking)
        .values(name=name, position=0)
        .on_conflict_do_nothing(index_elements=[tracking.c.name])
    )


def _set_position(conn: Connection, name: str, position: int) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(tracking).values(name=name, position=position)
    statement = statement.on_conflict_do_update(
        index_elements=[tracking.c.name], set_={"position": position}
    )
    conn.execute(statement)
