"""Projection rebuild rate next to the library's own log read + deserialise rate.

    .venv/bin/python -m bench.rebuild [--events 200000] [--database URL] [--store DIR] [--reuse]
        [--no-alone]

Fills a store through the application's commands with casebooks shaped like the trial's
(screening forms, leukapheresis, lymphodepletion, infusion, PK samples, CRS and ICANS
assessments, adverse events, ctDNA, imaging, corrections, a voided duplicate, a monitor's
query, end of study; the ledger sealed every 1000 events), then, in the same run, times:

(a) the floor any log follower pays: every notification read in pages with the recorder's
    ``select_notifications`` and decoded with ``Mapper.to_domain_event``, with the
    library's own JSON transcoder (the yardstick) and with the application's, which reads
    stored states with orjson (``ecrf.persistence.StoredStateTranscoder``);
(b) the rebuild of every projection with the runner that ``ecrf projections rebuild``
    builds (``projections.registry.build_runner``, the command's default batch size), in
    one pass as the command does; then (unless ``--no-alone``) each projection on its own,
    as ``ecrf projections rebuild NAME`` does.

It prints and writes a markdown table to bench/results/rebuild-<engine>.md. ``--reuse``
measures a store that already holds events (topping it up to ``--events``); without it a
non-empty store is refused, so that a stray database is never measured by mistake.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import random
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

from eventsourcing.persistence import JSONTranscoder, Mapper
from sqlalchemy import func, select

from ecrf import cli_projections
from ecrf.application import EcrfApplication
from ecrf.commands import (
    AnswerQuery,
    CloseQuery,
    CorrectEntry,
    EnrolSubject,
    OpenQuery,
    RecordEntry,
    RegisterSubject,
    VoidEntry,
)
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.domain.errors import ConflictError
from ecrf.persistence import DatabaseUrl
from projections.registry import build_runner
from projections.runner import ProjectionRunner, fewer_collections

CRC = Actor("crc", "Bench site staff", ("site_staff",), ("CHH",))
MONITOR = Actor("cra", "Bench monitor", ("monitor",), ("CHH",))
SITE = "CHH"
# The day the forms' examples infuse on; every casebook shifts the examples' dates by its
# own infusion day, so dates stay consistent within a casebook and spread over two years.
EXAMPLE_INFUSION = date(2023, 4, 25)
# `ecrf projections rebuild --batch-size` default, read from the command so they never drift.
REBUILD_BATCH: int = inspect.signature(cli_projections.rebuild).parameters["batch_size"].default
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _shifted(value: Any, days: timedelta) -> Any:
    """A new copy of form data with every ISO date (or date-time) moved by ``days``."""
    if isinstance(value, dict):
        return {k: _shifted(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [_shifted(v, days) for v in value]
    if isinstance(value, str) and _ISO_DAY.match(value):
        return _on_day(value, date.fromisoformat(value[:10]) + days)
    return value


def _on_day(value: str, day: date) -> str:
    """``value`` (an ISO date or date-time) moved to ``day``, keeping its time of day."""
    return day.isoformat() + value[10:]


class CasebookWriter:
    """Writes whole casebooks through the application's commands, deterministically."""

    def __init__(self, application: EcrfApplication, prefix: str) -> None:
        self.application = application
        self.prefix = prefix
        forms = application.forms
        self.date_fields: dict[str, str] = {
            name: str(meta["date_field"])
            for name, meta in forms.study.get("forms", {}).items()
            if meta.get("date_field")
        }
        self.visits = {v["code"]: v for v in forms.study.get("visits", [])}
        self.dose_per_kg = {
            str(d["dose_level"]): int(d["dose_per_kg"]) for d in forms.study["dose_levels"]
        }
        self.examples = {
            name: forms.get(name).schema["examples"][0]
            for name in self.date_fields
            if forms.get(name).schema.get("examples")
        }

    def write(self, number: int) -> None:
        """One subject's casebook: about 50 events."""
        rng = random.Random(number)
        app = self.application
        subject, _ = app.register_subject(
            CRC, RegisterSubject(site=SITE, screening_number=f"{self.prefix}{number:06d}")
        )
        sid = subject.subject_id
        infusion = EXAMPLE_INFUSION + timedelta(days=number % 730)
        shift = infusion - EXAMPLE_INFUSION
        consent = date(2023, 3, 20) + shift  # the examples' consent date, moved

        def record(
            form: str, visit: str, day: date, base: dict[str, Any] | None = None, **changes: Any
        ) -> str:
            """Record the form's example (or ``base``) at ``day``, with ``changes``."""
            data = _shifted(base or self.examples[form], shift)
            field = self.date_fields[form]
            data[field] = _on_day(str(data[field]), day)
            data.update(changes)
            _, entry, _ = app.record_entry(CRC, sid, RecordEntry(form=form, visit=visit, data=data))
            return entry.entry_id

        def at(visit: str) -> date:
            return infusion + timedelta(days=int(self.visits[visit]["target_day"]))

        # Screening, consent-anchored.
        record("informed_consent", "SCR", consent)
        age = rng.randint(30, 75)
        record("eligibility", "SCR", consent + timedelta(days=5), age=age)
        weight = round(rng.uniform(48.0, 95.0), 1)
        # One casebook in ten has an age typo, which the soft checks query.
        typo = 1 if number % 10 == 0 else 0
        demographics = record("demographics", "SCR", consent, weight_kg=weight, age=age + typo)
        record("surgery_history", "SCR", date(2023, 1, 12) + shift)
        for form in ("ctdna_result", "labs", "imaging", "vital_signs"):
            record(form, "SCR", consent + timedelta(days=2))
        level = f"DL{number % 3 + 1}"
        try:
            _, slot, _ = app.enrol_subject(CRC, sid, EnrolSubject(reason="bench"))
            level = slot.dose_level
        except ConflictError:
            pass  # the 3+3 design has no open slot: most casebooks stay in screening

        # Cell collection, conditioning and infusion.
        record("leukapheresis", "LEUK", at("LEUK"))
        record("lymphodepletion", "LD", at("LD"))
        record(
            "cart_infusion",
            "D0",
            infusion,
            dose_level=level,
            weight_kg=weight,
            total_car_t_cells=int(self.dose_per_kg[level] * weight),
        )
        record("vital_signs", "D0", infusion, weight_kg=weight)
        for visit in ("D0", "D1", "D2"):
            record("crs_assessment", visit, at(visit))
        for visit in ("D1", "D2"):
            record("icans_assessment", visit, at(visit))

        # Cellular kinetics: expansion to a peak around day 7-10, then contraction.
        peak = rng.uniform(20.0, 400.0)
        pk: dict[str, str] = {}
        for visit in ("D0", "D1", "D4", "D7", "D10", "D14", "D21", "D28", "M3", "M6"):
            day = int(self.visits[visit]["target_day"])
            # Kept above the lower limits of quantification (flow 1 cell/uL, qPCR 50).
            flow = max(round(peak * math.exp(-((math.log1p(day) - 2.1) ** 2)), 2), 1.5)
            pk[visit] = record(
                "pk_sample",
                visit,
                at(visit),
                sample_datetime=f"{at(visit).isoformat()}T10:30:00+08:00",
                nominal_day=day,
                flow_cells_per_ul=flow,
                qpcr_copies_per_ug=round(flow * 1500),
            )

        # Adverse events (the log visit), one corrected, one duplicate voided.
        onset = infusion + timedelta(days=1)
        record("adverse_event", "LOG", onset)
        fatigue = {
            "term": "Fatigue",
            "onset_date": "",
            "ongoing": True,
            "grade": 1,
            "serious": False,
            "relationship": "possible",
        }
        record("adverse_event", "LOG", onset, fatigue)
        duplicate = record("adverse_event", "LOG", onset, fatigue)
        neutropenia = record(
            "adverse_event",
            "LOG",
            infusion + timedelta(days=3),
            fatigue,
            term="Neutrophil count decreased",
            ongoing=False,
            resolution_date=(infusion + timedelta(days=12)).isoformat(),
            grade=3,
            relationship="probable",
        )
        app.void_entry(CRC, sid, duplicate, VoidEntry(reason="duplicate", expected_revision=1))
        app.correct_entry(
            CRC,
            sid,
            neutropenia,
            CorrectEntry(changes={"grade": 4}, reason="source says 4", expected_revision=1),
        )
        app.correct_entry(
            CRC,
            sid,
            demographics,
            CorrectEntry(
                changes={"weight_kg": weight + 0.5}, reason="re-weighed", expected_revision=1
            ),
        )

        # A monitor's query on a PK value, answered, corrected and closed.
        query_path = "/flow_cells_per_ul"
        _, query_id, _ = app.open_query(
            MONITOR, sid, pk["D7"], OpenQuery(path=query_path, text="Please check the source.")
        )
        app.answer_query(CRC, query_id, AnswerQuery(text="Transcription error, corrected."))
        app.correct_entry(
            CRC,
            sid,
            pk["D7"],
            CorrectEntry(
                changes={"flow_cells_per_ul": round(peak * 0.9, 2)},
                reason="transcription error",
                expected_revision=1,
                query_id=query_id,
            ),
        )
        app.close_query(MONITOR, query_id, CloseQuery(text="Resolved."))

        # DLT window and follow-up.
        record("dlt_assessment", "D28", at("D28"))
        for visit in ("D28", "M3", "M6", "M12"):
            record("ctdna_result", visit, at(visit))
        for visit in ("M3", "M6", "M12"):
            record("imaging", visit, at(visit))
        record("end_of_study", "EOS", at("M24"), last_contact_date=at("M24").isoformat())


