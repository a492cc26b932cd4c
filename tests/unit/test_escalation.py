"""3+3 dose escalation: PROTOCOL.md worked cases, the R package `escalation`, properties.

Reference: R package `escalation` (Kristian Brock, github.com/brockk/escalation),
`R/three_plus_three.R`, function `three_plus_three(outcomes, num_doses,
allow_deescalate = FALSE, strict_mode = TRUE)`, in the version that implements
`allow_deescalate` (older versions `stop('Not implemented yet')` there), used by
`get_three_plus_three()` in `R/three_plus_three_selector.R`. `_r_three_plus_three` below
is a line-by-line port of its decision rules (strict_mode aside) so that every enumerated
path can be compared with the package.
"""

import dataclasses
import functools
import re
from collections import Counter

import pytest

from ecrf.clinical.escalation import (
    DoseState,
    Recommendation,
    dose_counts,
    dose_outcomes_notation,
    parse_cohorts,
    three_plus_three,
)

Patients = tuple[tuple[int, bool], ...]
RDecision = tuple[int | None, bool]  # the package's (recommended_dose, continue)


def _r_three_plus_three(outcomes: str, num_doses: int, allow_deescalate: bool) -> RDecision:
    """Port of escalation::three_plus_three (R/three_plus_three.R), without strict_mode."""
    n = [0] * (num_doses + 2)  # 1-based like R's df_c, with a spare slot above the top
    tox = [0] * (num_doses + 2)
    last_dose = 1  # `if(length(last_dose) == 0) last_dose <- 1`
    for match in re.finditer(r"(\d+)([NT]+)", outcomes):
        last_dose = int(match[1])
        n[last_dose] += len(match[2])
        tox[last_dose] += match[2].count("T")
    n_d, tox_d = n[last_dose], tox[last_dose]

    def escalate_or_stop() -> RDecision:
        if last_dose == num_doses:
            return last_dose, False
        if n[last_dose + 1] >= 6 or tox[last_dose + 1] >= 2:
            return last_dose, False
        return last_dose + 1, True

    def too_toxic() -> RDecision:
        if allow_deescalate:
            if last_dose > 1:
                if n[last_dose - 1] < 6:
                    return last_dose - 1, True
                korn = [d for d in range(1, num_doses + 1) if n[d] >= 6 and tox[d] <= 1]
                return (korn[-1] if korn else None), False
            return None, False
        if last_dose == 1:
            return None, False
        return last_dose - 1, False

    if n_d < 3:
        return last_dose, True
    if n_d == 3:
        if tox_d == 0:
            return escalate_or_stop()
        if tox_d == 1:
            return last_dose, True
        return too_toxic()
    if n_d < 6:
        return last_dose, True
    if n_d == 6:
        return escalate_or_stop() if tox_d <= 1 else too_toxic()
    raise AssertionError("the package warns 'more than six patients at a dose-level'")


def _as_r(rec: Recommendation) -> RDecision:
    """Our recommendation in the package's terms: a stop recommends the MTD."""
    return (rec.mtd if rec.stop else rec.next_dose), not rec.stop


def _counts(patients: Patients) -> dict[int, tuple[int, int]]:
    n = Counter(dose for dose, _ in patients)
    t = Counter(dose for dose, dlt in patients if dlt)
    return {dose: (n[dose], t[dose]) for dose in range(1, 4)}


# --- PROTOCOL.md "3+3 dose escalation", worked cases (default engine) -------------------


@pytest.mark.parametrize(
    ("outcomes", "stop", "next_dose", "mtd", "action"),
    [
        # PROTOCOL says "continue at 1 (expand)": dose 2 is too toxic and dose 1 has
        # fewer than 6 patients, so 3 more go to dose 1. That is the package's
        # de-escalation branch, hence action "deescalate" with next_dose 1.
        ("1NNN 2NTT", False, 1, None, "deescalate"),
        ("1NNN 2NTT 1NNT", True, None, 1, "stop"),
        ("1NNN 2NNN 3NTT 2NTT 1NNN", True, None, 1, "stop"),
        ("1NTT", True, None, None, "stop"),
        ("1NNN 2NNT 2NNN 3NTT", True, None, 2, "stop"),
    ],
)
def test_protocol_worked_cases(
    outcomes: str, stop: bool, next_dose: int | None, mtd: int | None, action: str
) -> None:
    rec = three_plus_three(outcomes, n_doses=3)

    assert (rec.stop, rec.next_dose, rec.mtd, rec.action) == (stop, next_dose, mtd, action)


