"""The report functions on hand-made facts: PROTOCOL check values and our definitions."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ecrf.export.sdtm import pk_profile
from ecrf.reports.tables import cell, to_csv
from projections.facts import EntryFact, SubjectFacts
from projections.mrd import add_months, mrd_report
from projections.pk import pk_report
from projections.rfs import rfs_report
from projections.safety import (
    Syndrome,
    crs_icans_report,
    dlt_report,
    syndrome,
    teae_report,
)
from projections.timeline import timeline_report

STUDY: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "forms" / "study.json").read_text(encoding="utf-8")
)
SHANGHAI = ZoneInfo("Asia/Shanghai")
INFUSED = datetime(2023, 4, 25, 9, 40, tzinfo=SHANGHAI)


def subject(
    subject_id: str, *entries: tuple[str, dict[str, Any]], enrolled: str | None = None
) -> SubjectFacts:
    """Facts of one subject: (form, data) entries in the order given, unsigned."""
    return SubjectFacts(
        subject_id=subject_id,
        site="CHH",
        enrolled_dose_level=enrolled,
        enrolled_at=None,
        entries=tuple(
            EntryFact(f"{subject_id}-{n}", form, "UNS", 1, data, False, n)
            for n, (form, data) in enumerate(entries)
        ),
    )


def infusion(at: datetime = INFUSED, level: str = "DL1") -> tuple[str, dict[str, Any]]:
    return "cart_infusion", {"infusion_datetime": at.isoformat(), "dose_level": level}


def day(n: int) -> str:
    """The ISO date ``n`` days after the infusion day."""
    return (INFUSED.date() + timedelta(days=n)).isoformat()


# PROTOCOL "PK non-compartmental analysis" check value.
CHECK_TIMES = (0, 0.0417, 1, 4, 7, 10, 14, 21, 28)
CHECK_QPCR = (0, 1200, 850, 5300, 42000, 61000, 18000, 7400, 2900)


def pk_sample(days: float, qpcr: float | None, flow: float | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sample_datetime": (INFUSED + timedelta(days=days)).isoformat(),
        "nominal_day": round(days),
        "qpcr_blq": qpcr is None,
        "flow_blq": flow is None,
    }
    if qpcr is not None:
        data["qpcr_copies_per_ug"] = qpcr
    if flow is not None:
        data["flow_cells_per_ul"] = flow
    return data


class TestPk:
    def test_the_protocol_check_value(self) -> None:
        samples = [
            ("pk_sample", pk_sample(t, c if c else None))
            for t, c in zip(CHECK_TIMES, CHECK_QPCR, strict=True)
        ]
        table = pk_report([subject("S1", infusion(), *samples)], STUDY, "qpcr")
        (row,) = table.rows
        assert row["cmax"] == 61000
        assert row["tmax"] == pytest.approx(10)
        assert row["auc_0_28"] == pytest.approx(493699.2056, abs=1e-3)
        assert [t for t, _ in row["profile"]] == pytest.approx(list(CHECK_TIMES))

    def test_the_linear_method_from_the_study_settings(self) -> None:
        samples = [
            ("pk_sample", pk_sample(t, c if c else None))
            for t, c in zip(CHECK_TIMES, CHECK_QPCR, strict=True)
        ]
        study = json.loads(json.dumps(STUDY))
        study["settings"]["pk"]["method"] = "linear"
        (row,) = pk_report([subject("S1", infusion(), *samples)], study, "qpcr").rows
        assert row["auc_0_28"] == pytest.approx(518632.2775, abs=1e-3)

    def test_pre_dose_samples_are_one_zero_at_day_0(self) -> None:
        samples = [
            ("pk_sample", pk_sample(-0.02, 400.0)),
            ("pk_sample", pk_sample(0, None)),
            ("pk_sample", pk_sample(1, 1000.0)),
        ]
        (row,) = pk_report([subject("S1", infusion(), *samples)], STUDY, "qpcr").rows
        assert row["profile"] == [[0.0, 0.0], [1.0, 1000.0]]

    def test_values_below_the_lloq_are_blq_and_not_done_is_left_out(self) -> None:
        samples = [
            ("pk_sample", pk_sample(1, 1000.0, flow=5.0)),
            ("pk_sample", pk_sample(2, 30.0, flow=0.5)),  # qPCR LLOQ 50, flow LLOQ 1
            ("pk_sample", {**pk_sample(3, 900.0), "flow_blq": False}),  # flow not done
        ]
        facts = [subject("S1", infusion(), *samples)]
        (qpcr,) = pk_report(facts, STUDY, "qpcr").rows
        assert qpcr["profile"] == [[1.0, 1000.0], [2.0, 0.0], [3.0, 900.0]]
        (flow,) = pk_report(facts, STUDY, "flow").rows
        assert flow["profile"] == [[1.0, 5.0], [2.0, 0.0]]
        assert flow["tlast"] == 1.0

    def test_a_sample_is_judged_by_the_lloq_its_lab_reported(self) -> None:
        """The sample's own LLOQ, when recorded, replaces the method's (qPCR 50)."""
        samples = [
            ("pk_sample", pk_sample(1, 1000.0)),
            # A more sensitive assay: 30 copies is quantifiable against its LLOQ of 20.
            ("pk_sample", {**pk_sample(2, 30.0), "qpcr_lloq_copies_per_ug": 20.0}),
            # A less sensitive one: 80 copies is below its LLOQ of 100.
            ("pk_sample", {**pk_sample(3, 80.0), "qpcr_lloq_copies_per_ug": 100.0}),
            ("pk_sample", pk_sample(4, 60.0)),  # no LLOQ of its own: the method's 50
        ]
        (row,) = pk_report([subject("S1", infusion(), *samples)], STUDY, "qpcr").rows
        assert row["profile"] == [[1.0, 1000.0], [2.0, 30.0], [3.0, 0.0], [4.0, 60.0]]
        # The SDTM PP dataset computes its parameters from the same points.
        qpcr = STUDY["settings"]["pk"]["methods"]["qpcr"]
        points = pk_profile([data for _, data in samples], INFUSED, qpcr, SHANGHAI)
        assert [list(point) for point in points] == row["profile"]

    def test_summary_geometric_mean_and_cv(self) -> None:
        facts = [
            subject("S1", infusion(), ("pk_sample", pk_sample(7, 1000.0))),
            subject("S2", infusion(), ("pk_sample", pk_sample(7, 4000.0))),
            subject("S3", infusion(level="DL2"), ("pk_sample", pk_sample(7, 100.0))),
            subject("S4", infusion(), ("pk_sample", pk_sample(7, None))),
        ]
        table = pk_report(facts, STUDY, "qpcr")
        assert table.summary is not None
        dl1, dl2, dl3 = table.summary["dose_levels"]
        assert dl1["n"] == 2  # S4 is all BLQ: a row, but no Cmax
        assert dl1["cmax_geomean"] == pytest.approx(2000.0)
        log_sd = math.log(4) / math.sqrt(2)  # SD of ln 1000 and ln 4000
        assert dl1["cmax_geocv"] == pytest.approx(100 * math.sqrt(math.expm1(log_sd**2)))
        assert (dl2["n"], dl2["cmax_geocv"]) == (1, None)
        assert (dl3["n"], dl3["cmax_geomean"]) == (0, None)
        assert [r["subject_id"] for r in table.rows] == ["S1", "S2", "S3", "S4"]

    def test_an_unknown_method_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown PK method"):
            pk_report([], STUDY, "elisa")


def imaging(days: int, recurrence: bool, adequate: bool = True) -> tuple[str, dict[str, Any]]:
    return "imaging", {"imaging_date": day(days), "recurrence": recurrence, "adequate": adequate}


class TestRfs:
    def test_the_protocol_kaplan_meier_check_value(self) -> None:
        # PROTOCOL "Kaplan-Meier": months 5.1, 11.0, 8.0, 14.2, 24.0 x3 with events
        # 1,1,0,1,0,0,1. Whole days cannot hit 24.0 months (730.5 days); 730 days keeps
        # every tie and every time on the same side of 12 and 24 months.
        followed = [(155, True), (335, True), (243, False), (432, True)]
        followed += [(730, False), (730, False), (730, True)]
        facts = [
            subject(f"S{n}", infusion(), imaging(days, event))
            for n, (days, event) in enumerate(followed)
        ]
        table = rfs_report(facts, STUDY)
        assert table.summary is not None
        assert [r["event"] for r in table.rows] == [int(e) for _, e in followed]
        assert table.rows[0]["time_months"] == 155 / 30.4375
        curve = {round(p["time"], 4): p["survival"] for p in table.summary["curve"]}
        assert curve[round(335 / 30.4375, 4)] == pytest.approx(0.6857143, abs=1e-7)
        assert table.summary["rfs_24m"]["estimate"] == pytest.approx(0.3428571, abs=1e-7)
        low, high = table.summary["rfs_24m"]["lower"], table.summary["rfs_24m"]["upper"]
        assert 0 < low < 0.3428571 < high < 1
        # 730 days is 23.98 months: nobody reached 24, and the report says so.
        assert table.summary["followed_to_horizon"] is False

    def test_followed_to_horizon_once_anyone_reaches_24_months(self) -> None:
        def fit(*followed: tuple[int, bool]) -> dict[str, Any]:
            facts = [
                subject(f"S{n}", infusion(), imaging(days, event))
                for n, (days, event) in enumerate(followed)
            ]
            summary = rfs_report(facts, STUDY).summary
            assert summary is not None
            return summary

        short = fit((100, True), (300, False))
        # lifelines carries S forward past the last time: the number is kept, flagged.
        assert short["followed_to_horizon"] is False
        assert short["rfs_24m"]["estimate"] == pytest.approx(0.5)
        assert fit((100, True), (731, False))["followed_to_horizon"] is True  # 24.02 months
        assert fit((731, True))["followed_to_horizon"] is True  # an event counts too

    def test_event_is_first_recurrence_or_death_and_censoring_is_last_adequate_imaging(
        self,
    ) -> None:
        death = ("end_of_study", {"end_date": day(200), "reason": "death", "death_date": day(90)})
        facts = [
            subject("A", infusion(), imaging(-20, False), imaging(100, False), imaging(150, True)),
            subject("B", infusion(), imaging(60, False), death, imaging(120, True)),
            subject("C", infusion(), imaging(60, False), imaging(180, False, adequate=False)),
            subject("D", infusion()),
            subject("E", imaging(60, True)),  # never infused: not in the population
        ]
        rows = {r["subject_id"]: r for r in rfs_report(facts, STUDY).rows}
        assert set(rows) == {"A", "B", "C", "D"}
        assert (rows["A"]["event"], rows["A"]["event_type"], rows["A"]["end_date"]) == (
            1,
            "recurrence",
            day(150),
        )
        assert (rows["B"]["event_type"], rows["B"]["time_months"]) == ("death", 90 / 30.4375)
        assert (rows["C"]["event"], rows["C"]["end_date"]) == (0, day(60))
        assert (rows["D"]["event"], rows["D"]["time_months"]) == (0, 0.0)

    def test_no_treated_subject_gives_an_empty_curve(self) -> None:
        table = rfs_report([subject("S1")], STUDY)
        assert table.rows == []
        assert table.summary is not None
        assert table.summary["curve"] == []
        assert table.summary["followed_to_horizon"] is False
        assert table.summary["rfs_24m"] == {"estimate": None, "lower": None, "upper": None}


def ae(onset: int, grade: int, term: str = "Fatigue", **more: Any) -> tuple[str, dict[str, Any]]:
    data = {"term": term, "onset_date": day(onset), "grade": grade, "serious": False}
    data["ongoing"] = "resolution" not in more
    if "resolution" in more:
        data["resolution_date"] = day(more.pop("resolution"))
    return "adverse_event", {**data, **more}


class TestTeae:
    def test_window_counts_and_summary(self) -> None:
        facts = [
            subject(
                "A",
                infusion(),
                ae(-1, 3),  # before infusion: not treatment-emergent
                ae(0, 1),
                ae(28, 2, serious=True),
                ae(29, 4),  # after day 28
            ),
            subject("B", infusion(), ae(5, 3, term="Colitis")),
            subject("C", infusion()),
            subject("D", ae(3, 3)),  # not infused
        ]
        table = teae_report(facts, STUDY)
        assert table.rows == [
            {
                "subject_id": "A",
                "dose_level": "DL1",
                "teae_count": 2,
                "worst_grade": 2,
                "serious_count": 1,
            },
            {
                "subject_id": "B",
                "dose_level": "DL1",
                "teae_count": 1,
                "worst_grade": 3,
                "serious_count": 0,
            },
            {
                "subject_id": "C",
                "dose_level": "DL1",
                "teae_count": 0,
                "worst_grade": 0,
                "serious_count": 0,
            },
        ]
        assert table.summary is not None
        dl1 = table.summary["dose_levels"][0]
        assert dl1 == {
            "dose_level": "DL1",
            "treated": 3,
            "with_teae": 2,
            "grade_3_plus": 1,
            "by_worst_grade": {"1": 0, "2": 1, "3": 1, "4": 0, "5": 0},
        }
        terms = {t["term"]: t for t in table.summary["terms"]}
        assert terms["Fatigue"]["events"] == 2
        assert terms["Fatigue"]["subjects"] == 1
        assert terms["Fatigue"]["serious_events"] == 1
        assert terms["Colitis"]["grade_3_plus"] == 1

    def test_dose_level_from_enrolment_when_the_infusion_lacks_it(self) -> None:
        facts = [
            subject(
                "A",
                ("cart_infusion", {"infusion_datetime": INFUSED.isoformat()}),
                enrolled="DL2",
            )
        ]
        assert teae_report(facts, STUDY).rows[0]["dose_level"] == "DL2"


class TestSyndrome:
    def test_assessments_alone(self) -> None:
        # Grade 2 on day 1, grade 1 on day 2, resolved (grade 0) on day 3.
        assert syndrome([(0, 0), (1, 2), (2, 1), (3, 0), (4, 0)], [], (0, 28)) == Syndrome(2, 1, 2)

    def test_unresolved_without_a_later_grade_0(self) -> None:
        assert syndrome([(1, 1), (2, 2)], [], (0, 28)) == Syndrome(2, 1, None)

    def test_the_ae_resolution_can_end_it_later(self) -> None:
        assert syndrome([(1, 2), (2, 0)], [(1, 3, 5)], (0, 28)) == Syndrome(3, 1, 4)

    def test_an_ongoing_ae_leaves_it_unresolved(self) -> None:
        assert syndrome([], [(3, 1, None)], (0, 28)) == Syndrome(1, 3, None)

    def test_outside_the_window_does_not_count(self) -> None:
        assert syndrome([(-1, 2), (29, 3)], [(30, 2, 31)], (0, 28)) == Syndrome(0, None, None)

    def test_an_episode_running_past_day_28_ends_at_its_grade_0(self) -> None:
        assert syndrome([(27, 1), (29, 1), (31, 0)], [], (0, 28)) == Syndrome(1, 27, 4)

    def test_crs_from_components_when_no_grade_is_stored(self) -> None:
        crs = {
            "assessment_date": day(1),
            "fever": True,
            "max_temperature_c": 38.6,
            "hypotension": "none",
            "hypoxia": "low_flow",
            "antipyretic_or_anticytokine": False,
        }
        resolved = {**crs, "assessment_date": day(3), "fever": False, "hypoxia": "none"}
        facts = [subject("A", infusion(), ("crs_assessment", crs), ("crs_assessment", resolved))]
        (row,) = crs_icans_report(facts, STUDY).rows
        assert (row["crs_worst_grade"], row["crs_onset_day"], row["crs_duration_days"]) == (
            2,
            1,
            2,
        )
        assert (row["icans_worst_grade"], row["icans_onset_day"]) == (0, None)


class TestDlt:
    def test_only_signed_assessments_count(self) -> None:
        def assessed(subject_id: str, signed: bool, **data: Any) -> SubjectFacts:
            facts = subject(subject_id, infusion(), ("dlt_assessment", data))
            entry = facts.entries[1]
            signed_entry = EntryFact(
                entry.entry_id, entry.form, entry.visit, 1, entry.data, signed, entry.order
            )
            return SubjectFacts(subject_id, "CHH", None, None, (facts.entries[0], signed_entry))

        facts = [
            assessed("A", True, evaluable=True, dlt=False),
            assessed("B", True, evaluable=True, dlt=True),
            assessed("C", False, evaluable=True, dlt=True),
            assessed("D", True, evaluable=False, dlt=False),
        ]
        dl1 = dlt_report(facts, STUDY).rows[0]
        assert dl1 == {
            "dose_level": "DL1",
            "treated": 4,
            "assessed": 3,
            "evaluable": 2,
            "dlt": 1,
            "subjects_with_dlt": ["B"],
        }

    def test_the_most_recently_signed_assessment_counts(self) -> None:
        """The escalation engine's rule: the newest valid signature, not the last entry."""

        def assessment(subject_id: str, order: int, signed_at: int | None, dlt: bool) -> EntryFact:
            data = {"evaluable": True, "dlt": dlt}
            signed = signed_at is not None
            return EntryFact(
                f"{subject_id}-{order}", "dlt_assessment", "D28", 1, data, signed, order, signed_at
            )

        def with_dlt(*assessments: EntryFact) -> list[str]:
            first = subject("A", infusion()).entries[0]
            facts = SubjectFacts("A", "CHH", None, None, (first, *assessments))
            row = dlt_report([facts], STUDY).rows[0]
            assert row["assessed"] == 1
            result: list[str] = row["subjects_with_dlt"]
            return result

        # Recorded first but signed last (e.g. corrected and signed again): it counts.
        assert with_dlt(assessment("A", 1, 30, True), assessment("A", 2, 20, False)) == ["A"]
        assert with_dlt(assessment("A", 1, 20, True), assessment("A", 2, 30, False)) == []
        # An unsigned later assessment changes nothing.
        assert with_dlt(assessment("A", 1, 20, True), assessment("A", 2, None, False)) == ["A"]


