"""Runs projections: follows the notification log, writing rows and tracking together.

Each projection's rows and its tracking position are written in one SQLAlchemy
transaction, so a crash between the two is impossible and a restart resumes exactly
where the last committed batch ended. SQLite has no LISTEN, so the runner polls; a read
can also call ``catch_up`` first to see its own writes.

A batch's new rows are collected in ``PendingRows`` and written with one statement per
table just before the tracking position moves (events of the same batch that change such a
row change it in memory first); statement construction per row, not the database, was
what a rebuild spent its time on. A rebuild writes and commits each batch in a second
thread while the next one is read and decoded. A projection's table definitions are
fingerprinted beside its tracking position: when a release changes them, the runner
notices at start and replays that projection from zero instead of failing on the old
tables.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import (
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache, lru_cache, singledispatchmethod
from operator import itemgetter
from typing import Any, ClassVar, NamedTuple

import orjson
from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Delete,
    Dialect,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Transaction,
    Update,
    bindparam,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.schema import CreateIndex, CreateTable

tracking_metadata = MetaData()
tracking = Table(
    "projection_tracking",
    tracking_metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False),
)
# Beside the tracking position (not in its table, which older releases created without it):
# the fingerprint of the table definitions the projection's rows were written with.
schemas = Table(
    "projection_schemas",
    tracking_metadata,
    Column("name", String(100), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
)

Handler = Callable[[Any, Connection, int], None]


class Projection(ABC):
    """A read model: tables plus a handler that applies one event to them."""

    name: ClassVar[str]
    metadata: ClassVar[MetaData]

    @abstractmethod
    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """Apply one event (at log ``position``) to the projection's tables."""

    def handler(self, event_type: type) -> Handler | None:
        """The bound handler for events of ``event_type``; None when they are ignored.

        For a ``process`` that is a singledispatchmethod, the registered handler is looked
        up once per type instead of dispatched per event. Its default (the ``object``
        handler) either ignores an event or passes it to the base class's ``process``;
        so the dispatchers of the class and its bases are asked in MRO order.
        """
        dispatchers = [
            klass.__dict__["process"].dispatcher
            for klass in type(self).__mro__
            if isinstance(klass.__dict__.get("process"), singledispatchmethod)
        ]
        if not dispatchers:
            return self.process
        for dispatcher in dispatchers:
            found = dispatcher.dispatch(event_type)
            if found is not dispatcher.registry[object]:
                bound: Handler = found.__get__(self, type(self))
                return bound
        return None


# Rows pending in a batch --------------------------------------------------------------

_PENDING = "ecrf_pending_rows"


class PendingRows:
    """Rows a batch inserts, by table and key, written together by ``flush_pending``.

    A handler adds a new row here instead of executing an INSERT; a later event of the same
    batch that changes or removes the row does so in memory (``get``/``discard``), and only
    rows not pending are changed with UPDATE/DELETE. The rows written are exactly those the
    per-event statements would have left.
    """

    def __init__(self) -> None:
        self._rows: dict[Table, dict[Hashable, dict[str, Any]]] = {}

    def add(self, table: Table, key: Hashable, row: dict[str, Any]) -> None:
        """A new row of ``table``; ``key`` is how later events find it (unique)."""
        rows = self._rows.setdefault(table, {})
        if key in rows:
            # What the INSERT would have said: the primary or unique key is taken.
            raise ValueError(f"{table.name}: a row for {key!r} is already pending")
        rows[key] = row

    def get(self, table: Table, key: Hashable) -> dict[str, Any] | None:
        """The pending row (to change in place), or None if it is not pending."""
        rows = self._rows.get(table)
        return rows.get(key) if rows else None

    def discard(self, table: Table, key: Hashable) -> bool:
        """Forget a pending row; False when it was not pending."""
        rows = self._rows.get(table)
        return rows is not None and rows.pop(key, None) is not None

    def statements(self, dialect: Dialect) -> list[_Statement]:
        """The INSERTs of every pending row, one per table; the rows are then forgotten."""
        statements = [
            _insert_statement(dialect, table, list(rows.values()))
            for table, rows in self._rows.items()
            if rows
        ]
        self._rows.clear()
        return statements


def pending(conn: Connection) -> PendingRows:
    """The rows pending on this connection until the batch is flushed."""
    found: PendingRows | None = conn.info.get(_PENDING)
    if found is None:
        found = conn.info[_PENDING] = PendingRows()
    return found


