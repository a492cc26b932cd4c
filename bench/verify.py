"""Verification rate of `ecrf verify --database` next to a raw read of the same table.

    .venv/bin/python -m bench.verify [--events 200000] [--database postgresql://...]
                                     [--rounds 3] [--keep DIR]

Builds a store through the application's commands (casebooks with demographics, adverse
events and corrections; the ledger sealed every 1000 events), then, in the same run and
alternating so that a busy machine weighs on both alike, times:

(a) the baseline the issue names: one plain ``SELECT`` of the stored events table and
    ``json.loads`` of every state (``sqlite3`` on SQLite; ``psycopg`` with a server-side
    cursor on PostgreSQL), plus the same with ``orjson.loads`` for reference;
(b) `ecrf verify --database`: the command's own code (`ecrf.cli_ledger.open_log` and
    `verify_source`, with the data directory's key and seal copies, as the command
    defaults), in this process; and once as the installed command in a fresh process
    (interpreter start and imports included).

Rates are events per second; the ratio is verify / baseline (goal: at least 0.5). It
prints and writes a markdown table to bench/results/verify-<engine>.md. ``--events`` is
for smoke runs; the issue's measurement is the 200,000-event default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from ecrf.application import EcrfApplication
from ecrf.cli_ledger import POSTGRES_EVENTS_TABLE, open_log, verify_source
from ecrf.commands import CorrectEntry, RecordEntry, RegisterSubject
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.ledger.readers import read_held_seals
from ecrf.ledger.records import mirror_path
from ecrf.ledger.seals import SealKey
from ecrf.ledger.verify import Report
from ecrf.persistence import DatabaseUrl

CRC = Actor("crc", "Bench site staff", ("site_staff",), ("CHH",))
EVENTS_PER_SUBJECT = 50
"""Registration, demographics, then adverse events and demographics corrections in turn."""
SEAL_EVERY = 1000


def build(settings: Settings, events: int) -> tuple[int, int]:
    """Fill the store to at least ``events`` events through the application's commands;
    return the events stored and the casebooks added."""
    application = EcrfApplication(settings)
    try:
        demographics = application.forms.get("demographics").schema["examples"][0]
        adverse_event = application.forms.get("adverse_event").schema["examples"][0]
        number = 0
        run = uuid.uuid4().hex[:6]  # screening numbers unique across top-ups of a kept store
        position = application.max_position()
        while position < events:
            number += 1
            subject, _ = application.register_subject(
                CRC, RegisterSubject(site="CHH", screening_number=f"V{run}-{number:06d}")
            )
            _, entry, position = application.record_entry(
                CRC,
                subject.subject_id,
                RecordEntry(form="demographics", visit="SCR", data=demographics),
            )
            revision = 1
            for step in range(EVENTS_PER_SUBJECT - 2):
                if position >= events:
                    break
                if step % 2:
                    command = CorrectEntry(
                        changes={"weight_kg": 50.0 + revision / 10},
                        reason="transcription error",
                        expected_revision=revision,
                    )
                    _, _, position = application.correct_entry(
                        CRC, subject.subject_id, entry.entry_id, command
                    )
                    revision += 1
                else:
                    data = {**adverse_event, "term": "Other, specify", "term_other": f"AE {step}"}
                    _, _, position = application.record_entry(
                        CRC,
                        subject.subject_id,
                        RecordEntry(form="adverse_event", visit="LOG", data=data),
                    )
                if position % SEAL_EVERY < 2:
                    application.ledger.maybe_seal()
            application.ledger.maybe_seal()
        application.ledger.seal(reason="bench")
        return application.max_position(), number
    finally:
        application.close()


@dataclass
class Timing:
    """One timed pass over the whole log."""

    what: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds else float("nan")


def raw_read(database: DatabaseUrl, loads: Callable[[bytes], Any]) -> int:
    """One plain SELECT of every stored event, each state parsed with ``loads``."""
    if database.engine == "sqlite":
        return _raw_sqlite(database, loads)
    import psycopg

    count = 0
    table = f'"{database.schema or "public"}"."{POSTGRES_EVENTS_TABLE}"'
    with psycopg.connect(_conninfo(database)) as pg, pg.cursor(name="bench_raw") as cursor:
        cursor.itersize = 2000
        cursor.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {table} ORDER BY notification_id"
        )
        for row in cursor:
            loads(row[4])
            count += 1
    return count


def _raw_sqlite(database: DatabaseUrl, loads: Callable[[bytes], Any]) -> int:
    count = 0
    path = Path(database.sqlite_path).resolve()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT rowid, originator_id, originator_version, topic, state "
            "FROM stored_events ORDER BY rowid"
        )
        for row in rows:
            loads(row[4])
            count += 1
    finally:
        conn.close()
    return count


def _conninfo(database: DatabaseUrl) -> str:
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(
        host=database.host,
        port=database.port,
        user=database.user,
        password=database.password or None,
        dbname=database.dbname,
    )


def verify_in_process(settings: Settings) -> Report:
    """`ecrf verify --database` as the command runs it, with the command's defaults."""
    key = SealKey.load(settings.data_dir / "seal-key.pem")
    held = read_held_seals(mirror_path(settings.data_dir))
    source = open_log(settings.database)
    return verify_source(source, trusted_keys={key.key_id: key.public_key}, held_seals=held)


