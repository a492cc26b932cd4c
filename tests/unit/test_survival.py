"""Kaplan-Meier for recurrence-free survival.

Sources: PROTOCOL.md "Kaplan-Meier" (check value: S(12) = 0.6857143, S(24) = 0.3428571);
Kaplan & Meier, JASA 1958 (product limit; events before censorings at tied times);
Greenwood's variance on the log(-log S) scale ("exponential Greenwood", Kalbfleisch &
Prentice 2002), which is lifelines' default and R ``survfit(conf.type = "log-log")``;
lifelines' ``qth_survival_time`` for the median (first time S(t) <= 0.5).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecrf.clinical.survival import CurvePoint, kaplan_meier

MONTHS = [5.1, 11.0, 8.0, 14.2, 24.0, 24.0, 24.0]
EVENTS = [1, 1, 0, 1, 0, 0, 1]
Z = 1.959963984540054


def loglog_interval(survival: float, greenwood_sum: float) -> tuple[float, float]:
    """Greenwood, log-log: S ** exp(-/+ z * sqrt(V) / ln S) with V = sum d / (n (n - d))."""
    spread = Z * math.sqrt(greenwood_sum) / math.log(survival)
    return survival ** math.exp(-spread), survival ** math.exp(spread)


def product_limit(times: list[float], events: list[int], t: float) -> float:
    survival = 1.0
    for u in sorted({time for time, e in zip(times, events, strict=True) if e and time <= t}):
        at_risk = sum(1 for time in times if time >= u)
        died = sum(1 for time, e in zip(times, events, strict=True) if e and time == u)
        survival *= 1 - died / at_risk
    return survival


# --- the protocol's check value --------------------------------------------------------------


def test_check_value() -> None:
    km = kaplan_meier(MONTHS, EVENTS)
    assert km.survival_at(12) == pytest.approx(0.6857143, abs=1e-6)
    assert km.survival_at(24) == pytest.approx(0.3428571, abs=1e-6)


def test_an_event_exactly_at_24_months_counts_in_the_2_year_rate() -> None:
    km = kaplan_meier(MONTHS, EVENTS)
    assert km.survival_at(23.999) == pytest.approx(0.5142857, abs=1e-6)
    assert km.survival_at(24) == pytest.approx(0.3428571, abs=1e-6)


def test_at_tied_times_events_come_before_censorings() -> None:
    # At 24 months 3 are at risk: 1 event then 2 censorings gives x 2/3; censoring first
    # would leave 1 at risk and S(24) = 0.
    km = kaplan_meier(MONTHS, EVENTS)
    assert km.survival_at(24) == pytest.approx(km.survival_at(14.2) * 2 / 3)
    assert km.survival_at(24) > 0


def test_estimate_stays_flat_after_the_last_time() -> None:
    km = kaplan_meier(MONTHS, EVENTS)
    assert km.survival_at(36) == km.survival_at(24)
    assert km.at_risk_at(36) == 0


def test_booleans_and_integers_mean_the_same() -> None:
    as_bools = kaplan_meier(MONTHS, [bool(e) for e in EVENTS])
    assert as_bools == kaplan_meier(MONTHS, EVENTS)


# --- confidence interval: Greenwood, log-log -------------------------------------------------


def test_confidence_interval_is_greenwood_log_log() -> None:
    km = kaplan_meier(MONTHS, EVENTS)
    greenwood_12 = 1 / (7 * 6) + 1 / (5 * 4)
    assert km.confidence_interval_at(12) == pytest.approx(
        loglog_interval(6 / 7 * 4 / 5, greenwood_12), abs=1e-6
    )
    greenwood_24 = greenwood_12 + 1 / (4 * 3) + 1 / (3 * 2)
    assert km.confidence_interval_at(24) == pytest.approx(
        loglog_interval(6 / 7 * 4 / 5 * 3 / 4 * 2 / 3, greenwood_24), abs=1e-6
    )


def test_confidence_interval_before_any_event_is_degenerate() -> None:
    km = kaplan_meier(MONTHS, EVENTS)
    assert km.confidence_interval_at(0) == (1.0, 1.0)
    assert km.confidence_interval_at(5.0) == (1.0, 1.0)


# --- median ------------------------------------------------------------------------------------


def test_median_is_the_first_time_survival_reaches_half() -> None:
    assert kaplan_meier(MONTHS, EVENTS).median() == 24.0
    # S = 0.75, 0.5, 0.25, 0: the curve reaches 0.5 exactly at 2 (lifelines' rule).
    assert kaplan_meier([1, 2, 3, 4], [1, 1, 1, 1]).median() == 2.0


def test_median_not_reached_is_none() -> None:
    assert kaplan_meier([3, 6, 12, 24], [1, 0, 0, 0]).median() is None


# --- all censored -----------------------------------------------------------------------------


def test_all_censored_stays_at_one() -> None:
    km = kaplan_meier([6.0, 12.0, 24.0], [0, 0, 0])
    assert km.survival_at(24) == 1.0
    assert km.confidence_interval_at(24) == (1.0, 1.0)
    assert km.median() is None
    assert [p.survival for p in km.curve()] == [1.0, 1.0, 1.0, 1.0]


# --- curve and numbers at risk ------------------------------------------------------------------


def test_curve_has_a_point_at_0_and_at_each_distinct_time() -> None:
    curve = kaplan_meier(MONTHS, EVENTS).curve()
    assert [p.time for p in curve] == [0.0, 5.1, 8.0, 11.0, 14.2, 24.0]
    assert [p.at_risk for p in curve] == [7, 7, 6, 5, 4, 3]
    assert curve[0] == CurvePoint(0.0, 1.0, 1.0, 1.0, 7)
    assert curve[-1].survival == pytest.approx(0.3428571, abs=1e-6)


def test_at_risk_counts_everyone_still_followed_at_t() -> None:
    km = kaplan_meier(MONTHS, EVENTS)
    assert km.at_risk_at(0) == 7
    assert km.at_risk_at(12) == 4
    assert km.at_risk_at(24) == 3
    assert km.at_risk_at(24.01) == 0


def test_an_event_at_time_0_drops_the_curve_at_0() -> None:
    km = kaplan_meier([0.0, 2.0, 3.0], [1, 0, 1])
    assert km.survival_at(0) == pytest.approx(2 / 3)
    assert km.curve()[0].time == 0.0


@given(
    st.lists(st.tuples(st.integers(0, 36).map(float), st.integers(0, 1)), min_size=1, max_size=25),
    st.floats(min_value=0, max_value=40),
)
def test_agrees_with_the_product_limit_and_its_interval_brackets_it(
    subjects: list[tuple[float, int]], t: float
) -> None:
    times = [time for time, _ in subjects]
    events = [event for _, event in subjects]
    km = kaplan_meier(times, events)
    survival = km.survival_at(t)
    assert survival == pytest.approx(product_limit(times, events, t))
    lower, upper = km.confidence_interval_at(t)
    assert lower - 1e-12 <= survival <= upper + 1e-12
    assert km.survival_at(t + 1) <= survival


# --- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "events", "message"),
    [
        ([1.0, 2.0], [1], "differ in length"),
        ([], [], "at least one"),
        ([-1.0, 2.0], [1, 0], "times"),
        ([math.nan, 2.0], [1, 0], "times"),
        ([1.0, 2.0], [1, 2], "events"),
    ],
)
def test_rejects_bad_input(times: list[float], events: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kaplan_meier(times, events)


@pytest.mark.parametrize("t", [-0.5, math.nan])
def test_rejects_a_bad_query_time(t: float) -> None:
    km = kaplan_meier(MONTHS, EVENTS)
    with pytest.raises(ValueError, match="t:"):
        km.survival_at(t)
    with pytest.raises(ValueError, match="t:"):
        km.at_risk_at(t)
