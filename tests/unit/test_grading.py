"""CRS and ICANS grading.

Source: Lee DW et al. ASTCT Consensus Grading for Cytokine Release Syndrome and Neurologic
Toxicity Associated with Immune Effector Cells. Biol Blood Marrow Transplant 2019;25:625-638:
the CRS consensus grading table (and its footnote: after antipyretic or anti-cytokine therapy
fever is no longer required, grading is then driven by hypotension and/or hypoxia), the ICE
score, and the ICANS consensus grading table for adults (ICE 7-9 -> 1, 3-6 -> 2, 0-2 -> 3,
0 because unarousable -> 4; "a patient with an ICE score of 3 who has a generalized seizure
is classified as grade 3 ICANS").
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecrf.clinical.grading import (
    CEREBRAL_EDEMA_POINTS,
    CONSCIOUSNESS_POINTS,
    HYPOTENSION_POINTS,
    HYPOXIA_POINTS,
    SEIZURE_POINTS,
    Grading,
    crs_grade,
    crs_grading,
    icans_grade,
    icans_grading,
    ice_score,
)

HYPOTENSION = list(HYPOTENSION_POINTS)
HYPOXIA = list(HYPOXIA_POINTS)
CONSCIOUSNESS = list(CONSCIOUSNESS_POINTS)
SEIZURE = list(SEIZURE_POINTS)
CEREBRAL_EDEMA = list(CEREBRAL_EDEMA_POINTS)


def crs(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "fever": True,
        "hypotension": "none",
        "hypoxia": "none",
        "antipyretic_or_anticytokine": False,
    }
    return data | changes


def ice(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "orientation_year": True,
        "orientation_month": True,
        "orientation_city": True,
        "orientation_hospital": True,
        "names_objects": 3,
        "follows_command": True,
        "writes_sentence": True,
        "counts_back": True,
    }
    return data | changes


def icans(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ice_score": 10,
        "consciousness": "alert",
        "seizure": "none",
        "motor_weakness": False,
        "cerebral_edema": "none",
    }
    return data | changes


# --- CRS: fever and the therapy footnote ---------------------------------------------------


def test_fever_alone_is_grade_1() -> None:
    assert crs_grade(**crs()) == 1
    assert crs_grading(**crs()) == Grading(1, ("fever",))


def test_no_fever_and_no_therapy_is_no_crs_even_with_hypotension_or_hypoxia() -> None:
    assert crs_grade(**crs(fever=False)) == 0
    assert crs_grade(**crs(fever=False, hypotension="multiple_vasopressors")) == 0
    assert crs_grade(**crs(fever=False, hypoxia="positive_pressure")) == 0
    assert crs_grading(**crs(fever=False, hypoxia="high_flow")) == Grading(0, ())


def test_after_therapy_without_fever_hypotension_or_hypoxia_still_grade() -> None:
    treated = crs(fever=False, antipyretic_or_anticytokine=True)
    assert crs_grade(**treated | {"hypotension": "no_vasopressor"}) == 2
    assert crs_grade(**treated | {"hypoxia": "high_flow"}) == 3
    assert crs_grade(**treated | {"hypotension": "multiple_vasopressors"}) == 4


def test_after_therapy_without_fever_hypotension_or_hypoxia_is_no_crs() -> None:
    assert crs_grade(**crs(fever=False, antipyretic_or_anticytokine=True)) == 0


def test_therapy_does_not_change_the_grade_when_there_is_fever() -> None:
    for hypotension in HYPOTENSION:
        for hypoxia in HYPOXIA:
            plain = crs(hypotension=hypotension, hypoxia=hypoxia)
            treated = plain | {"antipyretic_or_anticytokine": True}
            assert crs_grade(**plain) == crs_grade(**treated)


def test_therapy_defaults_to_not_given() -> None:
    assert crs_grade(fever=False, hypotension="one_vasopressor", hypoxia="none") == 0


# --- CRS: each domain value -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hypotension", "grade"),
    [("none", 1), ("no_vasopressor", 2), ("one_vasopressor", 3), ("multiple_vasopressors", 4)],
)
def test_hypotension_sets_the_grade(hypotension: str, grade: int) -> None:
    assert crs_grade(**crs(hypotension=hypotension)) == grade


@pytest.mark.parametrize(
    ("hypoxia", "grade"),
    [("none", 1), ("low_flow", 2), ("high_flow", 3), ("positive_pressure", 4)],
)
def test_hypoxia_sets_the_grade(hypoxia: str, grade: int) -> None:
    assert crs_grade(**crs(hypoxia=hypoxia)) == grade


def test_grade_is_the_worse_of_hypotension_and_hypoxia() -> None:
    for hypotension in HYPOTENSION:
        for hypoxia in HYPOXIA:
            expected = max(1, HYPOTENSION_POINTS[hypotension], HYPOXIA_POINTS[hypoxia])
            assert crs_grade(**crs(hypotension=hypotension, hypoxia=hypoxia)) == expected


def test_crs_drivers_name_every_domain_at_the_grade() -> None:
    assert crs_grading(**crs(hypotension="one_vasopressor", hypoxia="low_flow")) == Grading(
        3, ("hypotension",)
    )
    assert crs_grading(**crs(hypotension="one_vasopressor", hypoxia="high_flow")) == Grading(
        3, ("hypotension", "hypoxia")
    )
    treated = crs(fever=False, antipyretic_or_anticytokine=True, hypoxia="low_flow")
    assert crs_grading(**treated) == Grading(2, ("hypoxia",))


@given(
    fever=st.booleans(),
    therapy=st.booleans(),
    hypotension=st.sampled_from(HYPOTENSION),
    hypoxia=st.sampled_from(HYPOXIA),
)
def test_crs_grade_is_monotone_in_each_domain(
    fever: bool, therapy: bool, hypotension: str, hypoxia: str
) -> None:
    data = crs(
        fever=fever, antipyretic_or_anticytokine=therapy, hypotension=hypotension, hypoxia=hypoxia
    )
    grade = crs_grade(**data)
    assert 0 <= grade <= 4
    worse_hypotension = HYPOTENSION[HYPOTENSION.index(hypotension) :]
    worse_hypoxia = HYPOXIA[HYPOXIA.index(hypoxia) :]
    assert all(crs_grade(**data | {"hypotension": v}) >= grade for v in worse_hypotension)
    assert all(crs_grade(**data | {"hypoxia": v}) >= grade for v in worse_hypoxia)
    assert crs_grade(**data | {"fever": True}) >= grade
    assert crs_grade(**data | {"antipyretic_or_anticytokine": True}) >= grade


# --- CRS: input handling ----------------------------------------------------------------------


def test_crs_ignores_other_form_fields() -> None:
    data = crs(assessment_date="2025-03-02", max_temperature_c=38.6, investigator_grade=2)
    assert crs_grade(**data) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hypotension", "pressors"),
        ("hypoxia", "nasal_cannula"),
        ("hypoxia", None),
        ("fever", "yes"),
        ("fever", 1),
        ("antipyretic_or_anticytokine", None),
    ],
)
def test_crs_rejects_unknown_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        crs_grade(**crs(**{field: value}))


# --- ICE score ----------------------------------------------------------------------------------


def test_ice_full_marks_is_10() -> None:
    assert ice_score(**ice()) == 10


def test_ice_nothing_is_0() -> None:
    nothing: dict[str, Any] = dict.fromkeys(ice(), False) | {"names_objects": 0}
    assert ice_score(**nothing) == 0


@pytest.mark.parametrize(
    "field",
    [
        "orientation_year",
        "orientation_month",
        "orientation_city",
        "orientation_hospital",
        "follows_command",
        "writes_sentence",
        "counts_back",
    ],
)
def test_each_yes_no_item_is_worth_one_point(field: str) -> None:
    assert ice_score(**ice(**{field: False})) == 9


@pytest.mark.parametrize("named", [0, 1, 2, 3])
def test_each_named_object_is_worth_one_point(named: int) -> None:
    assert ice_score(**ice(names_objects=named)) == 7 + named


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("names_objects", 4),
        ("names_objects", -1),
        ("names_objects", True),
        ("names_objects", 2.5),
        ("orientation_city", None),
        ("counts_back", 1),
    ],
)
def test_ice_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ice_score(**ice(**{field: value}))


def test_ice_accepts_a_whole_number_parsed_as_float() -> None:
    # JSON Schema "integer" admits 2.0.
    assert ice_score(**ice(names_objects=2.0)) == 9
    assert icans_grade(**icans(ice_score=7.0)) == 1


def test_ice_ignores_other_form_fields() -> None:
    assert ice_score(**ice(consciousness="alert", seizure="none", ice_score=3)) == 10


# --- ICANS: ICE boundaries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "grade"),
    [
        (10, 0),
        (9, 1),
        (7, 1),
        (6, 2),
        (3, 2),
        (2, 3),
        (0, 3),
    ],
)
def test_ice_score_bands(score: int, grade: int) -> None:
    assert icans_grade(**icans(ice_score=score)) == grade


@pytest.mark.parametrize(("lower", "upper"), [(2, 3), (6, 7), (9, 10)])
def test_each_ice_boundary_changes_the_grade_by_one(lower: int, upper: int) -> None:
    assert icans_grade(**icans(ice_score=lower)) == icans_grade(**icans(ice_score=upper)) + 1


def test_ice_0_because_unarousable_is_grade_4() -> None:
    unarousable = icans(ice_score=0, consciousness="unarousable")
    assert icans_grade(**unarousable) == 4
    assert icans_grading(**unarousable) == Grading(4, ("ice_score", "consciousness"))


def test_ice_0_while_awake_is_grade_3() -> None:
    # Global aphasia: awake, scores 0, grade 3 (footnote of the ASTCT ICANS table).
    assert icans_grade(**icans(ice_score=0, consciousness="awakens_spontaneously")) == 3


def test_ice_10_with_everything_normal_is_no_icans() -> None:
    assert icans_grade(**icans()) == 0
    assert icans_grading(**icans()) == Grading(0, ())


# --- ICANS: each other domain value ----------------------------------------------------------


@pytest.mark.parametrize(
    ("consciousness", "grade"),
    [
        ("alert", 0),
        ("awakens_spontaneously", 1),
        ("awakens_to_voice", 2),
        ("awakens_to_touch", 3),
        ("unarousable", 4),
    ],
)
def test_consciousness_sets_the_grade(consciousness: str, grade: int) -> None:
    assert icans_grade(**icans(consciousness=consciousness)) == grade


@pytest.mark.parametrize(
    ("seizure", "grade"),
    [("none", 0), ("rapidly_resolving", 3), ("prolonged_or_repetitive", 4)],
)
def test_seizure_sets_the_grade(seizure: str, grade: int) -> None:
    assert icans_grade(**icans(seizure=seizure)) == grade


@pytest.mark.parametrize(("weakness", "grade"), [(False, 0), (True, 4)])
def test_deep_focal_motor_weakness_is_grade_4(weakness: bool, grade: int) -> None:
    assert icans_grade(**icans(motor_weakness=weakness)) == grade


@pytest.mark.parametrize(
    ("edema", "grade"),
    [("none", 0), ("focal", 3), ("diffuse", 4)],
)
def test_cerebral_edema_sets_the_grade(edema: str, grade: int) -> None:
    assert icans_grade(**icans(cerebral_edema=edema)) == grade


def test_worked_example_ice_3_with_generalised_seizure_is_grade_3() -> None:
    grading = icans_grading(**icans(ice_score=3, seizure="rapidly_resolving"))
    assert grading == Grading(3, ("seizure",))


@given(
    score=st.integers(0, 10),
    consciousness=st.sampled_from(CONSCIOUSNESS),
    seizure=st.sampled_from(SEIZURE),
    weakness=st.booleans(),
    edema=st.sampled_from(CEREBRAL_EDEMA),
)
def test_icans_grade_is_the_worst_domain_and_monotone(
    score: int, consciousness: str, seizure: str, weakness: bool, edema: str
) -> None:
    data = icans(
        ice_score=score,
        consciousness=consciousness,
        seizure=seizure,
        motor_weakness=weakness,
        cerebral_edema=edema,
    )
    grade = icans_grade(**data)
    assert grade >= max(
        CONSCIOUSNESS_POINTS[consciousness],
        SEIZURE_POINTS[seizure],
        4 if weakness else 0,
        CEREBRAL_EDEMA_POINTS[edema],
    )
    assert all(icans_grade(**data | {"ice_score": s}) >= grade for s in range(score + 1))
    worse = CONSCIOUSNESS[CONSCIOUSNESS.index(consciousness) :]
    assert all(icans_grade(**data | {"consciousness": c}) >= grade for c in worse)


# --- ICANS: input handling ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ice_score", 11),
        ("ice_score", -1),
        ("ice_score", None),
        ("consciousness", "drowsy"),
        ("seizure", "yes"),
        ("motor_weakness", "no"),
        ("cerebral_edema", "global"),
    ],
)
def test_icans_rejects_unknown_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        icans_grade(**icans(**{field: value}))


def test_a_whole_icans_form_grades_after_its_ice_score() -> None:
    form = ice(names_objects=1, counts_back=False) | icans(seizure="none")
    form["ice_score"] = ice_score(**form)
    assert form["ice_score"] == 7
    assert icans_grade(**form | {"assessment_date": "2025-03-04", "investigator_grade": 1}) == 1
