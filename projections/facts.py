"""Source facts of the clinical read models: each subject's live entries, per form.

The clinical read models (timeline, safety, PK, MRD, RFS) store what the casebooks say, not
what the reports conclude: one row per subject and one row per live entry of the forms they
analyse, with the entry's current data, kept once for all of them by
``projections.clinical_facts`` (each report reads its own forms from it). A correction
replaces the data, a void removes the row (a voided entry leaves every analysis), a
signature records the revision it holds for. Report rows are then computed from these
facts by pure functions at read time, which keeps incremental processing, a rebuild and an
``as_of`` replay trivially identical: all three only ever write facts, and the same
functions read them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from functools import singledispatchmethod
from typing import Any, ClassVar, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    select,
)

from ecrf.clinical.grading import crs_grade, icans_grade, ice_score
from ecrf.clinical.values import parse_instant
from ecrf.domain.subject import Subject
from projections.runner import Projection, change_row, pending, remove_row, tracking


class FactTables(NamedTuple):
    """The two tables of a facts projection."""

    subjects: Table
    entries: Table


def fact_tables(prefix: str, metadata: MetaData) -> FactTables:
    """Subjects and live-entry tables named ``<prefix>_subjects`` and ``<prefix>_entries``."""
    subjects = Table(
        f"{prefix}_subjects",
        metadata,
        Column("stream", String(36), primary_key=True),
        Column("subject_id", String(64), nullable=False, unique=True),
        Column("site", String(16), nullable=False, index=True),
        Column("dose_level", String(16)),
        # ISO 8601 text: exact on both backends (SQLite drops a DateTime's zone).
        Column("enrolled_at", String(40)),
        Column("position", BigInteger, nullable=False),
    )
    entries = Table(
        f"{prefix}_entries",
        metadata,
        Column("entry_id", String(64), primary_key=True),
        Column("stream", String(36), nullable=False, index=True),
        # Not indexed: facts are read by subject (stream), and a rebuild writes every row.
        Column("form", String(64), nullable=False),
        Column("visit", String(16), nullable=False),
        Column("revision", Integer, nullable=False),
        Column("data", JSON, nullable=False),
        Column("signed_revision", Integer),
        # Log position of the newest signature: which of two signed entries was signed last.
        Column("signed_position", BigInteger),
        Column("recorded_position", BigInteger, nullable=False),
        Column("position", BigInteger, nullable=False),
    )
    return FactTables(subjects, entries)


class EntryFacts(Projection):
    """Base of the facts projections: keeps the live entries of ``forms`` per subject."""

    forms: frozenset[str]
    """The forms kept (a class's default; an instance may keep fewer, e.g. for ``as_of``)."""
    tables: ClassVar[FactTables]

    @singledispatchmethod
    def process(self, domain_event: Any, conn: Connection, position: int) -> None:
        """Events this projection does not need are ignored."""

    @process.register
    def registered(self, domain_event: Subject.Registered, conn: Connection, position: int) -> None:
        """A subject row, without a dose level yet."""
        stream = str(domain_event.originator_id)
        pending(conn).add(
            self.tables.subjects,
            stream,
            {
                "stream": stream,
                "subject_id": domain_event.subject_id,
                "site": domain_event.site,
                "dose_level": None,
                "enrolled_at": None,
                "position": position,
            },
        )

    @process.register
    def entry_recorded(
        self, domain_event: Subject.EntryRecorded, conn: Connection, position: int
    ) -> None:
        """A new live entry, at revision 1."""
        if domain_event.form not in self.forms:
            return
        pending(conn).add(
            self.tables.entries,
            domain_event.entry_id,
            {
                "entry_id": domain_event.entry_id,
                "stream": str(domain_event.originator_id),
                "form": domain_event.form,
                "visit": domain_event.visit,
                "revision": 1,
                "data": domain_event.data,
                "signed_revision": None,
                "signed_position": None,
                "recorded_position": position,
                "position": position,
            },
        )

    @process.register
    def entry_corrected(
        self, domain_event: Subject.EntryCorrected, conn: Connection, position: int
    ) -> None:
        """The entry's data is replaced by the corrected data (which is complete)."""
        self._data_replaced(domain_event, conn, position)

    @process.register
    def entry_migrated(
        self, domain_event: Subject.EntryMigrated, conn: Connection, position: int
    ) -> None:
        """An entry moved to a newer form version: its data as validated there (complete)."""
        self._data_replaced(domain_event, conn, position)

    def _data_replaced(
        self,
        domain_event: Subject.EntryCorrected | Subject.EntryMigrated,
        conn: Connection,
        position: int,
    ) -> None:
        """A correction or migration leaves the entry's complete new data and revision."""
        if domain_event.form not in self.forms:
            return
        change_row(
            conn,
            self.tables.entries.c.entry_id,
            domain_event.entry_id,
            data=domain_event.data,
            revision=domain_event.revision,
            position=position,
        )

    @process.register
    def entry_voided(
        self, domain_event: Subject.EntryVoided, conn: Connection, position: int
    ) -> None:
        """A voided entry leaves every analysis (it stays in the audit trail)."""
        if domain_event.form not in self.forms:
            return
        remove_row(conn, self.tables.entries.c.entry_id, domain_event.entry_id)

    @process.register
    def entry_signed(
        self, domain_event: Subject.EntrySigned, conn: Connection, position: int
    ) -> None:
        """The revision a signature holds for; a later correction moves past it."""
        if domain_event.form not in self.forms:
            return
        change_row(
            conn,
            self.tables.entries.c.entry_id,
            domain_event.entry_id,
            signed_revision=domain_event.revision,
            signed_position=position,
            position=position,
        )

    @process.register
    def enrolled(self, domain_event: Subject.Enrolled, conn: Connection, position: int) -> None:
        """The dose level assigned at enrolment (used until the infusion says otherwise)."""
        change_row(
            conn,
            self.tables.subjects.c.stream,
            str(domain_event.originator_id),
            dose_level=domain_event.dose_level,
            enrolled_at=domain_event.timestamp.isoformat(),
            position=position,
        )


# Reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryFact:
    """One live entry: its current data, and whether a valid signature holds for it."""

    entry_id: str
    form: str
    visit: str
    revision: int
    data: Mapping[str, Any]
    signed: bool
    order: int
    signed_position: int | None = None
    """Log position of the newest signature while one holds (commit order = signing order)."""


@dataclass(frozen=True)
class SubjectFacts:
    """A subject and the live entries a projection keeps for it."""

    subject_id: str
    site: str
    enrolled_dose_level: str | None
    enrolled_at: str | None
    entries: tuple[EntryFact, ...] = field(default=())

    def live(self, form: str) -> list[EntryFact]:
        """Live entries of one form, in the order they were recorded."""
        return [e for e in self.entries if e.form == form]

    def first(self, form: str) -> EntryFact | None:
        """The first recorded live entry of a form, if any."""
        found = self.live(form)
        return found[0] if found else None


def read_facts(
    conn: Connection,
    tables: FactTables,
    *,
    forms: Collection[str] | None = None,
    sites: Collection[str] | None = None,
    subject_id: str | None = None,
) -> list[SubjectFacts]:
    """Subjects (of ``sites`` / one ``subject_id`` when given) with their live entries.

    ``forms`` narrows the entries to those a report reads (default: every form kept).
    """
    subjects, entries = tables
    query = select(subjects).order_by(subjects.c.subject_id)
    if sites is not None:
        query = query.where(subjects.c.site.in_(list(sites)))
    if subject_id is not None:
        query = query.where(subjects.c.subject_id == subject_id)
    people = conn.execute(query).mappings().all()
    if not people:
        return []
    by_stream: dict[str, list[EntryFact]] = {p["stream"]: [] for p in people}
    query = select(entries).where(entries.c.stream.in_(list(by_stream)))
    if forms is not None:
        query = query.where(entries.c.form.in_(sorted(forms)))
    rows = conn.execute(query.order_by(entries.c.recorded_position)).mappings()
    for row in rows:
        by_stream[row["stream"]].append(
            EntryFact(
                entry_id=row["entry_id"],
                form=row["form"],
                visit=row["visit"],
                revision=row["revision"],
                data=row["data"],
                signed=(signed := row["signed_revision"] == row["revision"]),
                order=row["recorded_position"],
                signed_position=row["signed_position"] if signed else None,
            )
        )
    return [
        SubjectFacts(
            subject_id=p["subject_id"],
            site=p["site"],
            enrolled_dose_level=p["dose_level"],
            enrolled_at=p["enrolled_at"],
            entries=tuple(by_stream[p["stream"]]),
        )
        for p in people
    ]


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read transaction in which the tracking position and the rows agree."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # READ COMMITTED would let a batch commit between reading rows and position.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def tracked_position(conn: Connection, name: str) -> int:
    """The log position a projection's committed rows reflect."""
    value = conn.execute(select(tracking.c.position).where(tracking.c.name == name)).scalar()
    return int(value or 0)


# Study time ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Infusion:
    """When a subject was infused (instant and study-local day 0) and at which dose level."""

    at: datetime
    day: date
    dose_level: str | None


def infusion_of(subject: SubjectFacts, zone: tzinfo) -> Infusion | None:
    """The subject's CAR-T infusion (the first live cart_infusion entry), if any."""
    for entry in subject.live("cart_infusion"):
        moment = parse_instant(entry.data.get("infusion_datetime"), zone)
        if moment is not None:
            level = entry.data.get("dose_level")
            return Infusion(moment, moment.astimezone(zone).date(), _text(level))
    return None


def dose_level_of(subject: SubjectFacts, zone: tzinfo) -> str | None:
    """The dose level given (infusion entry), else the one assigned at enrolment."""
    infusion = infusion_of(subject, zone)
    if infusion is not None and infusion.dose_level is not None:
        return infusion.dose_level
    return subject.enrolled_dose_level


def study_day(day: date | None, infusion: Infusion | None) -> int | None:
    """Days from infusion (day 0 = infusion day; days before are negative)."""
    if day is None or infusion is None:
        return None
    return (day - infusion.day).days


def dose_levels(study: Mapping[str, Any], present: Sequence[str | None] = ()) -> list[str]:
    """The study's dose levels in order, then any other level found in the data."""
    levels = [str(d["dose_level"]) for d in study.get("dose_levels", [])]
    extra = sorted({p for p in present if p is not None and p not in levels})
    return levels + extra


def crs_grade_of(data: Mapping[str, Any]) -> int:
    """The ASTCT CRS grade of an assessment: the stored derived grade, else derived now."""
    stored = data.get("grade")
    if isinstance(stored, int) and not isinstance(stored, bool):
        return stored
    try:
        return crs_grade(**data)
    except (TypeError, ValueError):  # an entry too incomplete to grade counts as no CRS
        return 0


def icans_grade_of(data: Mapping[str, Any]) -> int:
    """The ASTCT ICANS grade of an assessment: the stored derived grade, else derived now."""
    stored = data.get("grade")
    if isinstance(stored, int) and not isinstance(stored, bool):
        return stored
    try:
        score = data.get("ice_score")
        if not isinstance(score, int) or isinstance(score, bool):
            score = ice_score(**data)
        return icans_grade(**{**data, "ice_score": score})
    except (TypeError, ValueError):
        return 0


def ae_term(data: Mapping[str, Any]) -> str:
    """The AE term, with the free text of "Other, specify"."""
    term = str(data.get("term", ""))
    other = data.get("term_other")
    if term == "Other, specify" and isinstance(other, str) and other:
        return other
    return term


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


ROWS = "rows"
"""The name of a report's main table."""


@dataclass(frozen=True)
class ReportTable:
    """A computed report: its column order, its rows, and an optional summary.

    ``summary_columns`` names the summary's tables (lists of rows, e.g. ``dose_levels``)
    with their column order, so that each can be written as CSV like the rows.
    """

    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    summary_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def table_names(self) -> tuple[str, ...]:
        """``rows`` and the names of the summary's tables."""
        return (ROWS, *self.summary_columns)

    def table(self, name: str) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        """Columns and rows of one table by name; KeyError for an unknown name."""
        if name == ROWS:
            return self.columns, self.rows
        columns = self.summary_columns[name]
        rows: list[dict[str, Any]] = (self.summary or {}).get(name, [])
        return columns, rows
