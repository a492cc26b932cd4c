"""Casebook and as_of read latency as the store grows: 10k, 100k and 1M events.

The store is filled through the real aggregates and the hash-chaining event store
(many events per save, to keep the fill quick); then one subject's casebook is read now
and as of a past moment, repeatedly, and the median and p95 are reported. Reads replay
one stream (indexed by stream id), so the cost should not grow with the store.

    .venv/bin/python -m bench.read --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ecrf.application import EcrfApplication
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.domain.subject import Subject
from ecrf.persistence import DatabaseUrl

ENTRIES_PER_SUBJECT = 100
READS = 200
CRC = Actor("crc", "Bench", ("site_staff",), ("CHH",))


def _fill(application: EcrfApplication, events: int, offset: int) -> int:
    """Add subjects of ENTRIES_PER_SUBJECT entries until ``events`` more are stored."""
    example = application.forms.get("adverse_event").schema["examples"][0]
    sha = application.forms.get("adverse_event").sha256
    audit = CRC.stamp("site_staff", "CHH")
    written = 0
    number = offset
    while written < events:
        number += 1
        subject = Subject(
            subject_id=f"CHH-F{number}", site="CHH", screening_number=f"F{number}", audit=audit
        )
        for index in range(ENTRIES_PER_SUBJECT):
            subject.record_entry(
                f"e{number}-{index}", "adverse_event", 1, "LOG", example, sha, audit
            )
        application.save(subject)
        written += ENTRIES_PER_SUBJECT + 1
    return number


def _measure(application: EcrfApplication, subject_id: str, moment: datetime) -> dict[str, float]:
    results = {}
    for label, as_of in (("casebook", None), ("casebook as_of", moment)):
        samples = []
        for _ in range(READS):
            started = time.perf_counter()
            application.subject(CRC, subject_id, as_of)
            samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        results[f"{label} p50"] = statistics.median(samples)
        results[f"{label} p95"] = samples[int(0.95 * len(samples)) - 1]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--database", default="", help="URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ecrf-read-"))
    url = args.database or f"sqlite:///{workdir / 'ecrf.sqlite'}"
    settings = Settings(database=DatabaseUrl.parse(url), data_dir=workdir / "data")
    application = EcrfApplication(settings)
    rows = []
    stored = 0
    number = 0
    probe = ""
    moment = datetime.now(UTC)
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        number = _fill(application, size - stored, number)
        fill_seconds = time.perf_counter() - started
        stored = application.max_position()
        if not probe:
            probe = "CHH-F1"
            moment = datetime.now(UTC)
        result = _measure(application, probe, moment)
        rows.append((stored, fill_seconds, result))
        print(stored, {k: round(v, 2) for k, v in result.items()}, flush=True)
    application.close()

    lines = [
        f"## Casebook read latency vs store size ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {settings.database.engine}; one casebook of "
        f"{ENTRIES_PER_SUBJECT} entries read {READS} times (application call, no HTTP; "
        "the aggregate cache makes repeated current reads a fast-forward).",
        "",
        "| events stored | fill s | casebook p50 ms | p95 ms | as_of p50 ms | as_of p95 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for stored_events, fill, r in rows:
        lines.append(
            f"| {stored_events} | {fill:.0f} | {r['casebook p50']:.2f} | {r['casebook p95']:.2f} "
            f"| {r['casebook as_of p50']:.2f} | {r['casebook as_of p95']:.2f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(__file__).parent / "results" / f"read-{settings.database.engine}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
