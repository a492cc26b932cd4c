"""Where raw records come from for offline verification: a database or an export file.

The database readers use plain ``sqlite3`` and ``psycopg`` with their own connections and
SQL, never the application's recorder, mapper or domain classes, so that verification
does not depend on the code it checks.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ecrf.ledger.export import FORMAT
from ecrf.ledger.records import LEDGER_STREAM, Record, state_bytes, stream_id
from ecrf.ledger.seals import EXPORT_KIND, SEAL_KIND, Seal, key_id_of, load_public_key
from ecrf.ledger.verify import Kind, Problem, Report, read_ledger_stream, verify_records

BATCH = 2000


class LogSource(Protocol):
    """A log that can be read in order, and one stream at a time."""

    def records(self, after: int = 0) -> Iterator[Record]:
        """Every record after ``after``, in log order."""
        ...

    def stream_records(self, stream: str) -> list[Record]:
        """Every record of one stream."""
        ...

    def max_position(self) -> int:
        """The last log position (0 when empty)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class SqliteLog:
    """The events table of an SQLite database (``stored_events``, rowid as position)."""

    def __init__(self, path: str | Path, table: str = "stored_events") -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"no SQLite database at {path}")
        # Read-only: verification must never be able to change what it checks.
        self._conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        self._table = '"' + table.replace('"', '""') + '"'

    def records(self, after: int = 0) -> Iterator[Record]:
        """Every record after ``after``, in rowid order, read in pages."""
        while True:
            rows = self._conn.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {self._table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, BATCH),
            ).fetchall()
            for row in rows:
                yield _record(row)
            if len(rows) < BATCH:
                return
            after = int(rows[-1][0])

    def stream_records(self, stream: str) -> list[Record]:
        """Every record of one stream (stored as 32 hex digits)."""
        rows = self._conn.execute(
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {self._table} WHERE originator_id = ? ORDER BY rowid",
            (UUID(stream).hex,),
        ).fetchall()
        return [_record(row) for row in rows]

    def max_position(self) -> int:
        """The last rowid."""
        row = self._conn.execute(f"SELECT MAX(rowid) FROM {self._table}").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


class PostgresLog:
    """The events table of a PostgreSQL schema (``notification_id`` as position)."""

    def __init__(self, conninfo: str, schema: str = "public", table: str = "ecrf_events") -> None:
        import psycopg

        self._conn = psycopg.connect(conninfo, autocommit=True)
        self._table = f'"{schema.replace(chr(34), "")}"."{table.replace(chr(34), "")}"'

    def records(self, after: int = 0) -> Iterator[Record]:
        """Every record after ``after``, in notification id order, read in pages."""
        while True:
            rows = self._conn.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                f"FROM {self._table} WHERE notification_id > %s "
                "ORDER BY notification_id LIMIT %s",
                (after, BATCH),
            ).fetchall()
            for row in rows:
                yield _record(row)
            if len(rows) < BATCH:
                return
            after = int(rows[-1][0])

    def stream_records(self, stream: str) -> list[Record]:
        """Every record of one stream."""
        rows = self._conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {self._table} WHERE originator_id = %s ORDER BY notification_id",
            (UUID(stream),),
        ).fetchall()
        return [_record(row) for row in rows]

    def max_position(self) -> int:
        """The last notification id."""
        row = self._conn.execute(f"SELECT MAX(notification_id) FROM {self._table}").fetchone()
        return int(row[0] or 0) if row else 0

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _record(row: Sequence[Any]) -> Record:
    return Record(
        position=int(row[0]),
        stream=stream_id(row[1]),
        version=int(row[2]),
        topic=str(row[3]),
        state=state_bytes(row[4]),
    )


def verify_log(
    source: LogSource,
    *,
    trusted_keys: dict[str, Ed25519PublicKey] | None,
    held_seals: Sequence[Seal] = (),
    progress: Callable[[Record], None] | None = None,
) -> Report:
    """Verify a live log: the ledger stream first, then every record in order."""
    ledger = read_ledger_stream(source.stream_records(LEDGER_STREAM))
    return verify_records(
        source.records(),
        ledger,
        trusted_keys=trusted_keys,
        external_seals=held_seals,
        progress=progress,
    )