def test_protocol_worked_case_with_fifteen_patients() -> None:
    outcomes = "1NNN 2NNN 3NTT 2NTT 1NNN"

    assert sum(len(letters) for _, letters in parse_cohorts(outcomes, n_doses=3)) == 15
    assert three_plus_three(outcomes, n_doses=3).mtd == 1


# --- The R package, mtd_requires=3 ---------------------------------------------------------

# (outcomes, num_doses, allow_deescalate, recommended_dose, continue, our action), each
# derived by hand from the branches of R/three_plus_three.R.
R_CASES = [
    # n_d < 3, or 3 < n_d < 6: "Carry on at this dose".
    ("", 3, False, 1, True, "continue"),
    ("1N", 3, False, 1, True, "continue"),
    ("1T", 3, True, 1, True, "continue"),
    ("1NT", 3, False, 1, True, "continue"),
    ("1NNN 2N", 3, True, 2, True, "continue"),
    ("1NNT 1N", 3, False, 1, True, "continue"),
    ("1NNN 2NNT 2NN", 3, True, 2, True, "continue"),
    # n_d == 3, tox_d == 0: "Escalate if you can, or stop if at top dose".
    ("1NNN", 3, False, 2, True, "escalate"),
    ("1NNN", 1, True, 1, False, "stop"),
    ("1NNN 2NNN 3NNN", 3, False, 3, False, "stop"),
    ("1NNN 2NNN 3NNN", 3, True, 3, False, "stop"),
    # n_d == 3, tox_d == 1: "Remain and continue".
    ("1NNT", 3, False, 1, True, "expand"),
    ("1NNN 2TNN", 3, True, 2, True, "expand"),
    # n_d == 6, tox_d <= 1: escalate, or stop at the top dose / next dose seen 6 or 2 tox.
    ("1NNT 1NNN", 3, False, 2, True, "escalate"),
    ("1NNN 2NNT 2NNN", 3, True, 3, True, "escalate"),
    ("1NNN 2NNN 3NNT 3NNN", 3, False, 3, False, "stop"),
    ("1NNN 2NTT 1NNT", 3, True, 1, False, "stop"),
    ("1NNN 2NTT 1NNT", 3, False, 1, False, "stop"),
    ("1NNN 2NNN 3NTT 2NNT", 3, True, 2, False, "stop"),
    ("1NNN 2NNN 3NTT 2NTT 1NNN", 3, True, 1, False, "stop"),
    # More than one tox, allow_deescalate = FALSE: stop, recommend previous dose or none.
    ("1NTT", 3, False, None, False, "stop"),
    ("1TTT", 3, False, None, False, "stop"),
    ("1NNT 1NNT", 3, False, None, False, "stop"),
    ("1NNN 2NTT", 3, False, 1, False, "stop"),
    ("1NNN 2NNT 2NTN", 3, False, 1, False, "stop"),
    ("1NNN 2NNN 3NTT", 3, False, 2, False, "stop"),
    # More than one tox, allow_deescalate = TRUE: lower dose if it has < 6, else Korn's MTD.
    ("1NTT", 3, True, None, False, "stop"),
    ("1NNT 1NTN", 3, True, None, False, "stop"),
    ("1NNN 2NTT", 3, True, 1, True, "deescalate"),
    ("1NNN 2NNT 2NTN", 3, True, 1, True, "deescalate"),
    ("1NNN 2NNN 3NTT", 3, True, 2, True, "deescalate"),
    ("1NNN 2NNN 3NTT 2NTT", 3, True, 1, True, "deescalate"),
    ("1NNT 1NNN 2NTT", 3, True, 1, False, "stop"),
    ("1NNN 2NNT 2NNN 3NTT", 3, True, 2, False, "stop"),
    ("1NNT 1NNN 2NNT 2NNN 3TTT", 3, True, 2, False, "stop"),
    # Examples in the package's roxygen docs (three_plus_three.R, three_plus_three_selector.R).
    ("2NNN 3NNT", 7, False, 3, True, "expand"),
    ("1NNN 2NTN", 5, False, 2, True, "expand"),
    ("1NNN 2NTN 2NNT", 5, False, 1, False, "stop"),
]


