"""RecurrenceFreeSurvival: time from infusion to recurrence or death, and its KM estimate.

Population: treated subjects (a live cart_infusion entry). Time origin: the infusion day
in the study's time zone; months = days / ``settings.rfs.days_per_month`` (30.4375).
Definitions where PROTOCOL.md is silent:

- Event: the first imaging dated on or after the infusion day with ``recurrence`` true
  (imaging-confirmed), or death (``end_of_study.death_date``, or its ``end_date`` when the
  reason is death), whichever is first; on the same day it is called a recurrence.
- Censoring: at the last imaging on or after the infusion day without recurrence that is
  adequate (``adequate`` not false). A subject with neither is censored at time 0, so they
  count among those at risk at the start only.
- Summary: the Kaplan-Meier curve (``ecrf.clinical.survival``: lifelines, Greenwood
  variance, log-log 95% CI) and its value at ``settings.rfs.horizon_months`` (24).
  ``followed_to_horizon`` says whether anyone's follow-up (event or censoring time)
  reaches the horizon. When it does not, lifelines carries the last value of the curve
  forward, so ``rfs_24m`` is that last value, not an estimate at the horizon; it is kept
  (API.md: numbers are present and unrounded) and the flag tells a reader to discount it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from ecrf.clinical.survival import kaplan_meier
from ecrf.clinical.values import finite, parse_day, study_zone
from projections.facts import (
    ReportTable,
    SubjectFacts,
    dose_level_of,
    infusion_of,
)

RFS_COLUMNS = (
    "subject_id",
    "dose_level",
    "time_months",
    "event",
    "event_type",
    "infusion_date",
    "end_date",
)
CURVE_COLUMNS = ("time", "survival", "lower", "upper", "at_risk")


# The forms behind RFS: infusion, imaging, end of study (death);
# their live entries are kept by `projections.clinical_facts`.
FORMS = frozenset({"cart_infusion", "imaging", "end_of_study"})


def _death(subject: SubjectFacts) -> date | None:
    for entry in subject.live("end_of_study"):
        day = parse_day(entry.data.get("death_date"))
        if day is None and entry.data.get("reason") == "death":
            day = parse_day(entry.data.get("end_date"))
        if day is not None:
            return day
    return None


def rfs_report(subjects: Sequence[SubjectFacts], study: Mapping[str, Any]) -> ReportTable:
    """RFS time and event per treated subject; KM curve and the horizon estimate."""
    settings = study.get("settings", {}).get("rfs", {})
    days_per_month = float(settings.get("days_per_month", 30.4375))
    horizon = float(settings.get("horizon_months", 24))
    zone = study_zone(study)
    rows: list[dict[str, Any]] = []
    for subject in subjects:
        infusion = infusion_of(subject, zone)
        if infusion is None:
            continue
        recurrences, clear = [], []
        for entry in subject.live("imaging"):
            day = parse_day(entry.data.get("imaging_date"))
            if day is None or day < infusion.day:
                continue
            if entry.data.get("recurrence") is True:
                recurrences.append(day)
            elif entry.data.get("adequate") is not False:
                clear.append(day)
        events = [(d, "recurrence") for d in recurrences]
        death = _death(subject)
        if death is not None and death >= infusion.day:
            events.append((death, "death"))
        if events:
            end, kind = min(events, key=lambda item: (item[0], item[1] != "recurrence"))
            event: int = 1
        else:
            end, kind, event = max(clear, default=infusion.day), None, 0
        rows.append(
            {
                "subject_id": subject.subject_id,
                "dose_level": dose_level_of(subject, zone),
                "time_months": (end - infusion.day).days / days_per_month,
                "event": event,
                "event_type": kind,
                "infusion_date": infusion.day.isoformat(),
                "end_date": end.isoformat(),
            }
        )
    summary: dict[str, Any] = {
        "horizon_months": horizon,
        "followed_to_horizon": any(r["time_months"] >= horizon for r in rows),
        "curve": [],
        "rfs_24m": {"estimate": None, "lower": None, "upper": None},
        "median_months": None,
    }
    if rows:
        fit = kaplan_meier([r["time_months"] for r in rows], [r["event"] for r in rows])
        summary["curve"] = [
            {
                "time": point.time,
                "survival": finite(point.survival),
                "lower": finite(point.lower),
                "upper": finite(point.upper),
                "at_risk": point.at_risk,
            }
            for point in fit.curve()
        ]
        lower, upper = fit.confidence_interval_at(horizon)
        summary["rfs_24m"] = {
            "estimate": finite(fit.survival_at(horizon)),
            "lower": finite(lower),
            "upper": finite(upper),
        }
        summary["median_months"] = fit.median()
    return ReportTable(RFS_COLUMNS, rows, summary, {"curve": CURVE_COLUMNS})
