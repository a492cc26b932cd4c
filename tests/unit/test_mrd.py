"""ctDNA MRD course.

Source: PROTOCOL.md "ctDNA MRD" (patients positive at entry; clearance = first negative
after positive; molecular relapse = positive after clearance; lead time = imaging recurrence
date - first positive after clearance).
"""

from __future__ import annotations

from datetime import date, datetime

import pytest

from ecrf.clinical.mrd import MrdCourse, MrdEpisode, mrd_course

ENTRY = date(2025, 1, 6)
M1 = date(2025, 2, 3)
M3 = date(2025, 4, 7)
M6 = date(2025, 7, 7)
M9 = date(2025, 10, 6)
M12 = date(2026, 1, 5)


def test_clearance_relapse_and_lead_time() -> None:
    course = mrd_course(
        [(ENTRY, True), (M1, True), (M3, False), (M6, False), (M9, True), (M12, True)],
        imaging_recurrence_date=date(2026, 1, 20),
    )
    assert course == MrdCourse(
        clearance_date=M3,
        molecular_relapse_date=M9,
        lead_time_days=(date(2026, 1, 20) - M9).days,
        episodes=(MrdEpisode(M3, M9),),
    )
    assert course.lead_time_days == 106


def test_never_cleared_has_no_relapse_and_no_lead_time() -> None:
    course = mrd_course([(ENTRY, True), (M3, True)], imaging_recurrence_date=M6)
    assert course == MrdCourse(None, None, None, ())


def test_cleared_without_relapse() -> None:
    course = mrd_course([(ENTRY, True), (M3, False), (M6, False)], imaging_recurrence_date=M12)
    assert course == MrdCourse(M3, None, None, (MrdEpisode(M3, None),))


def test_no_imaging_recurrence_means_no_lead_time() -> None:
    course = mrd_course([(ENTRY, True), (M3, False), (M6, True)])
    assert course.molecular_relapse_date == M6
    assert course.lead_time_days is None


def test_lead_time_is_negative_when_imaging_came_first() -> None:
    course = mrd_course([(ENTRY, True), (M3, False), (M9, True)], imaging_recurrence_date=M6)
    assert course.lead_time_days == (M6 - M9).days < 0


def test_repeated_clearance_and_relapse_report_the_first_of_each() -> None:
    results = [
        (ENTRY, True),
        (M1, False),
        (M3, True),
        (M6, False),
        (M9, False),
        (M12, True),
    ]
    course = mrd_course(results, imaging_recurrence_date=date(2026, 2, 2))
    assert course.clearance_date == M1
    assert course.molecular_relapse_date == M3
    assert course.lead_time_days == (date(2026, 2, 2) - M3).days
    assert course.episodes == (MrdEpisode(M1, M3), MrdEpisode(M6, M12))


def test_patients_are_positive_at_entry_so_a_first_negative_is_a_clearance() -> None:
    course = mrd_course([(M1, False), (M3, True)])
    assert (course.clearance_date, course.molecular_relapse_date) == (M1, M3)


def test_without_positive_at_entry_a_negative_before_any_positive_is_no_clearance() -> None:
    course = mrd_course([(M1, False), (M3, True), (M6, False)], positive_at_entry=False)
    assert course.episodes == (MrdEpisode(M6, None),)


def test_one_positive_on_a_day_makes_the_day_positive() -> None:
    course = mrd_course([(ENTRY, True), (M3, False), (M6, False), (M6, True)])
    assert course == MrdCourse(M3, M6, None, (MrdEpisode(M3, M6),))


def test_no_results() -> None:
    assert mrd_course([]) == MrdCourse(None, None, None, ())


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([(M3, True), (M1, False)], "chronological"),
        ([(M1, "detected")], r"results\[0\]"),
        ([(datetime(2025, 2, 3, 9, 0), True)], r"results\[0\]"),
        ([("2025-02-03", True)], r"results\[0\]"),
    ],
)
def test_rejects_bad_results(results: list[tuple[object, object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mrd_course(results)  # type: ignore[arg-type]


def test_rejects_a_bad_imaging_date() -> None:
    with pytest.raises(ValueError, match="imaging_recurrence_date"):
        mrd_course([(ENTRY, True)], imaging_recurrence_date="2026-01-20")  # type: ignore[arg-type]
