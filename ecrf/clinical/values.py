"""Reading form values as the clinical rules need them: study time, dates, instants, numbers.

Form data is JSON validated by its schema, but a report or an export still reads it
defensively: a value of the wrong type (an older form version, a field left out) reads as
None instead of failing the whole report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def study_zone(study: Mapping[str, Any]) -> tzinfo:
    """The study's time zone: clinical days are calendar days there."""
    try:
        return ZoneInfo(str(study.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def parse_day(value: Any) -> date | None:
    """An ISO date field, or None when absent or not a date."""
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def parse_instant(value: Any, zone: tzinfo) -> datetime | None:
    """An ISO date-time field as an aware instant (a zoneless one is taken as study time)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def number(value: Any) -> float | None:
    """A finite JSON number as float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def finite(value: float | None) -> float | None:
    """None for NaN and infinities, which JSON cannot carry."""
    return value if value is not None and math.isfinite(value) else None
