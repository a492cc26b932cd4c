"""Derived values and soft checks, evaluated from the shipped study definition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ecrf.checks import EntryFacts, Finding, SoftChecks, derive

STUDY = json.loads((Path(__file__).parents[2] / "forms" / "study.json").read_text())
CHECKS = SoftChecks(STUDY)

INFUSION = EntryFacts(
    "inf",
    "cart_infusion",
    {"infusion_datetime": "2024-03-01T09:00:00+08:00", "dose_level": "DL1"},
)
CONSENT = EntryFacts("ic", "informed_consent", {"consent_date": "2024-01-20"})


def _findings(form: str, data: dict[str, Any], visit: str, *others: EntryFacts) -> list[Finding]:
    return CHECKS.findings(EntryFacts("e", form, data), visit, others)


class TestDerive:
    def test_crs_grade_is_the_worst_domain(self) -> None:
        # Lee et al. 2019: fever with hypotension not needing vasopressors is grade 2.
        data = {"fever": True, "hypotension": "no_vasopressor", "hypoxia": "none"}
        assert derive("crs_assessment", data)["grade"] == 2

    def test_icans_derives_the_ice_score_then_the_grade(self) -> None:
        data = {
            "orientation_year": True,
            "orientation_month": True,
            "orientation_city": False,
            "orientation_hospital": False,
            "names_objects": 2,
            "follows_command": True,
            "writes_sentence": False,
            "counts_back": False,
            "consciousness": "alert",
            "seizure": "none",
            "motor_weakness": False,
            "cerebral_edema": "none",
        }
        derived = derive("icans_assessment", data)
        assert derived["ice_score"] == 5
        assert derived["grade"] == 2  # ICE 3-6 is grade 2

    def test_cells_per_kg_from_total_cells_and_weight(self) -> None:
        data = {"weight_kg": 62.5, "total_car_t_cells": 187_500_000}
        assert derive("cart_infusion", data)["cells_per_kg"] == 3_000_000

    def test_other_forms_are_unchanged(self) -> None:
        assert derive("demographics", {"age": 50}) == {"age": 50}


class TestVisitWindow:
    def test_inside_the_window_is_quiet(self) -> None:
        data = {"assessment_datetime": "2024-03-08T10:00:00+08:00"}
        assert _findings("vital_signs", data, "D7", INFUSION) == []

    def test_outside_the_window_names_the_day(self) -> None:
        data = {"assessment_datetime": "2024-03-11T10:00:00+08:00"}
        [finding] = _findings("vital_signs", data, "D7", INFUSION)
        assert finding.path == "/assessment_datetime"
        assert "D7" in finding.message
        assert "day 10" in finding.message

    def test_instants_are_dated_in_the_study_time_zone(self) -> None:
        # 23:30 UTC on 7 March is 07:30 on 8 March in Shanghai: day 7, inside D7 +-1.
        data = {"assessment_datetime": "2024-03-07T23:30:00Z"}
        infusion = EntryFacts("inf", "cart_infusion", {"infusion_datetime": "2024-03-01T01:00:00Z"})
        assert _findings("vital_signs", data, "D7", infusion) == []

    def test_without_the_anchor_nothing_is_checked(self) -> None:
        data = {"assessment_datetime": "2030-01-01T10:00:00+08:00"}
        assert _findings("vital_signs", data, "D7") == []

    def test_screening_counts_from_consent(self) -> None:
        data = {"collection_date": "2024-03-15"}
        [finding] = _findings("labs", data, "SCR", CONSENT)
        assert finding.path == "/collection_date"

    def test_the_anchor_forms_are_those_of_the_study(self) -> None:
        anchors = {f for f in STUDY["forms"] if CHECKS.is_anchor_form(f)}
        assert anchors == {"informed_consent", "cart_infusion", "surgery_history"}

    def test_window_findings_alone_and_how_to_recognise_them(self) -> None:
        # Out of window and out of range at once: only the window finding is returned.
        vitals = EntryFacts(
            "v",
            "vital_signs",
            {"assessment_datetime": "2024-03-11T10:00:00+08:00", "temperature_c": 42.0},
        )
        [finding] = CHECKS.visit_window_findings(vitals, "D7", [INFUSION, vitals])
        assert finding.path == "/assessment_datetime"
        assert CHECKS.is_visit_window_message("D7", finding.message)
        assert not CHECKS.is_visit_window_message("D10", finding.message)
        every = _findings("vital_signs", dict(vitals.data), "D7", INFUSION)
        assert [CHECKS.is_visit_window_message("D7", f.message) for f in every] == [True, False]


class TestDateOrder:
    def test_ae_onset_before_infusion_is_queried(self) -> None:
        data = {"onset_date": "2024-02-27", "ongoing": True}
        paths = [f.path for f in _findings("adverse_event", data, "LOG", INFUSION, CONSENT)]
        assert paths == ["/onset_date"]

    def test_resolution_before_onset_is_queried_on_the_resolution(self) -> None:
        data = {"onset_date": "2024-03-05", "resolution_date": "2024-03-04"}
        [finding] = _findings("adverse_event", data, "LOG", INFUSION, CONSENT)
        assert finding.path == "/resolution_date"

    def test_the_earlier_side_is_checked_too(self) -> None:
        ae = EntryFacts("ae", "adverse_event", {"onset_date": "2024-01-10"})
        [finding] = _findings("informed_consent", {"consent_date": "2024-01-20"}, "SCR", ae)
        assert finding.path == "/consent_date"


class TestOtherChecks:
    def test_implausible_but_possible_values(self) -> None:
        [finding] = _findings("demographics", {"weight_kg": 38.0}, "SCR")
        assert finding.path == "/weight_kg"

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            # No LLOQ on the sample: the study's (flow 1 cell/uL, qPCR 50 copies/ug).
            ({"flow_cells_per_ul": 0.5}, "Flow value below the assay LLOQ (1 CAR+ cells/µL)"),
            ({"qpcr_copies_per_ug": 40}, "qPCR value below the assay LLOQ (50 copies/µg gDNA)"),
            # The lab reported its own LLOQ for this sample: that one counts.
            (
                {"flow_cells_per_ul": 3.0, "flow_lloq_cells_per_ul": 5.0},
                "Flow value below the assay LLOQ (5 CAR+ cells/µL)",
            ),
            ({"flow_cells_per_ul": 0.5, "flow_lloq_cells_per_ul": 0.2}, None),
            ({"qpcr_copies_per_ug": 40, "qpcr_lloq_copies_per_ug": 25}, None),
            (
                {"qpcr_copies_per_ug": 90, "qpcr_lloq_copies_per_ug": 100},
                "qPCR value below the assay LLOQ (100 copies/µg gDNA)",
            ),
        ],
    )
    def test_pk_values_below_the_samples_own_lloq(
        self, data: dict[str, Any], message: str | None
    ) -> None:
        found = _findings("pk_sample", data, "D7", INFUSION)
        messages = [f.message for f in found if "LLOQ" in f.message]
        assert messages == ([f"{message}: should it be reported as BLQ?"] if message else [])

    def test_fields_that_must_agree_across_forms(self) -> None:
        demographics = EntryFacts("d", "demographics", {"age": 61})
        [finding] = _findings("eligibility", {"age": 60}, "SCR", demographics)
        assert finding.path == "/age"

    @pytest.mark.parametrize(("entered", "queried"), [(2, False), (3, True)])
    def test_derived_grade_against_investigator_grade(self, entered: int, queried: bool) -> None:
        data = derive(
            "crs_assessment",
            {
                "fever": True,
                "hypotension": "none",
                "hypoxia": "low_flow",
                "investigator_grade": entered,
            },
        )
        paths = [f.path for f in _findings("crs_assessment", data, "D1")]
        assert paths == (["/investigator_grade"] if queried else [])

    @pytest.mark.parametrize(
        ("total_cells", "queried"),
        [(62_000_000, False), (74_400_000, False), (75_000_000, True), (49_000_000, True)],
    )
    def test_infused_cells_per_kg_within_20_percent(self, total_cells: int, queried: bool) -> None:
        data = derive(
            "cart_infusion",
            {"dose_level": "DL1", "weight_kg": 62.0, "total_car_t_cells": total_cells},
        )
        paths = [f.path for f in _findings("cart_infusion", data, "D0")]
        assert paths == (["/total_car_t_cells"] if queried else [])

    def test_infusion_at_another_level_than_assigned(self) -> None:
        data = derive(
            "cart_infusion", {"dose_level": "DL2", "weight_kg": 50, "total_car_t_cells": 1.5e8}
        )
        found = CHECKS.findings(EntryFacts("e", "cart_infusion", data), "D0", [], "DL1")
        assert "/dose_level" in [f.path for f in found]


def _casebook() -> list[tuple[EntryFacts, str]]:
    """Every form's shipped examples as one subject's entries, with dates that conflict."""
    forms = Path(__file__).parents[2] / "forms"
    casebook = []
    for name in STUDY["forms"]:
        schema = json.loads(sorted((forms / name).glob("v*.json"))[-1].read_text())
        # Every visit the form is entered at, so that each visit window is evaluated.
        visits = [v["code"] for v in STUDY["visits"] if name in v.get("forms", [])] or ["LOG"]
        for index, example in enumerate(schema.get("examples", [])):
            for visit in visits:
                casebook.append((EntryFacts(f"{name}-{index}-{visit}", name, example), visit))
    # A second infusion and consent, months apart, so windows and date orders disagree.
    casebook.append((EntryFacts("inf-late", "cart_infusion", dict(INFUSION.data)), "D0"))
    casebook.append((CONSENT, "SCR"))
    return casebook


def test_the_checks_read_only_the_forms_they_compare() -> None:
    """findings() over just compared_forms() is findings() over the whole casebook."""
    casebook = _casebook()
    assert {entry.form for entry, _ in casebook} >= {"cart_infusion", "adverse_event"}
    everyone = [entry for entry, _ in casebook]
    some_found = False
    for entry, visit in casebook:
        compared = CHECKS.compared_forms(entry.form)
        narrowed = [other for other in everyone if other.form in compared]
        found = CHECKS.findings(entry, visit, everyone)
        some_found = some_found or bool(found)
        assert CHECKS.findings(entry, visit, narrowed) == found, entry.form
    assert some_found  # the casebook does exercise the checks
