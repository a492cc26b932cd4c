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

from ecrf.ledger.export import FORMAT, PARTIAL_SCOPE
from ecrf.ledger.records import LEDGER_STREAM, Record, state_bytes, stream_id
from ecrf.ledger.seals import (
    EXPORT_KIND,
    PARTIAL_EXPORT_KIND,
    SEAL_KIND,
    Seal,
    key_id_of,
    load_public_key,
)
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
        self._ids: dict[object, str] = {}

    def records(self, after: int = 0) -> Iterator[Record]:
        """Every record after ``after``, in rowid order, read in pages."""
        while True:
            rows = self._conn.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {self._table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, BATCH),
            ).fetchall()
            for row in rows:
                yield _record(row, self._ids)
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
        return [_record(row, self._ids) for row in rows]

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
        self._ids: dict[object, str] = {}

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
                yield _record(row, self._ids)
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
        return [_record(row, self._ids) for row in rows]

    def max_position(self) -> int:
        """The last notification id."""
        row = self._conn.execute(f"SELECT MAX(notification_id) FROM {self._table}").fetchone()
        return int(row[0] or 0) if row else 0

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _record(row: Sequence[Any], ids: dict[object, str]) -> Record:
    raw = row[1]
    stream = ids.get(raw)
    if stream is None:
        # Parsing a UUID per row was a sixth of the verify time; a stream's events share
        # their id, so each distinct stored value is converted once (memory grows with
        # streams, as the verifier's own state does).
        stream = ids[raw] = stream_id(raw)
    return Record(int(row[0]), stream, int(row[2]), str(row[3]), state_bytes(row[4]))


@dataclass
class HeldSeals:
    """Seals kept outside the database, with what was wrong reading them."""

    seals: list[Seal] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Lines that are not seals (corruption, or a file that is not a seal copy)."""
    notes: list[str] = field(default_factory=list)
    """Harmless findings: a final line cut short by a crash while it was appended."""


def _held(held_seals: HeldSeals | Sequence[Seal]) -> HeldSeals:
    return held_seals if isinstance(held_seals, HeldSeals) else HeldSeals(list(held_seals))


def verify_log(
    source: LogSource,
    *,
    trusted_keys: dict[str, Ed25519PublicKey] | None,
    held_seals: HeldSeals | Sequence[Seal] = (),
    progress: Callable[[Record], None] | None = None,
) -> Report:
    """Verify a live log: the ledger stream first, then every record in order."""
    held = _held(held_seals)
    ledger = read_ledger_stream(source.stream_records(LEDGER_STREAM))
    return verify_records(
        source.records(),
        ledger,
        trusted_keys=trusted_keys,
        external_seals=held.seals,
        problems=held.problems,
        notes=held.notes,
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

    @property
    def partial(self) -> bool:
        """Whether the export is partial: its signed end record says so, else its header."""
        if self.end is not None:
            return self.end.kind == PARTIAL_EXPORT_KIND
        return self.header.get("scope") == PARTIAL_SCOPE


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
                    # The kind is part of the signed message: a partial end record
                    # passed off as a full one (or the reverse) fails its signature.
                    partial = line.get("scope") == PARTIAL_SCOPE
                    scan.end = Seal.from_dict(
                        line, kind=PARTIAL_EXPORT_KIND if partial else EXPORT_KIND
                    )
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
        elif scan.end is not None and (scan.header.get("scope") == PARTIAL_SCOPE) != scan.partial:
            said = "partial" if scan.header.get("scope") == PARTIAL_SCOPE else "full"
            scan.problems.append(
                Problem(
                    Kind.BAD_SEAL,
                    None,
                    None,
                    None,
                    f"the header calls the export {said}, but its signed end record is "
                    f"of a {'partial' if scan.partial else 'full'} export",
                )
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
    held_seals: HeldSeals | Sequence[Seal] = (),
    progress: Callable[[Record], None] | None = None,
) -> Report:
    """Verify an export file; without trusted keys, the keys in its header are used.

    A partial export (a monitor's) is verified stream by stream: see `Verifier`.
    """
    held = _held(held_seals)
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
        external_seals=[*held.seals, *scan.held_seals],
        end=scan.end,
        expect_end=True,
        problems=[*held.problems, *scan.problems],
        notes=held.notes,
        partial=scan.partial,
        progress=progress,
    )


def read_held_seals(path: Path) -> HeldSeals:
    """Seals kept outside the database: a mirror file (JSON lines) or a saved JSON array.

    The mirror is appended to one line at a time, so a crash can leave its last line cut
    short: such a line is skipped with a note (the seal is still in the log). Any other
    line that is not a seal is reported as a problem, never raised.
    A JSON array (a saved ``GET /ledger/seals``) that does not parse raises ``ValueError``.
    """
    text = path.read_bytes()
    stripped = text.lstrip()
    if stripped.startswith(b"["):
        values = orjson.loads(stripped)
        if not isinstance(values, list):
            raise ValueError("not a JSON array of seals")
        held = HeldSeals()
        for number, value in enumerate(values, start=1):
            _add_seal(held, value, f"{path.name} item {number}")
        return held
    return _read_mirror(path.name, text)


def _read_mirror(name: str, text: bytes) -> HeldSeals:
    held = HeldSeals()
    lines = text.split(b"\n")
    # Everything after the last newline is the line being appended when the writer
    # stopped; a complete file ends with a newline, so this is normally empty.
    complete, tail = lines[:-1], lines[-1]
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            held.problems.append(_bad_copy(f"{name} line {number} is not JSON ({error})"))
            continue
        _add_seal(held, value, f"{name} line {number}")
    if tail.strip():
        try:
            value = orjson.loads(tail)
        except orjson.JSONDecodeError:
            held.notes.append(
                f"{name}: the last line ({len(tail)} bytes, no newline) was cut short while "
                "it was written, as a crash mid-append leaves it; it was skipped"
            )
        else:
            _add_seal(held, value, f"{name} line {len(complete) + 1}")
    return held


def _add_seal(held: HeldSeals, value: Any, where: str) -> None:
    try:
        held.seals.append(Seal.from_dict(value, kind=SEAL_KIND))
    except ValueError as error:
        held.problems.append(_bad_copy(f"{where}: {error}"))


def _bad_copy(detail: str) -> Problem:
    return Problem(
        Kind.BAD_SEAL,
        None,
        LEDGER_STREAM,
        None,
        f"a seal copy kept outside the database is unreadable: {detail}",
    )
