"""PatientTimeline: one subject's clinical course, dated and placed on the study-day axis.

Study day counts from the infusion day (day 0; days before it are negative), in the
study's time zone. Rows: consent, resection, enrolment, ctDNA results, leukapheresis,
lymphodepletion, the infusion and its dose, adverse events (onset, and resolution as its
own row), CRS and ICANS days with a grade >= 1, PK samples, imaging (a recurrence is its
own category), the DLT assessment, and the end of study (withdrawal, death or other).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime, tzinfo
from typing import Any

from ecrf.clinical.values import number, parse_day, parse_instant, study_zone
from projections.facts import (
    EntryFact,
    Infusion,
    ReportTable,
    SubjectFacts,
    ae_term,
    crs_grade_of,
    dose_level_of,
    icans_grade_of,
    infusion_of,
    study_day,
)

COLUMNS = ("date", "study_day", "category", "what", "form", "visit", "entry_id")

# Where several things share a date, they are listed in the order a course runs.
_CATEGORY_ORDER = (
    "consent",
    "resection",
    "enrolment",
    "ctdna",
    "apheresis",
    "lymphodepletion",
    "infusion",
    "pk",
    "crs",
    "icans",
    "adverse_event",
    "adverse_event_resolved",
    "imaging",
    "recurrence",
    "dlt",
    "end_of_study",
    "withdrawal",
    "death",
)


# The forms a patient timeline is made of;
# their live entries are kept by `projections.clinical_facts`.
FORMS = frozenset(
    {
        "informed_consent",
        "surgery_history",
        "ctdna_result",
        "leukapheresis",
        "lymphodepletion",
        "cart_infusion",
        "adverse_event",
        "crs_assessment",
        "icans_assessment",
        "pk_sample",
        "imaging",
        "dlt_assessment",
        "end_of_study",
    }
)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _items(entry: EntryFact, zone: tzinfo) -> list[tuple[date, str, str]]:
    """(date, category, what) rows of one entry."""
    return _DESCRIBE.get(entry.form, _nothing)(entry.data, zone)


def _nothing(_: Mapping[str, Any], __: tzinfo) -> list[tuple[date, str, str]]:
    return []


def _dated(value: Any, category: str, what: str) -> list[tuple[date, str, str]]:
    day = parse_day(value)
    return [(day, category, what)] if day is not None else []


def _consent(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    version = data.get("icf_version")
    what = "Informed consent" + (f" (ICF v{version})" if version else "")
    if data.get("reconsent"):
        what = "Re-consent" + (f" (ICF v{version})" if version else "")
    return _dated(data.get("consent_date"), "consent", what)


def _resection(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    margin = (
        "R0" if data.get("r0") is True else str(data.get("residual_classification") or "not R0")
    )
    lesions = data.get("liver_lesions")
    what = f"Liver metastasis resection ({margin}"
    what += f", {lesions} lesions)" if lesions is not None else ")"
    return _dated(data.get("resection_date"), "resection", what)


def _ctdna(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    detected = data.get("result") == "detected"
    what = "ctDNA detected" if detected else "ctDNA not detected"
    level = number(data.get("mtm_per_ml"))
    if detected and level is not None:
        what += f" ({_fmt(level)} MTM/mL)"
    return _dated(data.get("sample_date"), "ctdna", what)


def _apheresis(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    what = "Leukapheresis" + ("" if data.get("completed", True) else " (incomplete)")
    return _dated(data.get("procedure_date"), "apheresis", what)


def _lymphodepletion(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    regimen = str(data.get("regimen") or "")
    if regimen == "other" and data.get("regimen_other"):
        regimen = str(data["regimen_other"])
    until = parse_day(data.get("end_date"))
    what = f"Lymphodepletion ({regimen})" if regimen else "Lymphodepletion"
    if until is not None:
        what += f" until {until.isoformat()}"
    return _dated(data.get("start_date"), "lymphodepletion", what)


def _infusion(data: Mapping[str, Any], zone: tzinfo) -> list[tuple[date, str, str]]:
    moment = parse_instant(data.get("infusion_datetime"), zone)
    if moment is None:
        return []
    what = f"CAR-T infusion, {data.get('dose_level', 'dose level unknown')}"
    cells = number(data.get("total_car_t_cells"))
    per_kg = number(data.get("cells_per_kg"))
    if cells is not None:
        what += f": {_fmt(cells)} CAR-T cells"
        if per_kg is not None:
            what += f" ({_fmt(per_kg)}/kg)"
    if data.get("infusion_completed") is False:
        what += " (incomplete)"
    return [(moment.astimezone(zone).date(), "infusion", what)]


def _adverse_event(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    term = ae_term(data)
    grade = data.get("grade")
    serious = ", serious" if data.get("serious") is True else ""
    rows = _dated(
        data.get("onset_date"), "adverse_event", f"AE onset: {term} (grade {grade}{serious})"
    )
    if data.get("ongoing") is not True:
        rows += _dated(
            data.get("resolution_date"), "adverse_event_resolved", f"AE resolved: {term}"
        )
    return rows


def _crs(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    grade = crs_grade_of(data)
    return _dated(data.get("assessment_date"), "crs", f"CRS grade {grade}") if grade else []


def _icans(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    grade = icans_grade_of(data)
    return _dated(data.get("assessment_date"), "icans", f"ICANS grade {grade}") if grade else []


def _pk(data: Mapping[str, Any], zone: tzinfo) -> list[tuple[date, str, str]]:
    moment = parse_instant(data.get("sample_datetime"), zone)
    if moment is None:
        return []
    parts = []
    for label, value_field, blq_field, unit in (
        ("flow", "flow_cells_per_ul", "flow_blq", "cells/µL"),
        ("qPCR", "qpcr_copies_per_ug", "qpcr_blq", "copies/µg"),
    ):
        if data.get(blq_field) is True:
            parts.append(f"{label} BLQ")
        elif number(data.get(value_field)) is not None:
            parts.append(f"{label} {_fmt(data[value_field])} {unit}")
    nominal = data.get("nominal_day")
    what = "PK sample" + (f" (nominal day {_fmt(nominal)})" if nominal is not None else "")
    if parts:
        what += ": " + ", ".join(parts)
    return [(moment.astimezone(zone).date(), "pk", what)]


def _imaging(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    modality = data.get("modality", "imaging")
    if data.get("recurrence") is True:
        sites = data.get("sites") or []
        where = f": {', '.join(map(str, sites))}" if sites else ""
        return _dated(data.get("imaging_date"), "recurrence", f"Recurrence on {modality}{where}")
    return _dated(data.get("imaging_date"), "imaging", f"{modality}: no recurrence")


def _dlt(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    if data.get("evaluable") is False and data.get("dlt") is not True:
        what = "DLT assessment: not evaluable"
    else:
        what = "DLT assessment: DLT" if data.get("dlt") is True else "DLT assessment: no DLT"
    return _dated(data.get("assessment_date"), "dlt", what)


def _end_of_study(data: Mapping[str, Any], _: tzinfo) -> list[tuple[date, str, str]]:
    reason = data.get("reason")
    if reason == "death" or data.get("death_date"):
        cause = data.get("death_cause")
        what = "Death" + (f" ({str(cause).replace('_', ' ')})" if cause else "")
        return _dated(data.get("death_date") or data.get("end_date"), "death", what)
    if reason == "withdrawal":
        by = data.get("withdrawal_by")
        return _dated(
            data.get("end_date"), "withdrawal", "Withdrawal" + (f" by {by}" if by else "")
        )
    what = f"End of study ({str(reason or 'unknown').replace('_', ' ')})"
    return _dated(data.get("end_date"), "end_of_study", what)


_DESCRIBE: dict[str, Callable[[Mapping[str, Any], tzinfo], list[tuple[date, str, str]]]] = {
    "informed_consent": _consent,
    "surgery_history": _resection,
    "ctdna_result": _ctdna,
    "leukapheresis": _apheresis,
    "lymphodepletion": _lymphodepletion,
    "cart_infusion": _infusion,
    "adverse_event": _adverse_event,
    "crs_assessment": _crs,
    "icans_assessment": _icans,
    "pk_sample": _pk,
    "imaging": _imaging,
    "dlt_assessment": _dlt,
    "end_of_study": _end_of_study,
}


def _row(
    day: date, category: str, what: str, infusion: Infusion | None, entry: EntryFact | None
) -> dict[str, Any]:
    return {
        "date": day.isoformat(),
        "study_day": study_day(day, infusion),
        "category": category,
        "what": what,
        "form": entry.form if entry else None,
        "visit": entry.visit if entry else None,
        "entry_id": entry.entry_id if entry else None,
    }


def timeline_report(subject: SubjectFacts, study: Mapping[str, Any]) -> ReportTable:
    """The subject's timeline, oldest first; ``summary`` names the subject, dose and day 0."""
    zone = study_zone(study)
    infusion = infusion_of(subject, zone)
    # Sorted by date, then by where the category sits in a course, then by entry order.
    keyed: list[tuple[tuple[date, int, int], dict[str, Any]]] = []
    for entry in subject.entries:
        for day, category, what in _items(entry, zone):
            key = (day, _CATEGORY_ORDER.index(category), entry.order)
            keyed.append((key, _row(day, category, what, infusion, entry)))
    if subject.enrolled_at is not None:
        day = datetime.fromisoformat(subject.enrolled_at).astimezone(zone).date()
        what = f"Enrolled at {subject.enrolled_dose_level or 'a dose level to be assigned'}"
        key = (day, _CATEGORY_ORDER.index("enrolment"), 0)
        keyed.append((key, _row(day, "enrolment", what, infusion, None)))
    keyed.sort(key=lambda item: item[0])
    return ReportTable(
        columns=COLUMNS,
        rows=[row for _, row in keyed],
        summary={
            "subject_id": subject.subject_id,
            "site": subject.site,
            "dose_level": dose_level_of(subject, zone),
            "infusion_date": infusion.day.isoformat() if infusion is not None else None,
        },
    )
