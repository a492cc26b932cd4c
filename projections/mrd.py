"""MrdCourses: ctDNA course, clearance, molecular relapse and imaging recurrence per subject.

Population: subjects with a dose level (assigned at enrolment or given at infusion).
Definitions where PROTOCOL.md is silent:

- Resection date: ``surgery_history.resection_date``, else the eligibility form's
  ``r0_resection_date``.
- ``ctdna_course``: every live ctDNA result, by sample date: ``[date, result]``.
  Clearance, molecular relapse and lead time follow ``ecrf.clinical.mrd`` (positive at
  entry; the first clearance and the first relapse after it).
- ``imaging_recurrence_date``: the first imaging with ``recurrence`` true.
- ``recurrence_within_24m_of_resection``: the first recurrence, molecular relapse or
  imaging, is dated no later than the resection date plus ``settings.mrd.horizon_months``
  calendar months (24); false without recurrence; null without a resection date.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from ecrf.clinical.mrd import mrd_course
from ecrf.clinical.values import parse_day, study_zone
from projections.facts import (
    ReportTable,
    SubjectFacts,
    dose_level_of,
)

MRD_COLUMNS = (
    "subject_id",
    "dose_level",
    "resection_date",
    "ctdna_course",
    "clearance_date",
    "molecular_relapse_date",
    "lead_time_days",
    "imaging_recurrence_date",
    "recurrence_within_24m_of_resection",
)


# The forms behind the MRD table: resection, ctDNA results, imaging, dose level;
# their live entries are kept by `projections.clinical_facts`.
FORMS = frozenset({"cart_infusion", "surgery_history", "eligibility", "ctdna_result", "imaging"})


def add_months(day: date, months: int) -> date:
    """The same day ``months`` calendar months later (clamped to the month's end)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


def resection_date(subject: SubjectFacts) -> date | None:
    """The liver resection date (surgery history, else eligibility)."""
    for form, field in (
        ("surgery_history", "resection_date"),
        ("eligibility", "r0_resection_date"),
    ):
        for entry in subject.live(form):
            day = parse_day(entry.data.get(field))
            if day is not None:
                return day
    return None


def mrd_report(subjects: Sequence[SubjectFacts], study: Mapping[str, Any]) -> ReportTable:
    """One row per subject with a dose level: ctDNA course and recurrence dates."""
    zone = study_zone(study)
    horizon = int(study.get("settings", {}).get("mrd", {}).get("horizon_months", 24))
    rows: list[dict[str, Any]] = []
    for subject in subjects:
        level = dose_level_of(subject, zone)
        if level is None:
            continue
        results: list[tuple[date, str]] = []
        for entry in subject.live("ctdna_result"):
            day = parse_day(entry.data.get("sample_date"))
            if day is not None and entry.data.get("result") in ("detected", "not_detected"):
                results.append((day, str(entry.data["result"])))
        results.sort(key=lambda result: result[0])
        recurrences = [
            day
            for entry in subject.live("imaging")
            if entry.data.get("recurrence") is True
            and (day := parse_day(entry.data.get("imaging_date"))) is not None
        ]
        imaging = min(recurrences, default=None)
        course = mrd_course(
            [(day, result == "detected") for day, result in results],
            imaging_recurrence_date=imaging,
        )
        resected = resection_date(subject)
        first = min(
            (d for d in (course.molecular_relapse_date, imaging) if d is not None), default=None
        )
        within: bool | None = None
        if resected is not None:
            within = first is not None and first <= add_months(resected, horizon)
        rows.append(
            {
                "subject_id": subject.subject_id,
                "dose_level": level,
                "resection_date": _iso(resected),
                "ctdna_course": [[day.isoformat(), result] for day, result in results],
                "clearance_date": _iso(course.clearance_date),
                "molecular_relapse_date": _iso(course.molecular_relapse_date),
                "lead_time_days": course.lead_time_days,
                "imaging_recurrence_date": _iso(imaging),
                "recurrence_within_24m_of_resection": within,
            }
        )
    return ReportTable(MRD_COLUMNS, rows)