@dataclass
class ExportScan:
    """What a first pass over an export file finds."""

    header: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    held_seals: list[Seal] = field(default_factory=list)
    end: Seal | None = None
    ledger_records: list[Record] = field(default_factory=list)
    events: int = 0
    problems: list[Problem] = field(default_factory=list)


class ExportFile:
    """An export (``GET /exports/ledger.jsonl``), read twice: metadata, then events."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> Iterator[tuple[int, Any]]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    yield number, orjson.loads(raw)
                except orjson.JSONDecodeError:
                    yield number, None

    def scan(self) -> ExportScan:
        """Read the header, held seals, end record and the ledger stream's events."""
        scan = ExportScan()
        for number, line in self._lines():
            kind = line.get("kind") if isinstance(line, dict) else None
            try:
                if line is None:
                    raise ValueError("not JSON")
                if kind == "header":
                    self._header(scan, line, number)
                elif kind == "seal":
                    scan.held_seals.append(Seal.from_dict(line, kind=SEAL_KIND))
                elif kind == "end":
                    if scan.end is not None:
                        raise ValueError("a second end record")
                    scan.end = Seal.from_dict(line, kind=EXPORT_KIND)
                elif kind == "event":
                    record = _event(line)
                    scan.events += 1
                    if record.stream == LEDGER_STREAM:
                        scan.ledger_records.append(record)
                else:
                    raise ValueError("not a ledger export line")
            except (KeyError, TypeError, ValueError) as error:
                scan.problems.append(
                    Problem(Kind.UNREADABLE, None, None, None, f"line {number}: {error}")
                )
        if scan.header.get("format") != FORMAT:
            scan.problems.append(
                Problem(Kind.UNREADABLE, None, None, None, f"not an {FORMAT} file (no header)")
            )
        return scan

    @staticmethod
    def _header(scan: ExportScan, line: dict[str, Any], number: int) -> None:
        scan.header = line
        for entry in line.get("keys", []):
            key = load_public_key(str(entry["public_key_pem"]).encode("ascii"))
            if key_id_of(key) != entry["key_id"]:
                raise ValueError(f"key id {entry['key_id']} does not match its key")
            scan.keys[entry["key_id"]] = key

    def records(self) -> Iterator[Record]:
        """The event lines, in file order (unreadable lines were reported by `scan`)."""
        for _, line in self._lines():
            if isinstance(line, dict) and line.get("kind") == "event":
                try:
                    yield _event(line)
                except (KeyError, TypeError, ValueError):
                    continue


def _event(line: dict[str, Any]) -> Record:
    if "state_b64" in line:
        state = base64.b64decode(line["state_b64"], validate=True)
    else:
        state = str(line["state"]).encode("utf-8")
    position, version = line["position"], line["version"]
    if type(position) is not int or type(version) is not int:
        raise TypeError("position and version must be integers")
    return Record(position, str(line["stream"]), version, str(line["topic"]), state)


def verify_export(
    path: Path,
    *,
    trusted_keys: dict[str, Ed25519PublicKey] | None,
    held_seals: Sequence[Seal] = (),
    progress: Callable[[Record], None] | None = None,
) -> Report:
    """Verify an export file; without trusted keys, the keys in its header are used."""
    export = ExportFile(path)
    scan = export.scan()
    ledger = read_ledger_stream(scan.ledger_records)
    if trusted_keys is None:
        # Keys named by the file itself: the check is then only as good as the file.
        ledger.keys = {**scan.keys, **ledger.keys}
    return verify_records(
        export.records(),
        ledger,
        trusted_keys=trusted_keys,
        external_seals=[*held_seals, *scan.held_seals],
        end=scan.end,
        expect_end=True,
        problems=scan.problems,
        progress=progress,
    )


def read_held_seals(path: Path) -> list[Seal]:
    """Seals kept outside the database: a mirror file (JSON lines) or a saved JSON array."""
    text = path.read_bytes()
    stripped = text.lstrip()
    if stripped.startswith(b"["):
        values = orjson.loads(stripped)
    else:
        values = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    return [Seal.from_dict(value, kind=SEAL_KIND) for value in values]