class TestMrd:
    def test_clearance_relapse_and_the_24_month_window(self) -> None:
        def ctdna(on: str, result: str) -> tuple[str, dict[str, Any]]:
            return "ctdna_result", {"sample_date": on, "result": result}

        resection = ("surgery_history", {"resection_date": "2023-01-12", "r0": True})
        facts = [
            subject(
                "A",
                resection,
                infusion(),
                ctdna("2023-05-23", "not_detected"),
                ctdna("2023-03-14", "detected"),
                ctdna("2023-10-22", "detected"),
                ("imaging", {"imaging_date": "2024-01-19", "recurrence": True}),
            ),
            subject(
                "B",
                ("eligibility", {"r0_resection_date": "2021-01-10"}),
                ctdna("2023-02-01", "detected"),
                ("imaging", {"imaging_date": "2023-02-10", "recurrence": True}),
                enrolled="DL2",
            ),
            subject("C", infusion(), ctdna("2023-03-14", "detected")),
            subject("D", ctdna("2023-03-14", "detected")),  # no dose level: screening only
        ]
        rows = {r["subject_id"]: r for r in mrd_report(facts, STUDY).rows}
        assert set(rows) == {"A", "B", "C"}
        assert rows["A"]["ctdna_course"] == [
            ["2023-03-14", "detected"],
            ["2023-05-23", "not_detected"],
            ["2023-10-22", "detected"],
        ]
        assert rows["A"]["clearance_date"] == "2023-05-23"
        assert rows["A"]["molecular_relapse_date"] == "2023-10-22"
        assert rows["A"]["imaging_recurrence_date"] == "2024-01-19"
        assert rows["A"]["lead_time_days"] == 89
        assert rows["A"]["recurrence_within_24m_of_resection"] is True
        assert rows["B"]["resection_date"] == "2021-01-10"
        assert rows["B"]["recurrence_within_24m_of_resection"] is False  # 25 months on
        assert rows["C"]["recurrence_within_24m_of_resection"] is None  # no resection date
        assert rows["C"]["clearance_date"] is None

    def test_months_are_calendar_months(self) -> None:
        assert add_months(date(2023, 1, 12), 24) == date(2025, 1, 12)
        assert add_months(date(2024, 2, 29), 12) == date(2025, 2, 28)
        assert add_months(date(2023, 11, 30), 3) == date(2024, 2, 29)


