"""Verification throughput: `ecrf verify` on a generated SQLite store (events per second).

    .venv/bin/python -m bench.verify [--events 20000] [--keep DIR]

Builds a store through the application's commands (casebooks with an entry and
corrections, sealed every 1000 events), then times the offline verifier reading the
raw table, and the same log as an export file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ecrf.application import EcrfApplication
from ecrf.commands import CorrectEntry, RecordEntry, RegisterSubject
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.ledger.readers import SqliteLog, verify_export, verify_log
from ecrf.persistence import DatabaseUrl

CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))
FDA = Actor("fda", "Food and Drug", ("regulator",), ())
CORRECTIONS_PER_SUBJECT = 48


def build(directory: Path, events: int) -> EcrfApplication:
    """A store with about ``events`` events."""
    settings = Settings(
        database=DatabaseUrl.parse(f"sqlite:///{directory / 'bench.sqlite'}"),
        data_dir=directory / "data",
        run_projections=False,
    )
    application = EcrfApplication(settings)
    data = application.forms.get("demographics").schema["examples"][0]
    number = 0
    while application.max_position() < events:
        number += 1
        subject, _ = application.register_subject(
            CRC, RegisterSubject(site="CHH", screening_number=f"B{number:05d}")
        )
        _, entry, _ = application.record_entry(
            CRC, subject.subject_id, RecordEntry(form="demographics", visit="SCR", data=data)
        )
        for revision in range(1, CORRECTIONS_PER_SUBJECT + 1):
            if application.max_position() >= events:
                break
            command = CorrectEntry(
                changes={"weight_kg": 50.0 + revision / 10},
                reason="bench",
                expected_revision=revision,
            )
            application.correct_entry(CRC, subject.subject_id, entry.entry_id, command)
            application.ledger.maybe_seal()
    application.ledger.seal()
    return application


def main() -> None:
    """Build, verify, print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, help="build the store here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        application = build(directory, args.events)
        print(f"built {application.max_position()} events in {time.perf_counter() - started:.1f} s")
        key = application.ledger.key
        export = directory / "ledger.jsonl"
        export.write_bytes(b"".join(application.ledger.export(FDA)))
        application.close()
        trusted = {key.key_id: key.public_key}

        log = SqliteLog(directory / "bench.sqlite")
        started = time.perf_counter()
        report = verify_log(log, trusted_keys=trusted)
        elapsed = time.perf_counter() - started
        log.close()
        assert report.ok, report.problems[:5]
        print(
            f"verify --database: {report.events} events, {report.seals} seals in "
            f"{elapsed:.2f} s = {report.events / elapsed:,.0f} events/s"
        )

        started = time.perf_counter()
        report = verify_export(export, trusted_keys=trusted)
        elapsed = time.perf_counter() - started
        assert report.ok, report.problems[:5]
        print(
            f"verify --file:     {report.events} events in {elapsed:.2f} s = "
            f"{report.events / elapsed:,.0f} events/s ({export.stat().st_size / 1e6:.1f} MB)"
        )


if __name__ == "__main__":
    main()