@pytest.mark.parametrize(("outcomes", "num_doses", "allow", "dose", "cont", "action"), R_CASES)
def test_matches_r_package_by_hand(
    outcomes: str, num_doses: int, allow: bool, dose: int | None, cont: bool, action: str
) -> None:
    rec = three_plus_three(outcomes, n_doses=num_doses, allow_deescalation=allow, mtd_requires=3)

    assert _as_r(rec) == (dose, cont)
    assert rec.action == action


@pytest.mark.parametrize(("outcomes", "num_doses", "allow", "dose", "cont", "action"), R_CASES)
def test_r_port_agrees_with_hand_derived_cases(
    outcomes: str, num_doses: int, allow: bool, dose: int | None, cont: bool, action: str
) -> None:
    """The port used by the enumeration below reads the R source the same way we did."""
    assert _r_three_plus_three(outcomes, num_doses, allow) == (dose, cont)


@pytest.mark.parametrize("allow", [True, False])
@pytest.mark.parametrize(
    ("outcomes", "still_to_come"),
    [
        ("1TT", 1),
        ("1NNT 1T", 2),
        ("1NNT 1NT", 1),
        ("1NNN 2TT", 1),
        ("1NNN 2NNT 2TT", 1),
        ("1NNN 2NNN 3TT", 1),
        ("1NNN 2NNN 3NNT 3TNT", 0),
    ],
)
def test_second_dlt_halts_where_the_package_finishes_the_cohort(
    outcomes: str, still_to_come: int, allow: bool
) -> None:
    """PROTOCOL: halt at the second DLT; the package decides only at n_d == 3 or 6."""
    rec = three_plus_three(outcomes, n_doses=3, allow_deescalation=allow, mtd_requires=3)

    assert rec.action in ("stop", "deescalate")
    for letter in "NT":
        completed = outcomes + letter * still_to_come
        assert _as_r(rec) == _r_three_plus_three(completed, 3, allow)
    if still_to_come:
        assert _r_three_plus_three(outcomes, 3, allow)[1] is True


# --- mtd_requires=6 (PROTOCOL: never declare an MTD on 3 patients) ------------------------


@pytest.mark.parametrize("allow", [True, False])
def test_top_dose_zero_of_three_expands_before_it_can_be_the_mtd(allow: bool) -> None:
    rec = three_plus_three("1NNN 2NNN 3NNN", n_doses=3, allow_deescalation=allow)

    assert (rec.action, rec.next_dose, rec.stop) == ("expand", 3, False)
    assert "6" in rec.rule


@pytest.mark.parametrize(
    ("outcomes", "stop", "next_dose", "mtd", "action"),
    [
        ("1NNN", False, 1, None, "expand"),
        ("1NNN 1NT", False, 1, None, "continue"),
        ("1NNN 1NNT", True, None, 1, "stop"),
        ("1NNN 1NTT", True, None, None, "stop"),
        ("1NNN 1TT", True, None, None, "stop"),
    ],
)
def test_single_dose_trial_needs_six_patients(
    outcomes: str, stop: bool, next_dose: int | None, mtd: int | None, action: str
) -> None:
    rec = three_plus_three(outcomes, n_doses=1)

    assert (rec.stop, rec.next_dose, rec.mtd, rec.action) == (stop, next_dose, mtd, action)


@pytest.mark.parametrize(
    ("outcomes", "stop", "next_dose", "mtd", "action"),
    [
        ("1NNN 2NNN 3NNN 3NNN", True, None, 3, "stop"),
        ("1NNN 2NNN 3NNN 3NTT", False, 2, None, "deescalate"),
        ("1NNN 2NNN 3NNN 3NTT 2NNN", True, None, 2, "stop"),
    ],
)
def test_expanded_top_dose(
    outcomes: str, stop: bool, next_dose: int | None, mtd: int | None, action: str
) -> None:
    rec = three_plus_three(outcomes, n_doses=3)

    assert (rec.stop, rec.next_dose, rec.mtd, rec.action) == (stop, next_dose, mtd, action)


@pytest.mark.parametrize(
    ("outcomes", "mtd"),
    [
        # The package recommends dose 1 here, on 3 patients.
        ("1NNN 2NTT", None),
        ("1NNT 1NNN 2NTT", 1),
        # The package recommends dose 2 (3 patients); dose 1 is the highest with 6.
        ("1NNT 1NNN 2NNN 3NTT", 1),
        ("1NNN 2NNT 2NNN 3NTT", 2),
    ],
)
def test_without_deescalation_mtd_is_highest_lower_dose_with_six(
    outcomes: str, mtd: int | None
) -> None:
    rec = three_plus_three(outcomes, n_doses=3, allow_deescalation=False)

    assert (rec.stop, rec.mtd) == (True, mtd)


