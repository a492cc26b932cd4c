"""Reading form values for reports and exports: wrong types read as None, never fail."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ecrf.clinical.values import finite, number, parse_day, parse_instant, study_zone


def test_study_zone_falls_back_to_utc() -> None:
    assert study_zone({"timezone": "Asia/Shanghai"}) == ZoneInfo("Asia/Shanghai")
    assert study_zone({}) == ZoneInfo("UTC")
    assert study_zone({"timezone": "Mars/Olympus_Mons"}) == ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01", date(2024, 3, 1)),
        ("2024-03-01T23:30:00Z", date(2024, 3, 1)),
        ("2024-02-30", None),
        (20240301, None),
        (None, None),
    ],
)
def test_parse_day(value: object, expected: date | None) -> None:
    assert parse_day(value) == expected


def test_parse_instant_takes_a_zoneless_time_as_study_time() -> None:
    zone = ZoneInfo("Asia/Shanghai")
    assert parse_instant("2024-03-01T08:00:00Z", zone) == datetime(2024, 3, 1, 8, tzinfo=UTC)
    local = parse_instant("2024-03-01T08:00:00", zone)
    assert local is not None
    assert local.utcoffset() == timedelta(hours=8)
    assert parse_instant("yesterday", zone) is None
    assert parse_instant(1.5, zone) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3.0), (2.5, 2.5), (True, None), ("3", None), (float("nan"), None), (float("inf"), None)],
)
def test_number_is_a_finite_json_number(value: object, expected: float | None) -> None:
    assert number(value) == expected


def test_finite_drops_what_json_cannot_carry() -> None:
    assert finite(0.25) == 0.25
    assert finite(None) is None
    assert finite(float("nan")) is None