def verify_command(settings: Settings, url: str) -> tuple[float, str]:
    """The installed command in a fresh process: wall seconds and its last line."""
    env = {
        **os.environ,
        "ECRF_DATABASE_URL": url,
        "ECRF_DATA_DIR": str(settings.data_dir),
        "COLUMNS": "1000",  # the verdict on one line
    }
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "verify", "--database", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"ecrf verify failed ({result.returncode}):\n{result.stdout}")
    return elapsed, result.stdout.strip().splitlines()[-1]


def _timed(what: str, run: Callable[[], int]) -> Timing:
    started = time.perf_counter()
    events = run()
    return Timing(what, events, time.perf_counter() - started)


def _machine(database: DatabaseUrl) -> str:
    if database.engine == "sqlite":
        engine = f"SQLite {sqlite3.sqlite_version}"
    else:
        import psycopg

        with psycopg.connect(_conninfo(database)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        engine = f"PostgreSQL {row[0] if row else '?'} on {database.host or 'localhost'}"
    return (
        f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{engine}, orjson {version('orjson')}, cryptography {version('cryptography')}"
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def _median(timings: list[Timing]) -> Timing:
    ordered = sorted(timings, key=lambda t: t.seconds)
    middle = ordered[len(ordered) // 2]
    return Timing(middle.what, middle.events, statistics.median(t.seconds for t in timings))


def main() -> None:
    """Build (or reuse) a store, time the baseline and verify alternately, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--database", help="postgresql://... to measure PostgreSQL (a fresh schema is used)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds to time")
    parser.add_argument(
        "--keep", type=Path, help="SQLite: build the store in DIR and keep it (reused if full)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ecrf-verify-bench-") as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        schema = f"bench_verify_{uuid.uuid4().hex[:12]}" if args.database else ""
        url = (
            f"{args.database.split('?', 1)[0]}?schema={schema}"
            if args.database
            else f"sqlite:///{directory / 'bench.sqlite'}"
        )
        database = DatabaseUrl.parse(url)
        if schema:
            _schema(database, create=True)
        try:
            _measure(args, directory, url, database)
        finally:
            if schema:
                _schema(database, create=False)


def _schema(database: DatabaseUrl, *, create: bool) -> None:
    import psycopg

    with psycopg.connect(_conninfo(database), autocommit=True) as conn:
        if create:
            conn.execute(f'CREATE SCHEMA "{database.schema}"')
        else:
            conn.execute(f'DROP SCHEMA IF EXISTS "{database.schema}" CASCADE')


def _measure(args: argparse.Namespace, directory: Path, url: str, database: DatabaseUrl) -> None:
    settings = Settings(
        database=database,
        data_dir=directory / "data",
        run_projections=False,
        seal_interval=SEAL_EVERY,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
    started = time.perf_counter()
    events, casebooks = build(settings, args.events)
    built = time.perf_counter() - started
    print(f"store: {events} events, {casebooks} casebooks added in {built:.0f} s", flush=True)

    load_before = _load()
    rounds: dict[str, list[Timing]] = {"json": [], "orjson": [], "verify": []}
    report: Report | None = None
    for number in range(1, args.rounds + 1):
        rounds["json"].append(_timed("json", lambda: raw_read(database, json.loads)))
        rounds["orjson"].append(_timed("orjson", lambda: raw_read(database, orjson.loads)))
        timing = _timed("verify", lambda: _verified(settings))
        rounds["verify"].append(timing)
        print(
            f"round {number}: SELECT + json.loads {rounds['json'][-1].rate:,.0f}/s, "
            f"SELECT + orjson.loads {rounds['orjson'][-1].rate:,.0f}/s, "
            f"verify {timing.rate:,.0f}/s",
            flush=True,
        )
    report = verify_in_process(settings)
    command_seconds, command_line = verify_command(settings, url)
    load_after = _load()

    baseline = _median(rounds["json"])
    reference = _median(rounds["orjson"])
    verify = _median(rounds["verify"])
    command = Timing("command", report.events, command_seconds)
    engine = database.engine
    rows = [
        ("plain `SELECT` + `json.loads` of each state (**baseline**)", baseline),
        ("plain `SELECT` + `orjson.loads` of each state (reference)", reference),
        ("**`ecrf verify --database`**, the command's code in-process", verify),
        ("`ecrf verify --database` as a fresh process (start-up included)", command),
    ]
    lines = [
        f"## `ecrf verify` vs a raw read of the events table, {engine} "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {_machine(database)}. Load average {load_before} before the "
        f"measurements, {load_after} after (other work shared the machine).",
        "",
        f"Store: {report.events} events, written through the application's commands "
        + (
            f"in {built:.0f} s ({casebooks} casebooks"
            if casebooks
            else "by this script in an earlier run, kept with `--keep` (the same casebooks"
        )
        + ": registration, demographics, then adverse events and demographics corrections "
        f"in turn, {EVENTS_PER_SUBJECT} events each), {report.seals} seals (every "
        f"{SEAL_EVERY} events). Each row is the median of {args.rounds} alternating rounds "
        "(the fresh-process row: one run). Verification recomputes every event's hash, "
        "every stream's chain, the running head and every seal's signature, trusting the "
        "data directory's key and checking its seal copies, as the command does.",
        "",
        "| what | events | seconds | events/s | ratio to baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, timing in rows:
        lines.append(
            f"| {label} | {timing.events} | {timing.seconds:.2f} | {timing.rate:,.0f} | "
            f"{timing.rate / baseline.rate:.2f} |"
        )
    lines += [
        "",
        f"Goal: verify at least 0.5x the baseline. Measured: "
        f"**{verify.rate / baseline.rate:.2f}x** in-process, "
        f"{command.rate / baseline.rate:.2f}x as a fresh process.",
        "",
        f"The command's verdict: `{command_line}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / f"verify-{engine}.md"
    if args.events >= 200_000:
        out.write_text(text, encoding="utf-8")
        print(f"written to {out}")
    else:
        print(f"(a smoke run below 200,000 events: {out} left as it is)")


def _verified(settings: Settings) -> int:
    report = verify_in_process(settings)
    if not report.ok:
        raise SystemExit("the bench store does not verify: " + str(report.problems[:3]))
    return report.events


if __name__ == "__main__":
    main()