def test_mtd_requires_must_be_three_or_six() -> None:
    with pytest.raises(ValueError, match="mtd_requires"):
        three_plus_three("1NNN", n_doses=3, mtd_requires=4)


def test_n_doses_must_be_positive() -> None:
    with pytest.raises(ValueError, match="n_doses"):
        three_plus_three("", n_doses=0)


# --- Rule sentences for the safety reviewer ------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "rule"),
    [
        ("", "No evaluable patients yet: start at dose 1."),
        ("1NNN", "0 of 3 DLT at dose 1: escalate to dose 2."),
        ("1NNT", "1 of 3 DLT at dose 1: treat 3 more patients at dose 1."),
        ("1NT", "1 of 2 DLT at dose 1 so far: continue at dose 1 until 3 patients are evaluated."),
        (
            "1NNN 2TT",
            "2 of 2 DLT at dose 2 (enrolment halted at the second DLT), so dose 2 is too toxic: "
            "de-escalate to dose 1 and treat 3 more patients there.",
        ),
        (
            "1NNN 2NNT 2NNN 3NTT",
            "2 of 3 DLT at dose 3, so dose 3 is too toxic and dose 2 already has 6 patients: "
            "stop; the MTD is dose 2.",
        ),
        (
            "1NTT",
            "2 of 3 DLT at dose 1, so dose 1 is too toxic and there is no lower dose: "
            "stop with no MTD.",
        ),
    ],
)
def test_rule_says_which_rule_applied(outcomes: str, rule: str) -> None:
    assert three_plus_three(outcomes, n_doses=3).rule == rule


def test_recommendation_is_frozen() -> None:
    rec = three_plus_three("1NNN", n_doses=3)

    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.stop = True  # type: ignore[misc]