def fill(application: EcrfApplication, events: int) -> tuple[int, float]:
    """Add casebooks until the log holds ``events``; (casebooks written, seconds)."""
    # A prefix from the current head keeps screening numbers unique when topping up.
    writer = CasebookWriter(application, f"R{application.max_position()}-")
    started = time.perf_counter()
    written = 0
    while application.max_position() < events:
        writer.write(written)
        written += 1
        application.ledger.maybe_seal()
        if written % 200 == 0:
            print(f"  filled {application.max_position()} events", flush=True)
    return written, time.perf_counter() - started


@dataclass(frozen=True)
class Timing:
    """Events processed in some seconds (and, for a projection, the rows it holds)."""

    label: str
    events: int
    seconds: float
    rows: int | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("nan")


def library_mapper(application: EcrfApplication) -> Mapper[Any]:
    """The library's own mapper: its JSON transcoder, with the application's transcodings."""
    transcoder = JSONTranscoder()
    application.register_transcodings(transcoder)
    return Mapper(transcoder=transcoder)


def read_and_decode(
    application: EcrfApplication, page: int, tuned: bool = False, library: bool = True
) -> Timing:
    """Every notification read in pages and decoded to a domain event, as the library does.

    ``tuned`` runs it under the rebuild's garbage-collector setting (``fewer_collections``),
    so that the rebuild is also compared with a read that pays no more collections than it.
    ``library`` decodes with the library's own transcoder, otherwise with the application's.
    """
    if tuned:
        with fewer_collections():
            timing = read_and_decode(application, page, library=library)
        label = f"{timing.label.removesuffix(', default GC')}, the rebuild's GC setting"
        return Timing(label, timing.events, timing.seconds)
    recorder = application.recorder
    mapper = library_mapper(application) if library else application.mapper
    started = time.perf_counter()
    position = count = 0
    while True:
        notifications = recorder.select_notifications(
            start=position, limit=page, inclusive_of_start=False
        )
        if not notifications:
            break
        for notification in notifications:
            mapper.to_domain_event(notification)
        count += len(notifications)
        position = notifications[-1].id
    decoder = "the library's decoder" if library else "ecrf's decoder"
    label = f"log read + {decoder}, pages of {page}, default GC"
    return Timing(label, count, time.perf_counter() - started)


