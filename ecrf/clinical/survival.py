"""Kaplan-Meier estimates for recurrence-free survival, computed by lifelines.

lifelines' ``KaplanMeierFitter`` gives the product-limit estimate (events before censorings
at tied times, S right-continuous) and a 95% confidence interval from Greenwood's variance
on the log(-log S) scale, the same as R ``survfit(conf.type = "log-log")``. This module only
validates input and reads that fit as a step function, so a report needs no pandas.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05


@dataclass(frozen=True)
class CurvePoint:
    """The estimate from one distinct time on, with its 95% CI and the number at risk there."""

    time: float
    survival: float
    lower: float
    upper: float
    at_risk: int


@dataclass(frozen=True)
class KaplanMeier:
    """A fitted product-limit curve, read as a right-continuous step function."""

    times: tuple[float, ...]
    events: tuple[bool, ...]
    points: tuple[CurvePoint, ...]
    median_time: float | None

    def survival_at(self, t: float) -> float:
        """S(t); an event exactly at t counts, and beyond the last time S stays flat (lifelines)."""
        return self._point_at(t).survival

    def confidence_interval_at(self, t: float) -> tuple[float, float]:
        """95% CI of S(t), Greenwood variance with the log-log transform."""
        point = self._point_at(t)
        return point.lower, point.upper

    def median(self) -> float | None:
        """First time S(t) <= 0.5 (lifelines' rule); None if the curve never gets there."""
        return self.median_time

    def at_risk_at(self, t: float) -> int:
        """Subjects still followed just before t (follow-up time >= t)."""
        _check_time(t)
        return sum(1 for time in self.times if time >= t)

    def curve(self) -> list[CurvePoint]:
        """One point at 0 and at each distinct observed time, for tables and plots."""
        return list(self.points)

    def _point_at(self, t: float) -> CurvePoint:
        _check_time(t)
        index = bisect.bisect_right([p.time for p in self.points], t) - 1
        return self.points[index]


def kaplan_meier(times: Sequence[float], events: Sequence[int]) -> KaplanMeier:
    """Fit Kaplan-Meier to follow-up times and event flags (1/True = event, 0/False = censored)."""
    if len(times) != len(events):
        raise ValueError(f"times and events differ in length ({len(times)} != {len(events)})")
    if len(times) == 0:
        raise ValueError("times: at least one subject is needed")
    if not all(math.isfinite(t) and t >= 0 for t in times):
        raise ValueError("times: every time must be finite and >= 0")
    if not all(e in (0, 1) for e in events):
        raise ValueError("events: every flag must be 0/1 or a boolean")
    durations = [float(t) for t in times]
    observed = [bool(e) for e in events]

    # Imported here: lifelines (with pandas and scipy) takes about a second to import,
    # which every server start and CLI call would otherwise pay.
    from lifelines import KaplanMeierFitter

    fitter = KaplanMeierFitter(alpha=ALPHA).fit(durations, event_observed=observed)
    timeline = [float(t) for t in fitter.survival_function_.index]
    survival = [float(s) for s in fitter.survival_function_.iloc[:, 0]]
    bounds = fitter.confidence_interval_survival_function_
    lower = [float(v) for v in bounds.iloc[:, 0]]
    upper = [float(v) for v in bounds.iloc[:, 1]]
    points = [
        CurvePoint(t, s, lo, hi, sum(1 for d in durations if d >= t))
        for t, s, lo, hi in zip(timeline, survival, lower, upper, strict=True)
    ]
    if points[0].time > 0:
        points.insert(0, CurvePoint(0.0, 1.0, 1.0, 1.0, len(durations)))
    median = float(fitter.median_survival_time_)
    return KaplanMeier(
        times=tuple(durations),
        events=tuple(observed),
        points=tuple(points),
        median_time=median if math.isfinite(median) else None,
    )


def _check_time(t: float) -> None:
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"t: expected a finite time >= 0, got {t!r}")
