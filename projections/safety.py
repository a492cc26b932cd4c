"""SafetyTables: TEAEs, CRS/ICANS, DLTs in days 0-28 after infusion, and RCL/ADA results.

Population: treated subjects (a live cart_infusion entry); RCL/ADA rows also cover subjects
who have a dose level from enrolment but no infusion yet. Study days count from the
infusion day (day 0) in the study's time zone; the window is the study setting
``safety.teae_window_days`` (0-28, both ends included).

Definitions where PROTOCOL.md is silent:

- TEAE: a live adverse_event whose onset day is inside the window. ``worst_grade`` is 0
  when a subject has none.
- CRS (ICANS likewise) is present on a day when an assessment dated that day has an ASTCT
  grade >= 1 (the stored derived grade, else derived from the components), or when an AE
  with the term "Cytokine release syndrome" ("Immune effector cell-associated
  neurotoxicity syndrome") has its onset that day. Only assessments and AE onsets inside
  the window count. Worst grade: the highest of those grades (an AE can carry grade 5).
  Onset day: the first such day. Resolution: the first grade-0 assessment after the last
  positive assessment and, for each such AE, its resolution date (the later of all of
  them). Duration days = resolution day - onset day; null while unresolved (no grade-0
  assessment after the last positive one, or an AE ongoing / without resolution date).
  No CRS: grade 0, onset and duration null.
- DLT: counts only signed dlt_assessment entries (a valid EntrySigned at the entry's
  current revision; a later correction invalidates it). Per subject the most recently
  signed assessment counts (the newest valid signature, by log position), the rule the
  dose-escalation engine applies (``ecrf.domain.escalation.signed_dlt_outcome``).
  Evaluable: ``evaluable`` is true, or ``dlt`` is true (a DLT makes a subject evaluable by
  definition). ``assessed`` counts treated subjects with a signed assessment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecrf.clinical.values import number, parse_day, study_zone
from projections.facts import (
    EntryFact,
    Infusion,
    ReportTable,
    SubjectFacts,
    ae_term,
    crs_grade_of,
    dose_level_of,
    dose_levels,
    icans_grade_of,
    infusion_of,
    study_day,
)

CRS_TERM = "Cytokine release syndrome"
ICANS_TERM = "Immune effector cell-associated neurotoxicity syndrome"
GRADES = ("1", "2", "3", "4", "5")

TEAE_COLUMNS = ("subject_id", "dose_level", "teae_count", "worst_grade", "serious_count")
TEAE_LEVEL_COLUMNS = ("dose_level", "treated", "with_teae", "grade_3_plus", "by_worst_grade")
TEAE_TERM_COLUMNS = (
    "dose_level",
    "term",
    "subjects",
    "events",
    "serious_events",
    "worst_grade",
    "grade_3_plus",
)
CRS_ICANS_COLUMNS = (
    "subject_id",
    "dose_level",
    "crs_worst_grade",
    "crs_onset_day",
    "crs_duration_days",
    "icans_worst_grade",
    "icans_onset_day",
    "icans_duration_days",
)
DLT_COLUMNS = ("dose_level", "treated", "assessed", "evaluable", "dlt", "subjects_with_dlt")
RCL_ADA_COLUMNS = (
    "subject_id",
    "dose_level",
    "test",
    "visit",
    "sample_date",
    "study_day",
    "result",
    "titre",
    "neutralizing",
    "entry_id",
)


# The forms behind the 28-day safety tables: infusion, AEs, CRS/ICANS, DLT, RCL, ADA;
# their live entries are kept by `projections.clinical_facts`.
FORMS = frozenset(
    {
        "cart_infusion",
        "adverse_event",
        "crs_assessment",
        "icans_assessment",
        "dlt_assessment",
        "rcl_test",
        "ada_test",
    }
)


@dataclass(frozen=True)
class _Treated:
    subject: SubjectFacts
    infusion: Infusion
    dose_level: str | None


def _treated(subjects: Sequence[SubjectFacts], study: Mapping[str, Any]) -> list[_Treated]:
    zone = study_zone(study)
    treated = []
    for subject in subjects:
        infusion = infusion_of(subject, zone)
        if infusion is not None:
            treated.append(_Treated(subject, infusion, dose_level_of(subject, zone)))
    return treated


def _window(study: Mapping[str, Any]) -> tuple[int, int]:
    low, high = study.get("settings", {}).get("safety", {}).get("teae_window_days", [0, 28])
    return int(low), int(high)


def _as_number(value: Any) -> Any:
    """The value itself when it is a finite number (ints stay ints), else None."""
    return value if number(value) is not None else None


def _grade(data: Mapping[str, Any]) -> int:
    value = number(data.get("grade"))
    return int(value) if value is not None else 0


def _teaes(person: _Treated, window: tuple[int, int]) -> list[Mapping[str, Any]]:
    low, high = window
    found = []
    for entry in person.subject.live("adverse_event"):
        day = study_day(parse_day(entry.data.get("onset_date")), person.infusion)
        if day is not None and low <= day <= high:
            found.append(entry.data)
    return found


@dataclass
class _TermCount:
    subjects: set[str] = field(default_factory=set)
    severe: set[str] = field(default_factory=set)
    events: int = 0
    serious: int = 0
    worst: int = 0

    def add(self, subject_id: str, ae: Mapping[str, Any]) -> None:
        grade = _grade(ae)
        self.subjects.add(subject_id)
        self.events += 1
        self.serious += ae.get("serious") is True
        self.worst = max(self.worst, grade)
        if grade >= 3:
            self.severe.add(subject_id)


def teae_report(subjects: Sequence[SubjectFacts], study: Mapping[str, Any]) -> ReportTable:
    """TEAEs per treated subject; summary per dose level and per dose level and term."""
    window = _window(study)
    rows: list[dict[str, Any]] = []
    terms: dict[tuple[str | None, str], _TermCount] = defaultdict(_TermCount)
    for person in _treated(subjects, study):
        teaes = _teaes(person, window)
        rows.append(
            {
                "subject_id": person.subject.subject_id,
                "dose_level": person.dose_level,
                "teae_count": len(teaes),
                "worst_grade": max((_grade(ae) for ae in teaes), default=0),
                "serious_count": sum(1 for ae in teaes if ae.get("serious") is True),
            }
        )
        for ae in teaes:
            terms[person.dose_level, ae_term(ae)].add(person.subject.subject_id, ae)
    levels = dose_levels(study, [r["dose_level"] for r in rows])
    by_level = []
    for level in levels:
        mine = [r for r in rows if r["dose_level"] == level]
        by_level.append(
            {
                "dose_level": level,
                "treated": len(mine),
                "with_teae": sum(1 for r in mine if r["teae_count"]),
                "grade_3_plus": sum(1 for r in mine if r["worst_grade"] >= 3),
                "by_worst_grade": {
                    grade: sum(1 for r in mine if str(r["worst_grade"]) == grade)
                    for grade in GRADES
                },
            }
        )
    order: dict[str | None, int] = {level: index for index, level in enumerate(levels)}
    by_term = [
        {
            "dose_level": level,
            "term": term,
            "subjects": len(count.subjects),
            "events": count.events,
            "serious_events": count.serious,
            "worst_grade": count.worst,
            "grade_3_plus": len(count.severe),
        }
        for (level, term), count in sorted(
            terms.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0][1])
        )
    ]
    return ReportTable(
        TEAE_COLUMNS,
        rows,
        {"dose_levels": by_level, "terms": by_term},
        {"dose_levels": TEAE_LEVEL_COLUMNS, "terms": TEAE_TERM_COLUMNS},
    )


@dataclass(frozen=True)
class Syndrome:
    """Worst grade, onset day and duration of CRS or ICANS in the window (0/None if none)."""

    worst_grade: int
    onset_day: int | None
    duration_days: int | None


def syndrome(
    assessments: Sequence[tuple[int, int]],
    adverse_events: Sequence[tuple[int, int, int | None]],
    window: tuple[int, int],
) -> Syndrome:
    """Summarise (day, grade) assessments and (onset day, grade, resolution day) AEs."""
    low, high = window
    positive = [(day, grade) for day, grade in assessments if grade >= 1 and low <= day <= high]
    events = [ae for ae in adverse_events if low <= ae[0] <= high]
    if not positive and not events:
        return Syndrome(0, None, None)
    worst = max([g for _, g in positive] + [g for _, g, _ in events])
    onset = min([d for d, _ in positive] + [d for d, _, _ in events])
    ends: list[int | None] = [resolved for _, _, resolved in events]
    if positive:
        last = max(day for day, _ in positive)
        resolution = None
        for day, grade in sorted(assessments):
            if day <= last:
                continue
            if grade == 0:
                resolution = day
                break
            # Still positive after the window: the in-window episode goes on.
            last = day
        ends.append(resolution)
    if any(end is None for end in ends):
        return Syndrome(worst, onset, None)
    return Syndrome(worst, onset, max(end for end in ends if end is not None) - onset)


def _syndrome_of(
    person: _Treated,
    form: str,
    term: str,
    grade_of: Callable[[Mapping[str, Any]], int],
    window: tuple[int, int],
) -> Syndrome:
    assessments = []
    for entry in person.subject.live(form):
        day = study_day(parse_day(entry.data.get("assessment_date")), person.infusion)
        if day is not None:
            assessments.append((day, int(grade_of(entry.data))))
    events = []
    for entry in person.subject.live("adverse_event"):
        if entry.data.get("term") != term:
            continue
        onset = study_day(parse_day(entry.data.get("onset_date")), person.infusion)
        if onset is None:
            continue
        resolved = None
        if entry.data.get("ongoing") is not True:
            resolved = study_day(parse_day(entry.data.get("resolution_date")), person.infusion)
        events.append((onset, _grade(entry.data), resolved))
    return syndrome(assessments, events, window)


def crs_icans_report(subjects: Sequence[SubjectFacts], study: Mapping[str, Any]) -> ReportTable:
    """CRS and ICANS per treated subject: worst grade, onset day, duration in days."""
    window = _window(study)
    rows: list[dict[str, Any]] = []
    for person in _treated(subjects, study):
        crs = _syndrome_of(person, "crs_assessment", CRS_TERM, crs_grade_of, window)
        icans = _syndrome_of(person, "icans_assessment", ICANS_TERM, icans_grade_of, window)
        rows.append(
            {
                "subject_id": person.subject.subject_id,
                "dose_level": person.dose_level,
                "crs_worst_grade": crs.worst_grade,
                "crs_onset_day": crs.onset_day,
                "crs_duration_days": crs.duration_days,
                "icans_worst_grade": icans.worst_grade,
                "icans_onset_day": icans.onset_day,
                "icans_duration_days": icans.duration_days,
            }
        )
    return ReportTable(CRS_ICANS_COLUMNS, rows)


def latest_signed(entries: Sequence[EntryFact]) -> EntryFact | None:
    """The entry whose valid signature is the newest (None when none is signed).

    Signatures are ordered by log position, which within one casebook is their time order
    too; facts without a position (built by hand) fall back to recording order.
    """
    signed = [e for e in entries if e.signed]
    return max(
        signed,
        key=lambda e: (-1 if e.signed_position is None else e.signed_position, e.order),
        default=None,
    )


def dlt_report(subjects: Sequence[SubjectFacts], study: Mapping[str, Any]) -> ReportTable:
    """Per dose level: treated, with a signed DLT assessment, evaluable, with a DLT."""
    treated = _treated(subjects, study)
    counts: dict[str | None, dict[str, Any]] = defaultdict(
        lambda: {"treated": 0, "assessed": 0, "evaluable": 0, "dlt": []}
    )
    for person in treated:
        level = counts[person.dose_level]
        level["treated"] += 1
        latest = latest_signed(person.subject.live("dlt_assessment"))
        if latest is None:
            continue
        data = latest.data
        level["assessed"] += 1
        if data.get("evaluable") is True or data.get("dlt") is True:
            level["evaluable"] += 1
        if data.get("dlt") is True:
            level["dlt"].append(person.subject.subject_id)
    rows = [
        {
            "dose_level": level,
            "treated": counts[level]["treated"],
            "assessed": counts[level]["assessed"],
            "evaluable": counts[level]["evaluable"],
            "dlt": len(counts[level]["dlt"]),
            "subjects_with_dlt": sorted(counts[level]["dlt"]),
        }
        for level in dose_levels(study, [p.dose_level for p in treated])
    ]
    return ReportTable(DLT_COLUMNS, rows)


def rcl_ada_report(subjects: Sequence[SubjectFacts], study: Mapping[str, Any]) -> ReportTable:
    """Every live RCL and ADA result of subjects with a dose level, by subject and date."""
    zone = study_zone(study)
    rows: list[dict[str, Any]] = []
    for subject in subjects:
        level = dose_level_of(subject, zone)
        if level is None:
            continue
        infusion = infusion_of(subject, zone)
        for test, form in (("rcl", "rcl_test"), ("ada", "ada_test")):
            for entry in subject.live(form):
                sampled = parse_day(entry.data.get("sample_date"))
                rows.append(
                    {
                        "subject_id": subject.subject_id,
                        "dose_level": level,
                        "test": test,
                        "visit": entry.visit,
                        "sample_date": sampled.isoformat() if sampled else None,
                        "study_day": study_day(sampled, infusion),
                        "result": entry.data.get("result"),
                        "titre": _as_number(entry.data.get("titre")),
                        "neutralizing": entry.data.get("neutralizing"),
                        "entry_id": entry.entry_id,
                    }
                )
    rows.sort(key=lambda r: (r["subject_id"], r["sample_date"] or "", r["test"]))
    return ReportTable(RCL_ADA_COLUMNS, rows)