# Read + decode as the library pages it by default-ish and as the rebuild pages it, each
# with Python's default collector and with the rebuild's setting; the library's decoder
# (the yardstick), then the application's (what the rebuild itself decodes with).
READ_VARIANTS = (
    (1000, False, True),
    (REBUILD_BATCH, False, True),
    (1000, True, True),
    (REBUILD_BATCH, True, True),
    (1000, True, False),
    (REBUILD_BATCH, True, False),
)


def read_variants(application: EcrfApplication) -> list[Timing]:
    """One timing of each read + decode variant."""
    timings = []
    for page, tuned, library in READ_VARIANTS:
        timing = read_and_decode(application, page, tuned, library)
        print(f"{timing.label}: {timing.rate:,.0f} events/s", flush=True)
        timings.append(timing)
    return timings


def _progress(label: str) -> Callable[[int, int], None]:
    """A progress callback printing a line now and then, as the command's bar advances."""
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        # The command updates a progress bar per batch; printing a line now and then
        # keeps a long run observable without measuring the terminal.
        if time.monotonic() - shown[0] > 10:
            shown[0] = time.monotonic()
            print(f"  {label}: {done}/{total}", flush=True)

    return progress


def rebuild_all(runner: ProjectionRunner, head: int) -> Timing:
    """Every projection rebuilt at once, as `ecrf projections rebuild` does it (one pass)."""
    started = time.perf_counter()
    runner.rebuild(None, progress=_progress("all"))
    seconds = time.perf_counter() - started
    rows = sum(_rows(runner, name) for name in runner.projections)
    print(f"  all projections: {head} events in {seconds:.1f} s", flush=True)
    return Timing(f"rebuild, all {len(runner.projections)} projections", head, seconds, rows)


