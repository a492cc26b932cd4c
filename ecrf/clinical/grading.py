"""CRS and ICANS grading by the ASTCT 2019 consensus (Lee et al., BBMT 2019;25:625-638).

Every function takes the key fields of the `crs_assessment` / `icans_assessment` forms as
keywords, so a form's data can be passed with ``**data``; other keys are ignored. An unknown
code or a value of the wrong type raises ``ValueError`` naming the field.

Grade 5 (death due to CRS or ICANS) is not derivable from the assessment fields; it comes
from the adverse-event log, so these functions return 0-4.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Grade per domain value: the columns of the ASTCT CRS and adult ICANS consensus tables.
HYPOTENSION_POINTS: Mapping[str, int] = {
    "none": 0,
    "no_vasopressor": 2,
    "one_vasopressor": 3,
    "multiple_vasopressors": 4,
}
HYPOXIA_POINTS: Mapping[str, int] = {
    "none": 0,
    "low_flow": 2,
    "high_flow": 3,
    "positive_pressure": 4,
}
CONSCIOUSNESS_POINTS: Mapping[str, int] = {
    "alert": 0,
    "awakens_spontaneously": 1,
    "awakens_to_voice": 2,
    "awakens_to_touch": 3,
    "unarousable": 4,
}
SEIZURE_POINTS: Mapping[str, int] = {
    "none": 0,
    "rapidly_resolving": 3,
    "prolonged_or_repetitive": 4,
}
CEREBRAL_EDEMA_POINTS: Mapping[str, int] = {
    "none": 0,
    "focal": 3,
    "diffuse": 4,
}

ICE_MAX = 10


@dataclass(frozen=True)
class Grading:
    """A derived grade and the domains that set it (empty when the grade is 0)."""

    grade: int
    drivers: tuple[str, ...]


def _code(field: str, value: object, points: Mapping[str, int]) -> int:
    if not isinstance(value, str) or value not in points:
        allowed = ", ".join(points)
        raise ValueError(f"{field}: unknown code {value!r} (expected one of {allowed})")
    return points[value]


def _flag(field: str, value: object) -> bool:
    # Strict: a JSON 0/1 or "yes" would mean the form schema was bypassed.
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected a boolean, got {value!r}")
    return value


def _whole(field: str, value: object, low: int, high: int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        # JSON Schema's "integer" admits 2.0, and a parsed form may carry it as a float.
        number = int(value)
    if number is None or not low <= number <= high:
        raise ValueError(f"{field}: expected an integer from {low} to {high}, got {value!r}")
    return number


def _worst(domains: Mapping[str, int]) -> Grading:
    grade = max(domains.values())
    if grade == 0:
        return Grading(0, ())
    return Grading(grade, tuple(name for name, points in domains.items() if points == grade))


def crs_grading(
    *,
    fever: bool,
    hypotension: str,
    hypoxia: str,
    antipyretic_or_anticytokine: bool = False,
    **_: object,
) -> Grading:
    """ASTCT CRS grade with the domains that set it."""
    has_fever = _flag("fever", fever)
    treated = _flag("antipyretic_or_anticytokine", antipyretic_or_anticytokine)
    hypotension_points = _code("hypotension", hypotension, HYPOTENSION_POINTS)
    hypoxia_points = _code("hypoxia", hypoxia, HYPOXIA_POINTS)
    if has_fever:
        return _worst({"fever": 1, "hypotension": hypotension_points, "hypoxia": hypoxia_points})
    # Fever is what starts CRS; hypotension or hypoxia without it has another cause, unless
    # antipyretics or tocilizumab/steroids masked the fever (footnote of the ASTCT CRS table).
    # Then grading is driven by hypotension and/or hypoxia alone, so neither means no CRS.
    if treated and (hypotension_points or hypoxia_points):
        return _worst({"hypotension": hypotension_points, "hypoxia": hypoxia_points})
    return Grading(0, ())


def crs_grade(
    *,
    fever: bool,
    hypotension: str,
    hypoxia: str,
    antipyretic_or_anticytokine: bool = False,
    **_: object,
) -> int:
    """ASTCT CRS grade 0-4 (0 = no CRS): max(1, hypotension, hypoxia) when CRS is present."""
    return crs_grading(
        fever=fever,
        hypotension=hypotension,
        hypoxia=hypoxia,
        antipyretic_or_anticytokine=antipyretic_or_anticytokine,
    ).grade


def ice_score(
    *,
    orientation_year: bool,
    orientation_month: bool,
    orientation_city: bool,
    orientation_hospital: bool,
    names_objects: int,
    follows_command: bool,
    writes_sentence: bool,
    counts_back: bool,
    **_: object,
) -> int:
    """Immune effector cell-associated encephalopathy (ICE) score, 0-10."""
    points = {
        "orientation_year": orientation_year,
        "orientation_month": orientation_month,
        "orientation_city": orientation_city,
        "orientation_hospital": orientation_hospital,
        "follows_command": follows_command,
        "writes_sentence": writes_sentence,
        "counts_back": counts_back,
    }
    return sum(_flag(field, value) for field, value in points.items()) + _whole(
        "names_objects", names_objects, 0, 3
    )


def _ice_points(score: int, unarousable: bool) -> int:
    if score == ICE_MAX:
        return 0
    if score >= 7:
        return 1
    if score >= 3:
        return 2
    # ICE 0 is grade 4 only when the patient cannot be woken to be tested; an awake patient
    # with global aphasia also scores 0 but is grade 3 (footnote of the ASTCT ICANS table).
    if score == 0 and unarousable:
        return 4
    return 3


def icans_grading(
    *,
    ice_score: int,
    consciousness: str,
    seizure: str,
    motor_weakness: bool,
    cerebral_edema: str,
    **_: object,
) -> Grading:
    """ASTCT adult ICANS grade with the domains that set it."""
    score = _whole("ice_score", ice_score, 0, ICE_MAX)
    consciousness_points = _code("consciousness", consciousness, CONSCIOUSNESS_POINTS)
    domains = {
        "ice_score": _ice_points(score, consciousness == "unarousable"),
        "consciousness": consciousness_points,
        "seizure": _code("seizure", seizure, SEIZURE_POINTS),
        "motor_weakness": 4 if _flag("motor_weakness", motor_weakness) else 0,
        "cerebral_edema": _code("cerebral_edema", cerebral_edema, CEREBRAL_EDEMA_POINTS),
    }
    return _worst(domains)


def icans_grade(
    *,
    ice_score: int,
    consciousness: str,
    seizure: str,
    motor_weakness: bool,
    cerebral_edema: str,
    **_: object,
) -> int:
    """ASTCT adult ICANS grade 0-4 (0 = no ICANS): the worst domain."""
    return icans_grading(
        ice_score=ice_score,
        consciousness=consciousness,
        seizure=seizure,
        motor_weakness=motor_weakness,
        cerebral_edema=cerebral_edema,
    ).grade
