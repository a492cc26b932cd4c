"""Non-compartmental analysis of CAR-T cellular kinetics, following the R package PKNCA.

Times are days from infusion (the dose, day 0); values are levels with BLQ entered as 0.
Rules and where they come from (PKNCA, humanpred/pknca):

- BLQ handling is PKNCA's default ``conc.blq`` (``clean.conc.blq``): leading BLQ kept,
  BLQ between the first and last quantifiable samples dropped, trailing BLQ kept.
- Cmax is the highest value and Tmax the first time it occurs (``first.tmax = TRUE``);
  Tlast is the last time with a quantifiable value.
- Segments are integrated as in ``choose_interval_method``/``auc_integrate``: with
  ``linear-up/log-down`` ("lin up/log down") a segment falling to a positive value uses the
  log trapezoid, every other segment (rising, flat, or touching 0) the linear one.
- Everything after Tlast counts as 0 (PKNCA's ``auc.type = "AUClast"``), so trailing BLQ
  never add area. AUC over an interval is PKNCA's ``aucint.last`` (CDISC ``AUCINT``): an
  end inside the data is interpolated with the segment's own method (``interpolate.conc``:
  log between falling positive values); an end beyond Tlast, even beyond the last sample,
  adds nothing (``extrapolate.conc`` gives 0 after Tlast for AUClast).
- Before the first sample the level is 0 (PKNCA's ``conc.origin = 0``), and a sample at or
  before day 0 is pre-dose and counts as 0 (protocol: no CAR-T cells before infusion).

Differences from PKNCA, chosen for this study: AUClast runs from the infusion (day 0) to the
overall Tlast rather than within each interval (the protocol's window is "from infusion");
and with no quantifiable sample every result is None, where PKNCA reports AUC 0.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import NamedTuple

LINEAR = "linear"
LINEAR_UP_LOG_DOWN = "linear-up/log-down"
METHODS = (LINEAR, LINEAR_UP_LOG_DOWN)


@dataclass(frozen=True)
class NcaResult:
    """Cmax, Tmax, Tlast, AUClast and AUC over the interval; all None if nothing quantifiable."""

    cmax: float | None
    tmax: float | None
    tlast: float | None
    auc_last: float | None
    auc_interval: float | None


def nca(
    times: Sequence[float],
    values: Sequence[float],
    *,
    method: str = LINEAR_UP_LOG_DOWN,
    interval: tuple[float, float] = (0.0, 28.0),
) -> NcaResult:
    """PKNCA-style NCA of one profile (times in days from infusion, BLQ as 0)."""
    _validate(times, values, method, interval)
    # Pre-dose samples carry no CAR-T cells; keeping negative times would put area before the dose.
    points = [(float(t), 0.0 if t <= 0 else float(c)) for t, c in zip(times, values, strict=True)]
    points = [(t, c) for t, c in points if t >= 0]
    quantifiable = [(t, c) for t, c in points if c > 0]
    if not quantifiable:
        return NcaResult(None, None, None, None, None)

    cmax = max(c for _, c in quantifiable)
    tmax = next(t for t, c in quantifiable if c == cmax)
    tlast = quantifiable[-1][0]
    first = quantifiable[0][0]
    # Middle BLQ dropped, leading and trailing kept (clean.conc.blq defaults).
    curve = [(t, c) for t, c in points if c > 0 or t < first or t > tlast]
    if curve[0][0] > 0:
        curve.insert(0, (0.0, 0.0))

    start, end = interval
    return NcaResult(
        cmax=cmax,
        tmax=tmax,
        tlast=tlast,
        auc_last=_area(curve, 0.0, tlast, tlast, method),
        auc_interval=_area(curve, start, end, tlast, method),
    )


def _validate(
    times: Sequence[float],
    values: Sequence[float],
    method: str,
    interval: tuple[float, float],
) -> None:
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r} (expected one of {', '.join(METHODS)})")
    if len(times) != len(values):
        raise ValueError(f"times and values differ in length ({len(times)} != {len(values)})")
    if len(times) == 0:
        raise ValueError("times: at least one sample is needed")
    if not all(math.isfinite(t) for t in times):
        raise ValueError("times: every time must be a finite number")
    if any(later <= earlier for earlier, later in pairwise(times)):
        raise ValueError("times: must be strictly increasing (sorted, no duplicates)")
    if not all(math.isfinite(c) and c >= 0 for c in values):
        raise ValueError("values: every value must be finite and >= 0 (BLQ as 0)")
    start, end = interval
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise ValueError(f"interval: expected finite 0 <= start < end, got {interval!r}")


def _is_log(c1: float, c2: float, method: str) -> bool:
    return method == LINEAR_UP_LOG_DOWN and 0 < c2 < c1


def _area(
    curve: Sequence[tuple[float, float]],
    start: float,
    end: float,
    tlast: float,
    method: str,
) -> float:
    # After Tlast the level is 0 (AUClast convention), so the integral stops there.
    end = min(end, tlast)
    total = 0.0
    for (t1, c1), (t2, c2) in pairwise(curve):
        lo, hi = max(t1, start), min(t2, end)
        if hi <= lo:
            continue
        # A cut segment keeps the whole segment's rule, as PKNCA interpolates on it.
        if _is_log(c1, c2, method):
            slope = (math.log(c2) - math.log(c1)) / (t2 - t1)
            a = c1 if lo == t1 else c1 * math.exp(slope * (lo - t1))
            b = c2 if hi == t2 else c1 * math.exp(slope * (hi - t1))
            # b == a only when the cut is too narrow for floats to tell apart.
            total += (hi - lo) * ((b - a) / math.log(b / a) if b != a else a)
        else:
            slope = (c2 - c1) / (t2 - t1)
            a = c1 if lo == t1 else c1 + slope * (lo - t1)
            b = c2 if hi == t2 else c1 + slope * (hi - t1)
            total += (hi - lo) * (a + b) / 2
    return total


def geometric_mean(values: Sequence[float]) -> float | None:
    """Geometric mean; None when empty or any value is <= 0 (its log is undefined)."""
    if len(values) == 0 or any(v <= 0 for v in values):
        return None
    return math.exp(statistics.fmean(math.log(v) for v in values))


def geometric_cv_percent(values: Sequence[float]) -> float | None:
    """Geometric CV% = 100*sqrt(exp(s^2) - 1), s the SD of logs (n-1); None if n < 2 or any <= 0."""
    if len(values) < 2 or any(v <= 0 for v in values):
        return None
    s = statistics.stdev(math.log(v) for v in values)
    return 100 * math.sqrt(math.expm1(s * s))


SECONDS_PER_DAY = 86400.0


class Sample(NamedTuple):
    """One PK sample of one method, as ``profile_points`` reads it."""

    moment: datetime
    value: float | None
    blq: bool
    lloq: float | None = None
    """The LLOQ the lab reported for this sample, when it differs from the method's."""


def profile_points(
    samples: Iterable[Sample],
    infusion_at: datetime,
    lloq: float | None,
) -> list[tuple[float, float]]:
    """(day from infusion, level) points for NCA from samples (time, value, BLQ flag, LLOQ).

    BLQ samples and values below the LLOQ (the sample's own, else the method's ``lloq``)
    count as 0; samples at or before the infusion become one pre-dose point (0, 0); samples
    taken at one instant are averaged; samples with neither a value nor a BLQ flag are left
    out. The PK report and the SDTM PP dataset both use this, so their parameters agree.
    """
    points: dict[float, list[float]] = defaultdict(list)
    for moment, value, blq, own_lloq in samples:
        limit = own_lloq if own_lloq is not None else lloq
        if blq or (value is not None and limit is not None and value < limit):
            value = 0.0
        if value is None:
            continue
        day = (moment - infusion_at).total_seconds() / SECONDS_PER_DAY
        if day <= 0:
            day, value = 0.0, 0.0
        points[day].append(value)
    return [(day, statistics.fmean(values)) for day, values in sorted(points.items())]