class TestTimeline:
    def test_rows_are_dated_in_course_order_with_study_days(self) -> None:
        facts = subject(
            "A",
            ae(2, 2, term="Cytokine release syndrome", resolution=5),
            infusion(),
            ("informed_consent", {"consent_date": day(-36), "icf_version": "2.1"}),
            (
                "end_of_study",
                {"end_date": day(400), "reason": "withdrawal", "withdrawal_by": "subject"},
            ),
        )
        table = timeline_report(facts, STUDY)
        assert [(r["study_day"], r["category"]) for r in table.rows] == [
            (-36, "consent"),
            (0, "infusion"),
            (2, "adverse_event"),
            (5, "adverse_event_resolved"),
            (400, "withdrawal"),
        ]
        assert table.rows[1]["date"] == "2023-04-25"
        assert table.summary == {
            "subject_id": "A",
            "site": "CHH",
            "dose_level": "DL1",
            "infusion_date": "2023-04-25",
        }

    def test_day_0_is_the_infusion_day_in_the_study_time_zone(self) -> None:
        # 20:30 UTC on 24 April is 04:30 on 25 April in Shanghai.
        utc = datetime(2023, 4, 24, 20, 30, tzinfo=ZoneInfo("UTC"))
        facts = subject("A", infusion(at=utc), ae(0, 1))
        rows = timeline_report(facts, STUDY).rows
        assert [(r["date"], r["study_day"]) for r in rows] == [
            ("2023-04-25", 0),
            ("2023-04-25", 0),
        ]