# --- Malformed notation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "token"),
    [
        ("4NN", "4NN"),
        ("1NNN 4NN", "4NN"),
        ("0NNN", "0NNN"),
        ("1NX", "1NX"),
        ("1nnn", "1nnn"),
        ("N", "N"),
        ("1", "1"),
        ("1NNN 2", "2"),
        ("1.2NN", "1.2NN"),
        ("1NNN,2NT", "1NNN,2NT"),
        ("1NNT 1NNN 1N", "1N"),
    ],
)
def test_malformed_notation_names_the_token(outcomes: str, token: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{token!r}")):
        three_plus_three(outcomes, n_doses=3)


# --- Helpers the DoseEscalation aggregate reuses ----------------------------------------------


def test_parse_cohorts_splits_on_any_whitespace() -> None:
    assert parse_cohorts("  1NNN\t2NT \n", n_doses=3) == [(1, "NNN"), (2, "NT")]
    assert parse_cohorts("", n_doses=3) == []


def test_dose_counts_adds_up_every_cohort_at_a_dose() -> None:
    cohorts = parse_cohorts("1NNN 2NTT 1NNT", n_doses=3)

    assert dose_counts(cohorts, n_doses=3) == {
        1: DoseState(1, 6, 1),
        2: DoseState(2, 3, 2),
        3: DoseState(3, 0, 0),
    }


@pytest.mark.parametrize(
    ("patients", "notation"),
    [
        ((), ""),
        (((1, False), (1, False), (1, False), (2, False), (2, True)), "1NNN 2NT"),
        (((1, False), (1, False), (1, True)) + ((1, False),) * 3, "1NNT 1NNN"),
        (((1, False),) * 3 + ((2, True),) * 2 + ((1, False),) * 3, "1NNN 2TT 1NNN"),
    ],
)
def test_dose_outcomes_notation_writes_cohorts_of_three(patients: Patients, notation: str) -> None:
    assert dose_outcomes_notation(patients) == notation


def test_dose_outcomes_notation_rejects_dose_zero() -> None:
    with pytest.raises(ValueError, match="dose 0"):
        dose_outcomes_notation([(0, False)])


# --- Every 3-dose path ---------------------------------------------------------------------

CONFIGS = [(allow, mtd) for allow in (True, False) for mtd in (3, 6)]


@functools.cache
def _explore(allow: bool, mtd_requires: int) -> tuple[tuple[Patients, Recommendation], ...]:
    """Every state of every trial: start at dose 1, each patient N or T, follow the engine."""
    states: list[tuple[Patients, Recommendation]] = []
    pending: list[Patients] = [()]
    while pending:
        patients = pending.pop()
        rec = three_plus_three(
            dose_outcomes_notation(patients),
            n_doses=3,
            allow_deescalation=allow,
            mtd_requires=mtd_requires,
        )
        states.append((patients, rec))
        if not rec.stop:
            assert rec.next_dose is not None
            pending.extend((*patients, (rec.next_dose, dlt)) for dlt in (False, True))
    return tuple(states)


@pytest.mark.parametrize(("allow", "mtd_requires"), CONFIGS)
def test_every_path_treats_at_most_six_per_dose_and_18_in_all(
    allow: bool, mtd_requires: int
) -> None:
    for patients, _ in _explore(allow, mtd_requires):
        assert all(n <= 6 for n, _ in _counts(patients).values()), patients
        assert len(patients) <= 18


@pytest.mark.parametrize(("allow", "mtd_requires"), CONFIGS)
def test_every_path_moves_one_dose_at_a_time(allow: bool, mtd_requires: int) -> None:
    expected_step = {"continue": 0, "expand": 0, "escalate": 1, "deescalate": -1}
    for patients, rec in _explore(allow, mtd_requires):
        if rec.stop:
            assert rec.next_dose is None
            continue
        assert rec.next_dose is not None
        if not patients:
            assert rec.next_dose == 1
            continue
        here = patients[-1][0]
        assert rec.next_dose == here + expected_step[rec.action], (patients, rec)
        assert rec.next_dose <= max(dose for dose, _ in patients) + 1


@pytest.mark.parametrize(("allow", "mtd_requires"), CONFIGS)
def test_every_mtd_has_enough_patients_and_at_most_one_dlt(allow: bool, mtd_requires: int) -> None:
    for patients, rec in _explore(allow, mtd_requires):
        if rec.mtd is not None:
            n, t = _counts(patients)[rec.mtd]
            assert n >= mtd_requires, (patients, rec)
            assert t <= 1, (patients, rec)


@pytest.mark.parametrize(("allow", "mtd_requires"), CONFIGS)
def test_every_path_halts_at_the_second_dlt_at_a_dose(allow: bool, mtd_requires: int) -> None:
    for patients, rec in _explore(allow, mtd_requires):
        if not patients:
            continue
        here = patients[-1][0]
        _, t_before = _counts(patients[:-1])[here]
        assert t_before < 2, f"a patient was treated at closed dose {here}: {patients}"
        if _counts(patients)[here][1] >= 2:
            assert rec.action in ("stop", "deescalate"), (patients, rec)


def _r_after_cohort(patients: Patients, allow: bool) -> list[RDecision]:
    """The package's decision once the cohort at the current dose is complete (N or T)."""
    here = patients[-1][0] if patients else 1
    missing = -_counts(patients)[here][0] % 3
    completions = {patients + ((here, dlt),) * missing for dlt in (False, True)}
    return [_r_three_plus_three(dose_outcomes_notation(p), 3, allow) for p in completions]


def _r_reference(patients: Patients, allow: bool) -> list[RDecision]:
    """What ours must equal: the package now, or from a second DLT on, after the cohort."""
    here = patients[-1][0] if patients else 1
    if _counts(patients)[here][1] < 2:
        return [_r_three_plus_three(dose_outcomes_notation(patients), 3, allow)]
    return _r_after_cohort(patients, allow)


@pytest.mark.parametrize("allow", [True, False])
def test_every_path_matches_r_package_with_mtd_requires_3(allow: bool) -> None:
    for patients, rec in _explore(allow, 3):
        for r_decision in _r_reference(patients, allow):
            assert _as_r(rec) == r_decision, (dose_outcomes_notation(patients), rec)


@pytest.mark.parametrize("allow", [True, False])
def test_mtd_requires_6_departs_from_r_package_only_over_three_patient_mtds(
    allow: bool,
) -> None:
    for patients, rec in _explore(allow, 6):
        counts = _counts(patients)
        for r_dose, r_continue in _r_reference(patients, allow):
            if _as_r(rec) == (r_dose, r_continue):
                continue
            # The package stopped and named a dose treated in only 3 patients.
            assert not r_continue, (patients, rec)
            assert r_dose is not None
            assert counts[r_dose][0] == 3
            if rec.action == "expand":
                assert rec.next_dose == r_dose
            else:
                assert rec.stop
                assert rec.mtd is None or counts[rec.mtd][0] == 6
