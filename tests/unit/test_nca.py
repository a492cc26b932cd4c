"""Non-compartmental analysis of CAR-T kinetics.

Sources: PROTOCOL.md "PK non-compartmental analysis" (the qPCR check value); the R package
PKNCA (humanpred/pknca): ``clean.conc.blq`` defaults (leading BLQ kept, middle dropped,
trailing kept), ``choose_interval_method`` ("lin up/log down": log trapezoid only when
falling to a positive value), ``interpolate.conc`` (log interpolation on log segments),
``extrapolate.conc`` and ``pk.calc.aucint.last`` (0 after Tlast, so an interval ending past
the last sample adds nothing), and its tests in ``tests/testthat/test-aucint.R``. Expected
areas are written out with the trapezoid formulas (Gabrielsson & Weiner, section 2.8).
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecrf.clinical.nca import NcaResult, geometric_cv_percent, geometric_mean, nca

CHECK_TIMES = [0, 0.0417, 1, 4, 7, 10, 14, 21, 28]
CHECK_QPCR = [0, 1200, 850, 5300, 42000, 61000, 18000, 7400, 2900]


def linear(t1: float, c1: float, t2: float, c2: float) -> float:
    return (t2 - t1) * (c1 + c2) / 2


def log_down(t1: float, c1: float, t2: float, c2: float) -> float:
    return (t2 - t1) * (c2 - c1) / math.log(c2 / c1)


# --- the protocol's check value ------------------------------------------------------------


def test_check_value_cmax_and_tmax() -> None:
    result = nca(CHECK_TIMES, CHECK_QPCR)
    assert result.cmax == 61000
    assert result.tmax == 10
    assert result.tlast == 28


def test_check_value_auc_0_28_linear_up_log_down() -> None:
    result = nca(CHECK_TIMES, CHECK_QPCR, method="linear-up/log-down")
    assert result.auc_interval == pytest.approx(493699.2056, abs=1e-4)
    assert result.auc_last == pytest.approx(493699.2056, abs=1e-4)


def test_check_value_auc_0_28_linear() -> None:
    result = nca(CHECK_TIMES, CHECK_QPCR, method="linear")
    assert result.auc_interval == pytest.approx(518632.2775, abs=1e-4)
    assert result.auc_last == pytest.approx(518632.2775, abs=1e-4)


def test_default_method_is_linear_up_log_down_and_interval_is_0_28() -> None:
    assert nca(CHECK_TIMES, CHECK_QPCR) == nca(
        CHECK_TIMES, CHECK_QPCR, method="linear-up/log-down", interval=(0.0, 28.0)
    )


# --- linear versus linear-up/log-down --------------------------------------------------------


def test_log_trapezoid_only_on_falling_segments() -> None:
    times, values = [0, 1, 2, 3, 4], [0, 8, 8, 4, 2]
    rising_and_flat = linear(0, 0, 1, 8) + linear(1, 8, 2, 8)
    assert nca(times, values, interval=(0, 4)).auc_interval == pytest.approx(
        rising_and_flat + log_down(2, 8, 3, 4) + log_down(3, 4, 4, 2)
    )
    assert nca(times, values, method="linear", interval=(0, 4)).auc_interval == pytest.approx(
        rising_and_flat + linear(2, 8, 3, 4) + linear(3, 4, 4, 2)
    )


def test_pknca_halving_profile() -> None:
    # test-aucint.R uses conc 8, 4, 2, 1 at times 0:3; here the infusion day comes first.
    times, values = [0, 1, 2, 3, 4], [0, 8, 4, 2, 1]
    assert nca(times, values).auc_last == pytest.approx(4 + (4 + 2 + 1) / math.log(2))
    assert nca(times, values, method="linear").auc_last == pytest.approx(4 + 6 + 3 + 1.5)


@given(
    st.lists(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), min_size=2, max_size=8).map(
        lambda vs: sorted(vs, reverse=True)
    )
)
def test_linear_is_at_least_log_down_for_a_decreasing_profile(values: list[float]) -> None:
    times = [1.0 + i for i in range(len(values))]
    by_linear = nca(times, values, method="linear", interval=(0, 100)).auc_interval
    by_log = nca(times, values, interval=(0, 100)).auc_interval
    assert by_linear is not None
    assert by_log is not None
    assert by_linear >= by_log - 1e-9 * by_linear


@given(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=8).map(
        sorted
    )
)
def test_methods_agree_on_a_profile_that_never_falls(values: list[float]) -> None:
    times = [float(i) for i in range(1, len(values) + 1)]
    assert nca(times, values, method="linear") == nca(times, values)


# --- BLQ handling (PKNCA clean.conc.blq defaults) ------------------------------------------


def test_all_blq_gives_nothing() -> None:
    assert nca([0, 1, 7, 28], [0, 0, 0, 0]) == NcaResult(None, None, None, None, None)


def test_leading_blq_are_kept() -> None:
    result = nca([0, 1, 2, 3], [0, 0, 100, 50])
    assert result.tmax == 2
    assert result.auc_last == pytest.approx(linear(1, 0, 2, 100) + log_down(2, 100, 3, 50))


def test_blq_between_quantifiable_samples_is_dropped() -> None:
    result = nca([0, 1, 2, 3], [0, 100, 0, 50])
    # The line runs 100 -> 50 across the dropped sample instead of dipping to 0.
    assert result.auc_last == pytest.approx(linear(0, 0, 1, 100) + log_down(1, 100, 3, 50))
    assert nca([0, 1, 2, 3], [0, 100, 0, 50], method="linear").auc_last == pytest.approx(50 + 150)


def test_trailing_blq_add_no_area() -> None:
    with_blq = nca([0, 1, 2, 3, 7], [0, 100, 50, 0, 0])
    without = nca([0, 1, 2], [0, 100, 50])
    assert with_blq.tlast == 2
    assert with_blq.auc_last == pytest.approx(linear(0, 0, 1, 100) + log_down(1, 100, 2, 50))
    assert with_blq.auc_interval == without.auc_interval == with_blq.auc_last


def test_interval_end_between_tlast_and_trailing_blq_is_auclast_not_aucall() -> None:
    # PKNCA test-aucint.R "AUCall traces correctly" would add a triangle to 3.5 for AUCall.
    times, values = [0, 1, 2, 3, 4], [0, 8, 4, 2, 0]
    assert nca(times, values, interval=(0, 3.5)).auc_interval == pytest.approx(
        nca(times, values, interval=(0, 3)).auc_interval
    )


# --- Cmax, Tmax, Tlast ----------------------------------------------------------------------


def test_tmax_is_the_first_time_of_the_maximum() -> None:
    result = nca([0, 1, 2, 3], [0, 50, 50, 10])
    assert (result.cmax, result.tmax, result.tlast) == (50, 1, 3)


def test_single_quantifiable_sample() -> None:
    result = nca([0, 7, 14], [0, 100, 0])
    assert result == NcaResult(100, 7, 7, linear(0, 0, 7, 100), linear(0, 0, 7, 100))


def test_single_sample_starts_from_zero_at_infusion() -> None:
    # PKNCA's conc.origin = 0: nothing circulates before the first sample.
    assert nca([7], [100]) == NcaResult(100, 7, 7, 350, 350)


def test_pre_dose_sample_counts_as_zero() -> None:
    assert nca([0, 1, 2], [30, 100, 50]) == nca([0, 1, 2], [0, 100, 50])
    assert nca([-0.1, 1, 2], [30, 100, 50]) == nca([1, 2], [100, 50])
    assert nca([0], [30]) == NcaResult(None, None, None, None, None)


# --- the AUC interval ---------------------------------------------------------------------


def test_interval_end_past_the_last_sample_adds_nothing() -> None:
    # pk.calc.aucint.last: concentrations after Tlast extrapolate as 0.
    result = nca([0, 7, 14], [0, 100, 50], interval=(0, 28))
    assert result.auc_interval == pytest.approx(linear(0, 0, 7, 100) + log_down(7, 100, 14, 50))
    assert result.auc_interval == result.auc_last


def test_interval_end_inside_a_falling_segment_interpolates_on_the_log_curve() -> None:
    times, values = [0, 10, 20], [0, 100, 25]
    # Halfway between 100 and 25 on the log curve is 50 (on the line it would be 62.5).
    assert nca(times, values, interval=(0, 15)).auc_interval == pytest.approx(
        500 + log_down(10, 100, 15, 50)
    )
    assert nca(times, values, method="linear", interval=(0, 15)).auc_interval == pytest.approx(
        500 + linear(10, 100, 15, 62.5)
    )


def test_interval_start_inside_a_rising_segment_interpolates_on_the_line() -> None:
    result = nca([0, 10, 20], [0, 100, 25], interval=(5, 10))
    assert result.auc_interval == pytest.approx(linear(5, 50, 10, 100))


def test_interval_after_tlast_is_zero() -> None:
    assert nca([0, 1, 2, 3], [0, 100, 50, 0], interval=(2, 28)).auc_interval == 0


def test_check_profile_over_a_partial_interval() -> None:
    by_segment = sum(
        linear(t1, c1, t2, c2) if c2 >= c1 else log_down(t1, c1, t2, c2)
        for t1, c1, t2, c2 in zip(
            CHECK_TIMES[:6], CHECK_QPCR[:6], CHECK_TIMES[1:7], CHECK_QPCR[1:7], strict=True
        )
    )
    assert nca(CHECK_TIMES, CHECK_QPCR, interval=(0, 14)).auc_interval == pytest.approx(by_segment)
    assert nca(CHECK_TIMES, CHECK_QPCR, interval=(0, 14)).auc_last == pytest.approx(
        493699.2056, abs=1e-4
    )


# --- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "values", "message"),
    [
        ([0, 1], [0], "differ in length"),
        ([], [], "at least one"),
        ([0, 2, 1], [0, 1, 2], "increasing"),
        ([0, 1, 1], [0, 1, 2], "increasing"),
        ([0, 1], [0, -1], "values"),
        ([0, 1], [0, math.nan], "values"),
        ([0, math.inf], [0, 1], "times"),
    ],
)
def test_rejects_bad_profiles(times: list[float], values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nca(times, values)


def test_rejects_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        nca(CHECK_TIMES, CHECK_QPCR, method="log")


@pytest.mark.parametrize("interval", [(28.0, 0.0), (5.0, 5.0), (-1.0, 28.0), (0.0, math.inf)])
def test_rejects_a_bad_interval(interval: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="interval"):
        nca(CHECK_TIMES, CHECK_QPCR, interval=interval)


# --- geometric summaries by dose level -------------------------------------------------------


def test_geometric_mean_matches_the_standard_library() -> None:
    values = [518632.2775, 493699.2056, 120000.0, 3.5]
    assert geometric_mean(values) == pytest.approx(statistics.geometric_mean(values))
    assert geometric_mean([1, 10, 100]) == pytest.approx(10)


def test_geometric_cv_uses_the_n_minus_1_sd_of_logs() -> None:
    # s = SD(ln 1, ln 10, ln 100) = ln 10; CV% = 100 * sqrt(exp(s^2) - 1).
    s = math.log(10)
    assert geometric_cv_percent([1, 10, 100]) == pytest.approx(100 * math.sqrt(math.exp(s**2) - 1))
    assert geometric_cv_percent([5, 5, 5]) == 0
    values = np.array([518632.2775, 493699.2056, 120000.0, 3.5])
    s_numpy = float(np.std(np.log(values), ddof=1))
    assert geometric_cv_percent(list(values)) == pytest.approx(
        100 * math.sqrt(math.exp(s_numpy**2) - 1)
    )


@pytest.mark.parametrize("values", [[], [0.0, 2.0], [-1.0, 2.0]])
def test_geometric_mean_is_undefined_without_positive_values(values: list[float]) -> None:
    assert geometric_mean(values) is None


@pytest.mark.parametrize("values", [[], [7.0], [0.0, 2.0], [-1.0, 2.0]])
def test_geometric_cv_needs_two_positive_values(values: list[float]) -> None:
    assert geometric_cv_percent(values) is None
