"""3+3 dose escalation (Korn variant with de-escalation), as in PROTOCOL.md.

The rules follow the reference R package `escalation` (Brock), function
`three_plus_three` in `R/three_plus_three.R`, with two protocol changes:

* Enrolment at a dose halts at its second DLT, even mid-cohort. The package would
  finish the cohort first; its decision after the cohort is the one we give at once.
* With ``mtd_requires=6`` no dose is declared MTD on 3 patients: where the package
  would stop on 0/3 (top dose, or the next dose already closed) we expand to 6, and
  where it would stop without de-escalation naming a dose below that has only 3
  patients, the MTD is the highest lower dose with 6 patients and at most 1 DLT, if any.

Malformed notation and more than 6 patients at a dose raise ValueError; other
departures from the design (the Safety Review Committee may overrule the engine) are
accepted, and the rule is applied to the dose the last patient received.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["continue", "escalate", "expand", "deescalate", "stop"]

COHORT_SIZE = 3
MAX_PER_DOSE = 6

# A dose reaches its decision with 2 DLTs; one DLT is tolerated at MTD (<= 1 of 6).
_TOO_TOXIC = 2


@dataclass(frozen=True)
class Recommendation:
    """What the 3+3 rule recommends next, and the rule that produced it."""

    next_dose: int | None
    stop: bool
    mtd: int | None
    action: Action
    rule: str


@dataclass(frozen=True)
class DoseState:
    """Patients evaluated (n) and DLTs seen (t) at one dose level."""

    dose: int
    n: int
    t: int

    @property
    def closed(self) -> bool:
        """Whether escalation into this dose is barred (6 patients or 2 DLTs already)."""
        return self.n >= MAX_PER_DOSE or self.t >= _TOO_TOXIC


def parse_cohorts(outcomes: str, *, n_doses: int) -> list[tuple[int, str]]:
    """Parse "1NNN 2NT" into [(1, "NNN"), (2, "NT")], raising ValueError on a bad token."""
    cohorts: list[tuple[int, str]] = []
    for token in outcomes.split():
        letters = token.lstrip("0123456789")
        digits = token[: len(token) - len(letters)]
        if not digits:
            raise ValueError(f"cohort token {token!r} does not start with a dose number")
        if not letters:
            raise ValueError(f"cohort token {token!r} has no patient outcomes (N or T)")
        if set(letters) - {"N", "T"}:
            raise ValueError(
                f"cohort token {token!r} has outcomes other than N (no DLT) and T (DLT)"
            )
        dose = int(digits)
        if not 1 <= dose <= n_doses:
            raise ValueError(f"cohort token {token!r} names dose {dose}, outside 1..{n_doses}")
        cohorts.append((dose, letters))
    return cohorts


def dose_counts(cohorts: Iterable[tuple[int, str]], *, n_doses: int) -> dict[int, DoseState]:
    """Count patients and DLTs per dose, for every dose 1..n_doses."""
    n = dict.fromkeys(range(1, n_doses + 1), 0)
    t = dict.fromkeys(range(1, n_doses + 1), 0)
    for dose, letters in cohorts:
        n[dose] += len(letters)
        t[dose] += letters.count("T")
    return {dose: DoseState(dose, n[dose], t[dose]) for dose in n}


def dose_outcomes_notation(patients: Iterable[tuple[int, bool]]) -> str:
    """Write (dose, dlt) pairs, in order of evaluation, as "1NNN 2NT" (cohorts of 3)."""
    tokens: list[str] = []
    run_dose: int | None = None
    run: list[str] = []
    for dose, dlt in patients:
        if dose < 1:
            raise ValueError(f"dose {dose} is not a dose level (levels start at 1)")
        # A new token starts at a change of dose or when the current cohort is full,
        # so six patients at one dose read "1NNT 1NNN" as in the literature.
        if dose != run_dose or len(run) == COHORT_SIZE:
            if run:
                tokens.append(f"{run_dose}{''.join(run)}")
            run_dose, run = dose, []
        run.append("T" if dlt else "N")
    if run:
        tokens.append(f"{run_dose}{''.join(run)}")
    return " ".join(tokens)


def three_plus_three(
    outcomes: str,
    *,
    n_doses: int,
    allow_deescalation: bool = True,
    mtd_requires: int = 6,
) -> Recommendation:
    """Recommend the next step of a 3+3 trial from its outcomes so far ("1NNN 2NT")."""
    if n_doses < 1:
        raise ValueError(f"n_doses must be at least 1, got {n_doses}")
    if mtd_requires not in (COHORT_SIZE, MAX_PER_DOSE):
        raise ValueError(f"mtd_requires must be 3 or 6, got {mtd_requires}")
    cohorts = parse_cohorts(outcomes, n_doses=n_doses)
    _reject_overfull_doses(cohorts)
    if not cohorts:
        return Recommendation(
            next_dose=1,
            stop=False,
            mtd=None,
            action="continue",
            rule="No evaluable patients yet: start at dose 1.",
        )

    doses = dose_counts(cohorts, n_doses=n_doses)
    # As in the package, the decision is about the dose the last patient received.
    here = doses[cohorts[-1][0]]
    if here.t >= _TOO_TOXIC:
        return _too_toxic(here, doses, allow_deescalation, mtd_requires)
    if here.n == COHORT_SIZE and here.t == 1:
        return Recommendation(
            next_dose=here.dose,
            stop=False,
            mtd=None,
            action="expand",
            rule=f"{_tally(here)}: treat 3 more patients at dose {here.dose}.",
        )
    if here.n in (COHORT_SIZE, MAX_PER_DOSE):
        return _acceptable(here, doses, n_doses, mtd_requires)
    target = COHORT_SIZE if here.n < COHORT_SIZE else MAX_PER_DOSE
    return Recommendation(
        next_dose=here.dose,
        stop=False,
        mtd=None,
        action="continue",
        rule=f"{_tally(here)} so far: continue at dose {here.dose} "
        f"until {target} patients are evaluated.",
    )


def _reject_overfull_doses(cohorts: Sequence[tuple[int, str]]) -> None:
    seen: dict[int, int] = {}
    for dose, letters in cohorts:
        seen[dose] = seen.get(dose, 0) + len(letters)
        if seen[dose] > MAX_PER_DOSE:
            token = f"{dose}{letters}"
            raise ValueError(
                f"cohort token {token!r} brings dose {dose} to {seen[dose]} patients; "
                f"the 3+3 design treats at most {MAX_PER_DOSE} at a dose"
            )


def _tally(state: DoseState) -> str:
    return f"{state.t} of {state.n} DLT at dose {state.dose}"


def _acceptable(
    here: DoseState, doses: dict[int, DoseState], n_doses: int, mtd_requires: int
) -> Recommendation:
    """0/3, or at most 1 DLT in 6: escalate unless the next dose is absent or closed."""
    if here.dose == n_doses:
        reason = f"{_tally(here)}, the top dose"
    elif doses[here.dose + 1].closed:
        above = doses[here.dose + 1]
        reason = (
            f"{_tally(here)} and dose {above.dose} is closed to escalation "
            f"({above.t} of {above.n} DLT there)"
        )
    else:
        return Recommendation(
            next_dose=here.dose + 1,
            stop=False,
            mtd=None,
            action="escalate",
            rule=f"{_tally(here)}: escalate to dose {here.dose + 1}.",
        )
    if here.n < mtd_requires:
        return Recommendation(
            next_dose=here.dose,
            stop=False,
            mtd=None,
            action="expand",
            rule=f"{reason}: treat 3 more patients at dose {here.dose}, since an MTD needs "
            f"{mtd_requires} evaluated patients.",
        )
    return _stop(reason, here.dose)


def _too_toxic(
    here: DoseState,
    doses: dict[int, DoseState],
    allow_deescalation: bool,
    mtd_requires: int,
) -> Recommendation:
    """Two or more DLTs at the current dose: de-escalate or stop."""
    halted = (
        "" if here.n in (COHORT_SIZE, MAX_PER_DOSE) else " (enrolment halted at the second DLT)"
    )
    reason = f"{_tally(here)}{halted}, so dose {here.dose} is too toxic"
    if here.dose == 1:
        return Recommendation(
            next_dose=None,
            stop=True,
            mtd=None,
            action="stop",
            rule=f"{reason} and there is no lower dose: stop with no MTD.",
        )
    below = doses[here.dose - 1]
    if allow_deescalation:
        if below.n < MAX_PER_DOSE:
            return Recommendation(
                next_dose=below.dose,
                stop=False,
                mtd=None,
                action="deescalate",
                rule=f"{reason}: de-escalate to dose {below.dose} and treat 3 more patients there.",
            )
        # Korn et al. (1994): "the highest dose level in which 6 patients have been
        # treated with <= 1 instance of DLT"; the package searches every dose.
        mtd = _highest_tolerated(doses.values(), MAX_PER_DOSE)
        return _stop(f"{reason} and dose {below.dose} already has {below.n} patients", mtd)
    if mtd_requires == COHORT_SIZE:
        # The package recommends the dose below whatever its counts.
        return _stop(f"{reason} and de-escalation is not allowed", below.dose)
    mtd = _highest_tolerated((s for s in doses.values() if s.dose < here.dose), mtd_requires)
    return _stop(
        f"{reason} and de-escalation is not allowed",
        mtd,
        f"no lower dose has {mtd_requires} patients with at most 1 DLT",
    )


def _highest_tolerated(states: Iterable[DoseState], mtd_requires: int) -> int | None:
    tolerated = [s.dose for s in states if s.n >= mtd_requires and s.t < _TOO_TOXIC]
    return max(tolerated, default=None)


def _stop(
    reason: str,
    mtd: int | None,
    why_none: str = "no dose has 6 patients with at most 1 DLT",
) -> Recommendation:
    rule = (
        f"{reason}: stop with no MTD ({why_none})."
        if mtd is None
        else f"{reason}: stop; the MTD is dose {mtd}."
    )
    return Recommendation(next_dose=None, stop=True, mtd=mtd, action="stop", rule=rule)