def rebuild_each(runner: ProjectionRunner, head: int) -> list[Timing]:
    """Each projection rebuilt alone (`ecrf projections rebuild NAME`), one after another."""
    timings = []
    for name in runner.projections:
        started = time.perf_counter()
        runner.rebuild(name, progress=_progress(name))
        seconds = time.perf_counter() - started
        timings.append(Timing(name, head, seconds, _rows(runner, name)))
        print(f"  {name}: {head} events in {seconds:.1f} s", flush=True)
    return timings


def _rows(runner: ProjectionRunner, name: str) -> int:
    metadata = runner.projections[name].metadata
    with runner.engine.connect() as conn:
        return sum(
            int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
            for table in metadata.sorted_tables
        )


def event_mix(application: EcrfApplication) -> list[tuple[str, int]]:
    """Stored events per type, most frequent first."""
    rows = application.table.execute(
        f"SELECT topic, COUNT(*) FROM {application.table.qualified_name} GROUP BY topic",
        fetch=True,
    )
    mix = [(str(topic).rpartition(":")[2], int(count)) for topic, count in rows]
    return sorted(mix, key=lambda item: -item[1])


def _machine(engine: str) -> str:
    database = f"SQLite {sqlite3.sqlite_version}" if engine == "sqlite" else "PostgreSQL"
    return (
        f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"eventsourcing {version('eventsourcing')}, SQLAlchemy {version('sqlalchemy')}, "
        f"{database}"
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def report(
    engine: str,
    head: int,
    filled: str,
    loads: tuple[str, str],
    reads: list[Timing],
    everything: Timing,
    each: list[Timing],
    mix: list[tuple[str, int]],
) -> str:
    """The markdown written to bench/results/."""
    # Each variant ran before and after the rebuilds. The fastest mean of the library's own
    # decoder is the floor the ratio is taken against; the library's plain default and the
    # application's own decoder (which the rebuild uses) are shown beside it.
    means: dict[str, float] = {}
    for timing in reads:
        means.setdefault(timing.label, 0.0)
        means[timing.label] += timing.rate / 2
    library = [label for label in means if "library" in label]
    fastest = max(library, key=means.__getitem__)
    read_rate = means[fastest]
    plain = means[reads[0].label]
    ours = max((label for label in means if label not in library), key=means.__getitem__)
    lines = [
        f"## Projection rebuild vs log read + decode, {engine} "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {_machine(engine)}. Load average {loads[0]} before the measurements, "
        f"{loads[1]} after.",
        "",
        f"Store: {head} events; {filled}. Rebuild batches of {REBUILD_BATCH} events (the "
        "`ecrf projections rebuild` default). Read + decode is `recorder.select_notifications` "
        "in pages plus `Mapper.to_domain_event` for each, over the whole log: with the "
        "library's own JSON transcoder in four variants (pages of 1000 and of "
        f"{REBUILD_BATCH}; Python's default garbage collector and the rebuild's setting, "
        "`projections.runner.fewer_collections`), and with the application's transcoder "
        "(`ecrf.persistence.StoredStateTranscoder`, orjson; the rebuild decodes with it) "
        "under the rebuild's setting; each measured before and after the rebuilds. **The "
        "ratio column is against the fastest mean of the library's decoder "
        f"({fastest}: {read_rate:,.0f} events/s)**; against the library's plain read (pages "
        f"of 1000, default GC: {plain:,.0f} events/s) the all-projections rebuild is "
        f"{everything.rate / plain:.2f}x, and against the fastest read with ecrf's own "
        f"decoder ({means[ours]:,.0f} events/s) {everything.rate / means[ours]:.2f}x. "
        "The rebuild of all projections is "
        "`ProjectionRunner.rebuild()`, as `ecrf projections rebuild` runs it: one pass over "
        "the log, each batch read and decoded once and written to every projection in one "
        "transaction. Each projection alone is `ProjectionRunner.rebuild(NAME)` "
        "(`ecrf projections rebuild NAME`), a pass of its own.",
        "",
        "| what | events | seconds | events/s | ratio to read + decode | rows |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(timing: Timing, label: str) -> str:
        rows = "" if timing.rows is None else str(timing.rows)
        return (
            f"| {label} | {timing.events} | {timing.seconds:.1f} | {timing.rate:,.0f} | "
            f"{timing.rate / read_rate:.2f} | {rows} |"
        )

    half = len(reads) // 2
    for index, timing in enumerate(reads):
        lines.append(row(timing, f"{timing.label} ({'before' if index < half else 'after'})"))
    lines.append(row(everything, f"**{everything.label} (one pass)**"))
    lines += [row(t, f"rebuild `{t.label}` alone") for t in each]
    lines += [
        "",
        "Event mix: " + ", ".join(f"{name} {count}" for name, count in mix) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Fill (or reuse) a store, measure, print and write the results table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="log size to measure")
    parser.add_argument("--database", default="", help="URL (default: SQLite in --store)")
    parser.add_argument("--store", type=Path, help="directory of the SQLite file and data dir")
    parser.add_argument(
        "--reuse", action="store_true", help="measure the events already stored (topped up)"
    )
    parser.add_argument(
        "--no-alone", action="store_true", help="skip rebuilding each projection on its own"
    )
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be positive")
    workdir: Path = args.store or Path(tempfile.mkdtemp(prefix="ecrf-rebuild-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url = args.database or f"sqlite:///{workdir / 'ecrf.sqlite'}"
    settings = Settings(
        database=DatabaseUrl.parse(url),
        data_dir=workdir / "data",
        run_projections=False,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
    application = EcrfApplication(settings)
    try:
        measure(
            application,
            settings,
            args.events,
            reuse=args.reuse,
            workdir=workdir,
            alone=not args.no_alone,
        )
    finally:
        application.close()


def measure(
    application: EcrfApplication,
    settings: Settings,
    events: int,
    *,
    reuse: bool,
    workdir: Path,
    alone: bool = True,
) -> None:
    """Fill, time read + decode and the rebuild, and write the report."""
    before = application.max_position()
    # A fresh store already holds the study registry and its seed events.
    if before > 10 and not reuse:
        raise SystemExit(
            f"the store already holds {before} events; pass --reuse to measure them, "
            "or point --database / --store at an empty one"
        )
    print(f"store: {settings.database.engine} in {workdir}; {before} events", flush=True)
    casebooks, fill_seconds = fill(application, events)
    head = application.max_position()
    filled = (
        f"{casebooks} casebooks ({head - before} events) written through the application's "
        f"commands in {fill_seconds:.0f} s"
    )
    if before > 10:
        filled = f"reused a store of {before} events, then {filled}"
    print(f"{head} events; {filled}", flush=True)

    load_before = _load()
    runner = build_runner(application, settings)
    runner.batch_size = REBUILD_BATCH
    try:
        reads = read_variants(application)
        everything = rebuild_all(runner, head)
        each = rebuild_each(runner, head) if alone else []
        reads += read_variants(application)
        lagging = [s["name"] for s in runner.status() if s["lag"]]
        if lagging:
            raise SystemExit(f"projections lag after the rebuild: {lagging}")
    finally:
        runner.engine.dispose()
    text = report(
        settings.database.engine,
        head,
        filled,
        (load_before, _load()),
        reads,
        everything,
        each,
        event_mix(application),
    )
    print(text)
    out = Path(__file__).parent / "results" / f"rebuild-{settings.database.engine}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