class TestCsv:
    def test_cells(self) -> None:
        assert cell(None) == ""
        assert cell(True) == "true"
        assert cell(0.1 + 0.2) == "0.30000000000000004"  # unrounded
        assert cell([[1.5, 0]]) == "[[1.5,0]]"

    def test_header_and_rows(self) -> None:
        text = to_csv(("a", "b"), [{"a": 1, "b": "x,y"}, {"a": None}])
        assert text.splitlines() == ["a,b", '1,"x,y"', ","]

    def test_every_summary_table_has_its_columns(self) -> None:
        facts = [
            subject(
                "A",
                infusion(),
                ae(2, 3),
                ("pk_sample", pk_sample(1, 1000)),
                ("pk_sample", pk_sample(7, 5000)),
            ),
            subject("B", infusion(level="DL2"), imaging(90, True)),
        ]
        tables = {
            "teae": teae_report(facts, STUDY),
            "pk": pk_report(facts, STUDY, "qpcr"),
            "rfs": rfs_report(facts, STUDY),
            "dlt": dlt_report(facts, STUDY),
        }
        assert {name: t.table_names() for name, t in tables.items()} == {
            "teae": ("rows", "dose_levels", "terms"),
            "pk": ("rows", "dose_levels"),
            "rfs": ("rows", "curve"),
            "dlt": ("rows",),
        }
        for report in tables.values():
            for name in report.table_names():
                columns, rows = report.table(name)
                summary = report.summary or {}
                assert rows == (report.rows if name == "rows" else summary[name])
                assert rows, name
                # The columns are exactly each row's fields, in a fixed order.
                assert all(set(row) == set(columns) for row in rows), name
            with pytest.raises(KeyError):
                report.table("summary")
        columns, rows = tables["teae"].table("terms")
        assert columns[:2] == ("dose_level", "term")
        assert [(r["dose_level"], r["term"], r["grade_3_plus"]) for r in rows] == [
            ("DL1", "Fatigue", 1)
        ]