def flush_pending(conn: Connection) -> None:
    """Write the pending rows (before anything reads the tables or the batch commits)."""
    _execute(conn, _pending_inserts(conn))


def _pending_inserts(conn: Connection) -> list[_Statement]:
    """The INSERTs of the rows pending on this connection, which are then no longer pending."""
    found: PendingRows | None = conn.info.pop(_PENDING, None)
    return found.statements(conn.dialect) if found is not None else []


def _execute(conn: Connection, statements: Iterable[_Statement]) -> None:
    for statement in statements:
        conn.exec_driver_sql(statement.sql, statement.parameters)


class _BulkInsert(NamedTuple):
    """A table's INSERT compiled for one dialect, and how a row becomes its parameters."""

    sql: str
    positional: bool
    keys: tuple[str, ...]
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    """A row's values in ``keys`` order, as they are (``operator.itemgetter``)."""
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]
    """(index, bind conversion) of the columns whose values the driver cannot take as is."""


@lru_cache(maxsize=256)  # per table and engine's dialect; tests make many engines
def _bulk_insert(table: Table, dialect: Dialect) -> _BulkInsert:
    compiled = table.insert().compile(dialect=dialect)
    keys = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
    types = [table.c[key].type.dialect_impl(dialect) for key in keys]
    processors = [kind.bind_processor(dialect) for kind in types]
    return _BulkInsert(
        compiled.string,
        compiled.positional,
        keys,
        itemgetter(*keys) if len(keys) > 1 else lambda row: (row[keys[0]],),
        tuple((index, convert) for index, convert in enumerate(processors) if convert),
    )


class _Statement(NamedTuple):
    """SQL for the driver, with one set of parameters (a tuple) or many (a list)."""

    sql: str
    parameters: Any


def _insert_statement(
    dialect: Dialect, table: Table, rows: Collection[dict[str, Any]]
) -> _Statement:
    """The INSERT of ``rows``, with its parameters converted for the driver.

    ``conn.execute(table.insert(), rows)`` builds each row's parameters through SQLAlchemy's
    per-statement machinery, and a driver's executemany then binds them row by row in
    Python: most of what writing a rebuild's rows cost. Instead the rows travel as one JSON
    document that the database unpacks itself: SQLite's ``json_each`` (in one call, outside
    the GIL) and PostgreSQL's ``json_populate_recordset`` (in the server's own process).
    Both leave the values exactly as the bound parameters would have.
    """
    by_json = len(rows) > 1 and _travels_as_json(table)
    if dialect.name == "postgresql" and by_json:
        # Column values as PostgreSQL reads them from JSON: a JSON column's value nested
        # as it is, an instant as RFC 3339 text with its offset (orjson writes it so).
        document = _json_document(list(rows))
        if document is not None:
            return _Statement(_json_recordset_insert(table, dialect), (document,))
    insert = _bulk_insert(table, dialect)
    values = [insert.values(row) for row in rows]
    if dialect.name == "sqlite" and by_json:
        # Nested in the document instead, a JSON column's objects would save orjson a pass
        # but cost SQLite more, re-writing each as text: measured slower in a rebuild.
        document = _json_document(_converted(values, insert.converters))
        if document is not None:
            return _Statement(_json_each_insert(table, insert.keys), (document,))
    converted = [tuple(row) for row in _converted(values, insert.converters)]
    if insert.positional:
        return _Statement(insert.sql, converted)
    return _Statement(insert.sql, [dict(zip(insert.keys, row, strict=True)) for row in converted])


def _converted(
    values: list[tuple[Any, ...]], converters: Sequence[tuple[int, Callable[[Any], Any]]]
) -> list[Any]:
    """Rows of values with the given columns converted (the rows as they are if none)."""
    if not converters:
        return values
    rows = [list(row) for row in values]
    for index, convert in converters:
        for row in rows:
            row[index] = convert(row[index])
    return rows


def _json_document(rows: list[Any]) -> str | None:
    """The rows as one JSON text; None when a value is one orjson cannot write.

    Such rows are then bound one by one, as before: only the encoding is in doubt, so
    nothing but ``TypeError`` from orjson is caught.
    """
    try:
        return orjson.dumps(rows).decode()
    except TypeError:
        return None


# Column types whose values come back from a JSON document exactly as bound: text, whole
# numbers, booleans, JSON, and instants with their zone. Other types are bound one by one.
_JSON_SAFE_TYPES = (String, Integer, Boolean, JSON)


@cache
def _travels_as_json(table: Table) -> bool:
    """Whether every column of ``table`` has a type a JSON document carries exactly."""
    return all(
        isinstance(column.type, _JSON_SAFE_TYPES)
        or (isinstance(column.type, DateTime) and column.type.timezone)
        for column in table.columns
    )


@lru_cache(maxsize=256)
def _json_recordset_insert(table: Table, dialect: Dialect) -> str:
    """PostgreSQL: INSERT of the rows of a JSON array of objects keyed by column name."""
    name = dialect.identifier_preparer.format_table(table)
    columns = ", ".join(dialect.identifier_preparer.quote(c.name) for c in table.columns)
    return (
        f"INSERT INTO {name} ({columns}) SELECT {columns} "
        f"FROM json_populate_recordset(NULL::{name}, %s::json)"
    )


@cache
def _json_each_insert(table: Table, keys: tuple[str, ...]) -> str:
    """SQLite: INSERT of the rows of a JSON array of arrays (values in ``keys`` order).

    ``json_extract`` gives back each value as SQLite would have bound it: integers and reals
    as numbers, text (a JSON column's text included) unchanged, null as NULL.
    """
    columns = ", ".join(f'"{key}"' for key in keys)
    values = ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(keys)))
    return f'INSERT INTO "{table.name}" ({columns}) SELECT {values} FROM json_each(?)'


@cache
def updating(column: Column[Any]) -> Update:
    """UPDATE of the row whose ``column`` equals the parameter ``key_``.

    The SET clause is the other parameters: one statement object per column, so SQLAlchemy
    compiles it once and reuses it, instead of building a statement for every event.
    """
    table = column.table
    assert isinstance(table, Table)
    where: ColumnElement[bool] = column == bindparam("key_")
    return update(table).where(where)


@cache
def deleting(column: Column[Any]) -> Delete:
    """DELETE of the row whose ``column`` equals the parameter ``key_``."""
    table = column.table
    assert isinstance(table, Table)
    where: ColumnElement[bool] = column == bindparam("key_")
    return delete(table).where(where)


def change_row(conn: Connection, column: Column[Any], key: Any, **values: Any) -> None:
    """Set ``values`` on the row whose ``column`` is ``key``: pending or stored."""
    table = column.table
    assert isinstance(table, Table)
    row = pending(conn).get(table, key)
    if row is not None:
        row.update(values)
    else:
        conn.execute(updating(column), {"key_": key, **values})


def remove_row(conn: Connection, column: Column[Any], key: Any) -> None:
    """Remove the row whose ``column`` is ``key``: pending or stored."""
    table = column.table
    assert isinstance(table, Table)
    if not pending(conn).discard(table, key):
        conn.execute(deleting(column), {"key_": key})


# Table definitions --------------------------------------------------------------------


def fingerprint(metadata: MetaData, dialect: Dialect) -> str:
    """A digest of the DDL of a projection's tables and indexes on ``dialect``."""
    parts = []
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _columns_match(inspector: Inspector, existing: set[str], metadata: MetaData) -> bool:
    """Whether every table exists with exactly the columns defined (no fingerprint known)."""
    for table in metadata.sorted_tables:
        if table.name not in existing:
            return False
        stored = {c["name"] for c in inspector.get_columns(table.name)}
        if stored != {c.name for c in table.columns}:
            return False
    return True


# Engine and transactions --------------------------------------------------------------


def _json_text(value: Any) -> str:
    """JSON text of a JSON column's value (orjson: a rebuild encodes every entry's data).

    Stored form data is finite and within 64-bit integers (refused otherwise on input),
    which is what orjson encodes; anything else falls back to the standard encoder.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine whose SQLite transactions take the write lock up front."""
    engine = create_engine(url, pool_pre_ping=True, json_serializer=_json_text)
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
def writer(engine: Engine) -> Iterator[Connection]:
    """A connection whose transactions write (on SQLite: BEGIN IMMEDIATE)."""
    with engine.connect() as conn:
        conn.info[_WRITING] = True  # info belongs to the pooled connection: reset below
        try:
            yield conn
        finally:
            conn.info.pop(_WRITING, None)
            # Rows of a failed batch must not be written by the connection's next user.
            conn.info.pop(_PENDING, None)


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction (on SQLite: BEGIN IMMEDIATE, so two writers never interleave)."""
    with writer(engine) as conn, conn.begin():
        yield conn


# A rebuild's SQLite page cache (KiB; the default is 2 MiB) and how it checkpoints the WAL.
_REBUILD_CACHE_KIB = 65_536


@contextmanager
def _bulk_writes(conn: Connection) -> Iterator[None]:
    """Let one SQLite connection write a rebuild's many batches with less page traffic.

    A rebuild dirties the same index pages batch after batch: a 64 MiB page cache keeps
    them instead of reading them back, and checkpointing the WAL once at the end (instead
    of every 1000 pages) copies each page to the database file once. Pages the rebuild
    frees are not overwritten with zeros (``secure_delete = FAST``; builds such as
    Debian's default to zeroing): it drops tables of copies of what the log holds anyway,
    and refills those pages at once. All are settings of this connection only, restored
    afterwards; durability and isolation are unchanged.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    # On the driver's connection, outside any transaction (a checkpoint cannot run in one).
    sqlite: Any = conn.connection.dbapi_connection
    settings = {
        name: int(sqlite.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("cache_size", "wal_autocheckpoint", "secure_delete")
    }
    sqlite.execute(f"PRAGMA cache_size = -{_REBUILD_CACHE_KIB}")
    sqlite.execute("PRAGMA wal_autocheckpoint = 0")
    sqlite.execute("PRAGMA secure_delete = FAST")
    try:
        yield
    finally:
        if not conn.in_transaction():
            sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)")
        for name, value in settings.items():
            sqlite.execute(f"PRAGMA {name} = {value}")


class ProjectionRunner:
    """Keeps a set of projections up to date with an application's log."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        mapper: Mapper[Any],
        engine: Engine,
        projections: Sequence[Projection],
        batch_size: int = 500,
        retired: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Create missing tables and tracking rows; reset what changed; drop ``retired``.

        ``retired`` names projections of earlier releases with their tables: those tables
        and their tracking rows are dropped, so that an upgraded store keeps no stale copy.
        """
        self.recorder = recorder
        self.mapper = mapper
        self.engine = engine
        self.projections = {p.name: p for p in projections}
        self.batch_size = batch_size
        # Per set of projections applied together, the handlers of each event type.
        self._handlers: dict[tuple[str, ...], dict[type, tuple[tuple[str, Handler], ...]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.reset_at_start: list[str] = []
        """Projections whose stored tables no longer matched their definitions: replayed."""
        with writing(engine) as conn:
            if conn.dialect.name == "postgresql":
                # Several processes may start at once; CREATE TABLE IF NOT EXISTS can race.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('ecrf: read models'))"))
            tracking_metadata.create_all(conn)
            _drop_retired(conn, retired or {})
            known = {
                str(name): str(value)
                for name, value in conn.execute(select(schemas.c.name, schemas.c.fingerprint))
            }
            positions = {
                str(name): int(position)
                for name, position in conn.execute(select(tracking.c.name, tracking.c.position))
            }
            # One look at the catalogue for all projections: asking about each table in
            # turn made every start (and every test's fresh store) measurably slower.
            inspector = inspect(conn)
            existing = set(inspector.get_table_names())
            for projection in projections:
                # Every projection has a tracking row from the start, so that SELECT ... FOR
                # UPDATE always has a row to lock and two runners never apply one batch twice.
                _ensure_tracking(conn, projection.name)
                digest = fingerprint(projection.metadata, conn.dialect)
                stored = known.get(projection.name)
                if stored == digest:
                    if not existing.issuperset(projection.metadata.tables):
                        projection.metadata.create_all(conn)  # e.g. a table dropped by hand
                    continue
                if stored is None and _columns_match(inspector, existing, projection.metadata):
                    # Written before fingerprints were kept, with the columns defined now.
                    _set_fingerprint(conn, projection.name, digest)
                    continue
                fresh = stored is None and not positions.get(projection.name)
                # Changed by a new release (or never created): replay from zero, which the
                # next catch_up does, instead of failing on the old tables.
                absent = existing.isdisjoint(projection.metadata.tables)
                self._reset(conn, [projection], created=not absent)
                if not fresh:
                    self.reset_at_start.append(projection.name)

    def position(self, name: str) -> int:
        """The log position a projection reflects."""
        with self.engine.connect() as conn:
            value = conn.execute(select(tracking.c.position).where(tracking.c.name == name))
            return int(value.scalar() or 0)

    def catch_up(self, names: Sequence[str] | None = None, stop: int | None = None) -> None:
        """Process every new event (up to ``stop``) for the named projections.

        Positions are compared with the log head first, so an idle poll costs two reads;
        each batch of events is read and decoded once for all lagging projections and
        applied to them in one transaction. If that fails, each projection applies it in a
        transaction of its own, so that one failing projection holds back only itself.
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
                notifications = self._read(start, head)
                if not notifications:
                    return
                events = list(self._decoded(notifications))  # once for every lagging one
                chosen = [self.projections[name] for name in lagging]
                try:
                    with writing(self.engine) as conn:
                        self._apply(conn, chosen, events)
                except Exception:
                    if len(chosen) == 1:
                        raise
                    self._apply_each(chosen, events)

    def _apply_each(self, projections: Sequence[Projection], events: list[tuple[int, Any]]) -> None:
        """Apply ``events`` to each projection in its own transaction; raise the first error."""
        failures = []
        for projection in projections:
            try:
                with writing(self.engine) as conn:
                    self._apply(conn, [projection], events)
            except Exception as error:
                failures.append(error)
        if failures:
            raise failures[0]

    def _read(self, start: int, stop: int | None) -> Sequence[Notification]:
        """The next batch of notifications after ``start`` (up to ``stop``)."""
        return self.recorder.select_notifications(
            start=start, limit=self.batch_size, stop=stop, inclusive_of_start=False
        )

    def _decoded(self, notifications: Iterable[Notification]) -> Iterator[tuple[int, Any]]:
        """(position, domain event) of each notification, decoded as it is reached.

        Decoding an event just before its handlers run, rather than a whole batch first,
        keeps the working set small: a batch of thousands of decoded events held at once
        cost a rebuild a fifth more time than the same events decoded one by one.
        """
        decode = self.mapper.to_domain_event
        return ((n.id, decode(n)) for n in notifications)

    def _positions(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tracking.c.name, tracking.c.position))
            return {str(name): int(position) for name, position in rows}

    def _apply(
        self, conn: Connection, projections: Sequence[Projection], events: Iterable[tuple[int, Any]]
    ) -> None:
        """Apply the events after each projection's position, and move them (in ``conn``).

        The events are walked once for all ``projections`` (a rebuild applies every
        projection together), each event going to the handlers its type has among those
        projections still behind it; rows pending per table are written once at the end.
        """
        self._handle(conn, projections, events)
        flush_pending(conn)

    def _handle(
        self, conn: Connection, projections: Sequence[Projection], events: Iterable[tuple[int, Any]]
    ) -> None:
        """``_apply`` but for writing the pending rows, which the caller does."""
        behind: dict[str, int] = {}
        for projection in projections:
            query = select(tracking.c.position).where(tracking.c.name == projection.name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            # Re-read under the lock: another runner may have moved it since.
            behind[projection.name] = int(conn.execute(query).scalar() or 0)
        names = tuple(behind)
        handlers = self._handlers.setdefault(names, {})
        first = min(behind.values())
        together = len(set(behind.values())) == 1
        last = first
        for notification_id, domain_event in events:
            if notification_id <= first:
                continue
            last = notification_id
            kind = type(domain_event)
            try:
                chosen = handlers[kind]
            except KeyError:
                chosen = handlers[kind] = self._handlers_for(projections, kind)
            for name, handle in chosen:
                if together or notification_id > behind[name]:
                    handle(domain_event, conn, notification_id)
        for name, position in behind.items():
            if last > position:
                # The row exists (see __init__): a cached UPDATE, not an upsert per batch.
                conn.execute(updating(tracking.c.name), {"key_": name, "position": last})

    @staticmethod
    def _handlers_for(
        projections: Sequence[Projection], kind: type
    ) -> tuple[tuple[str, Handler], ...]:
        """The handlers of the projections that take events of type ``kind``."""
        found = ((p.name, p.handler(kind)) for p in projections)
        return tuple((name, handle) for name, handle in found if handle is not None)

    def _reset(
        self, conn: Connection, projections: Sequence[Projection], created: bool = True
    ) -> None:
        """Empty tables of the current definition, position 0 (in the caller's transaction).

        ``created=False`` says none of the tables exist yet: they are created without
        asking the catalogue about each one first.
        """
        for projection in projections:
            if created:
                projection.metadata.drop_all(conn)
            projection.metadata.create_all(conn, checkfirst=created)
            _set_position(conn, projection.name, 0)
            _set_fingerprint(conn, projection.name, fingerprint(projection.metadata, conn.dialect))

    def _emptied(self, conn: Connection, projections: Sequence[Projection]) -> None:
        """Empty the projections' tables and set them to position 0, in one transaction.

        One transaction: a crash part-way must not leave empty tables behind an old
        tracking position (the projection would then never catch up).
        """
        with conn.begin():
            self._reset(conn, projections)

    def rebuild(
        self, name: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Drop a projection's tables (all projections' without ``name``) and replay the log.

        One pass: each batch is read and decoded once, and applied to every projection
        rebuilt in one transaction, with their tracking positions.
        """
        chosen = list(self.projections.values()) if name is None else [self.projections[name]]
        with self._lock, fewer_collections(), _prompt_hand_offs():
            total = int(self.recorder.max_notification_id() or 0)
            position = 0
            with (
                writer(self.engine) as conn,
                _bulk_writes(conn),
                # Batch N's rows are inserted and committed in this thread while batch N+1
                # is read and decoded: both databases do that work outside the GIL.
                ThreadPoolExecutor(1, thread_name_prefix="rebuild-write") as committer,
            ):
                # The tables are emptied there too, while the first batch is read.
                written: Future[None] = committer.submit(self._emptied, conn, chosen)
                notifications = self._read(0, None)
                while notifications:
                    events = list(self._decoded(notifications))
                    # Handlers read and change the rows earlier batches wrote.
                    written.result()
                    if progress is not None:
                        progress(min(position, total), max(total, position))
                    transaction = conn.begin()
                    try:
                        self._handle(conn, chosen, events)
                        inserts = _pending_inserts(conn)
                    except BaseException:
                        transaction.rollback()
                        raise
                    written = committer.submit(_commit, conn, transaction, inserts)
                    full = len(notifications) == self.batch_size
                    position = notifications[-1].id
                    notifications = self._read(position, None) if full else []
                written.result()
            if progress is not None:
                progress(max(total, position), max(total, position))

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


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector rarely while a rebuild allocates batch after batch.

    A batch of decoded events and pending rows is thousands of container objects that live
    until the batch is written; with the default thresholds the collector walks them (and
    the whole heap, in its older generations) again and again, which cost a 200k-event
    rebuild over a second. Reference counting still frees each batch when it is done.
    """
    before = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


# How long a thread waiting for the GIL lets the running one go on (Python's default: 5 ms).
_REBUILD_SWITCH_INTERVAL = 0.001


@contextmanager
def _prompt_hand_offs() -> Iterator[None]:
    """Hand the GIL to a waiting thread sooner while a rebuild runs.

    The writer thread needs the GIL back after each statement and each commit, while the
    main thread decodes and handles the next batch: at the default interval every one of
    those waits could last 5 ms, which added up to a tenth of a 200k-event rebuild.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, _REBUILD_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _commit(conn: Connection, transaction: Transaction, inserts: Sequence[_Statement]) -> None:
    """Run a batch's INSERTs and commit its transaction; roll it back if either fails."""
    try:
        _execute(conn, inserts)
        transaction.commit()
    except BaseException:
        transaction.rollback()
        raise


def _upsert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def _drop_retired(conn: Connection, retired: Mapping[str, Sequence[str]]) -> None:
    for name, table_names in retired.items():
        for table_name in table_names:
            Table(table_name, MetaData()).drop(conn, checkfirst=True)
        conn.execute(delete(tracking).where(tracking.c.name == name))
        conn.execute(delete(schemas).where(schemas.c.name == name))


def _ensure_tracking(conn: Connection, name: str) -> None:
    conn.execute(
        _upsert(conn)(tracking)
        .values(name=name, position=0)
        .on_conflict_do_nothing(index_elements=[tracking.c.name])
    )


def _set_position(conn: Connection, name: str, position: int) -> None:
    statement = _upsert(conn)(tracking).values(name=name, position=position)
    statement = statement.on_conflict_do_update(
        index_elements=[tracking.c.name], set_={"position": position}
    )
    conn.execute(statement)


def _set_fingerprint(conn: Connection, name: str, digest: str) -> None:
    statement = _upsert(conn)(schemas).values(name=name, fingerprint=digest)
    statement = statement.on_conflict_do_update(
        index_elements=[schemas.c.name], set_={"fingerprint": digest}
    )
    conn.execute(statement)
