"""Reports through the API on a small constructed trial, checked by hand.

Three subjects at DL1 (A, B, C) and one in screening (D):

- A, infused 2023-04-25 09:40 (+08:00): CRS AE grade 2 (serious) days 1-4, neutropenia
  grade 4 from day 2 (ongoing), nausea on day -1 and fatigue on day 46 (neither a TEAE);
  CRS assessments grade 2, 1, 0 on days 1-3; ICANS grade 1 on day 2, 0 on day 3; qPCR PK
  samples reproducing the PROTOCOL NCA check value; ctDNA detected, cleared on day 28,
  relapsed on day 180; imaging clear on day 87, recurrence on day 269; ADA and RCL tests;
  a signed DLT assessment without DLT.
- B, infused 2023-06-01: colitis grade 3 day 10, fever grade 1 day 0, CRS AE grade 1
  from day 1 (ongoing); a signed DLT assessment with a DLT; imaging clear on day 366.
- C, infused 2023-07-01: diarrhoea grade 2 (corrected to 3 in some tests), a headache
  that is voided, an unsigned DLT assessment, death on day 153.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from ecrf.api.app import create_app
from ecrf.config import Settings
from ecrf.domain.escalation import signed_dlt_outcome
from ecrf.domain.ids import subject_stream
from ecrf.forms import default_forms_dir
from ecrf.reports.tables import cell
from projections.as_of import replay_as_of
from projections.registry import all_projections
from projections.runner import ProjectionRunner
from tests.api.conftest import PASSWORD, Api
from tests.rows import comparable

CHECK_TIMES = (0, 0.0417, 1, 4, 7, 10, 14, 21, 28)
CHECK_QPCR = (0, 1200, 850, 5300, 42000, 61000, 18000, 7400, 2900)
PK_VISITS = ("D0", "UNS", "D1", "D4", "D7", "D10", "D14", "D21", "D28")
MONTH = 30.4375
REPORTS = (
    "/reports/safety/teae",
    "/reports/safety/crs-icans",
    "/reports/safety/dlt",
    "/reports/safety/rcl-ada",
    "/reports/pk?method=flow",
    "/reports/pk?method=qpcr",
    "/reports/efficacy/mrd",
    "/reports/efficacy/rfs",
)


def at(start: datetime, days: float) -> str:
    return (start + timedelta(days=days)).isoformat()


def on(start: datetime, days: int) -> str:
    return (start.date() + timedelta(days=days)).isoformat()


def adverse_event(
    term: str,
    onset: str,
    grade: int,
    *,
    resolution: str | None = None,
    serious: bool = False,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "term": term,
        "onset_date": onset,
        "ongoing": resolution is None,
        "grade": grade,
        "serious": serious,
        "relationship": "possible",
    }
    if resolution is not None:
        data["resolution_date"] = resolution
    if serious:
        data["sae_criteria"] = {
            "death": False,
            "life_threatening": False,
            "hospitalisation": True,
            "disability": False,
            "congenital_anomaly": False,
            "other_important": False,
        }
    return data


def crs(
    date: str, *, fever: bool, hypoxia: str = "none", hypotension: str = "none"
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "assessment_date": date,
        "fever": fever,
        "max_temperature_c": 38.9 if fever else 37.0,
        "hypotension": hypotension,
        "hypoxia": hypoxia,
        "antipyretic_or_anticytokine": False,
    }
    if hypoxia == "low_flow":
        data["oxygen_flow_l_per_min"] = 2
    return data


def icans(date: str, *, writes_sentence: bool) -> dict[str, Any]:
    return {
        "assessment_date": date,
        "orientation_year": True,
        "orientation_month": True,
        "orientation_city": True,
        "orientation_hospital": True,
        "follows_command": True,
        "writes_sentence": writes_sentence,
        "counts_back": True,
        "names_objects": 3,
        "consciousness": "alert",
        "seizure": "none",
        "motor_weakness": False,
        "cerebral_edema": "none",
    }


def pk_sample(moment: str, nominal: float, qpcr: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sample_datetime": moment,
        "nominal_day": nominal,
        "flow_blq": True,
        "qpcr_blq": qpcr == 0,
    }
    if qpcr:
        data["qpcr_copies_per_ug"] = qpcr
    return data


def infusion(moment: datetime, level: str = "DL1") -> dict[str, Any]:
    return {
        "infusion_datetime": moment.isoformat(),
        "dose_level": level,
        "weight_kg": 62.0,
        "total_car_t_cells": 62_000_000,
    }


def imaging(date: str, recurrence: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "imaging_date": date,
        "modality": "CT",
        "adequate": True,
        "recurrence": recurrence,
    }
    if recurrence:
        data["sites"] = ["liver"]
    return data


@dataclass
class Trial:
    """The constructed trial, with its entries by name for later corrections and voids."""

    api: Api
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def register(self, number: str) -> str:
        response = self.api.post("crc", "/subjects", {"site": "CHH", "screening_number": number})
        assert response.status_code == 201, response.text
        return str(response.json()["subject_id"])

    def enter(
        self, subject: str, form: str, visit: str, data: dict[str, Any], name: str = ""
    ) -> dict[str, Any]:
        body = {"form": form, "visit": visit, "data": data}
        response = self.api.post("crc", f"/subjects/{subject}/entries", body)
        assert response.status_code == 201, response.text
        entry: dict[str, Any] = response.json()
        entry["subject_id"] = subject
        if name:
            self.entries[name] = entry
        return entry

    def url(self, name: str) -> str:
        entry = self.entries[name]
        return f"/subjects/{entry['subject_id']}/entries/{entry['entry_id']}"

    def current(self, name: str) -> dict[str, Any]:
        response = self.api.get("crc", self.url(name))
        assert response.status_code == 200, response.text
        entry: dict[str, Any] = response.json()
        return entry

    def correct(self, name: str, changes: dict[str, Any]) -> None:
        body = {
            "changes": changes,
            "reason": "transcription error",
            "expected_revision": self.current(name)["revision"],
        }
        response = self.api.post("crc", f"{self.url(name)}/corrections", body)
        assert response.status_code == 200, response.text

    def void(self, name: str) -> None:
        body = {"reason": "entered in error", "expected_revision": self.current(name)["revision"]}
        response = self.api.post("crc", f"{self.url(name)}/void", body)
        assert response.status_code == 200, response.text

    def sign(self, name: str) -> None:
        body = {"username": "pi", "password": PASSWORD, "meaning": "approval"}
        response = self.api.post("pi", f"{self.url(name)}/signature", body)
        assert response.status_code == 201, response.text


A_INFUSED = datetime.fromisoformat("2023-04-25T09:40:00+08:00")
B_INFUSED = datetime.fromisoformat("2023-06-01T10:00:00+08:00")
C_INFUSED = datetime.fromisoformat("2023-07-01T09:00:00+08:00")


def build(api: Api) -> Trial:
    trial = Trial(api)
    a = trial.register("A01")
    t0 = A_INFUSED
    trial.enter(a, "informed_consent", "SCR", {"consent_date": "2023-03-20", "icf_version": "2.1"})
    trial.enter(
        a,
        "surgery_history",
        "SCR",
        {"resection_date": "2023-01-12", "r0": True, "liver_lesions": 2},
    )
    trial.enter(a, "ctdna_result", "SCR", {"sample_date": "2023-03-14", "result": "detected"})
    trial.enter(a, "cart_infusion", "D0", infusion(t0), "a_infusion")
    trial.enter(
        a,
        "adverse_event",
        "LOG",
        adverse_event(
            "Cytokine release syndrome", on(t0, 1), 2, resolution=on(t0, 4), serious=True
        ),
        "a_crs_ae",
    )
    trial.enter(
        a, "adverse_event", "LOG", adverse_event("Neutrophil count decreased", on(t0, 2), 4)
    )
    trial.enter(
        a, "adverse_event", "LOG", adverse_event("Nausea", on(t0, -1), 1, resolution=on(t0, 0))
    )
    trial.enter(a, "adverse_event", "LOG", adverse_event("Fatigue", on(t0, 46), 1))
    trial.enter(a, "crs_assessment", "D1", crs(on(t0, 1), fever=True, hypoxia="low_flow"))
    trial.enter(a, "crs_assessment", "D2", crs(on(t0, 2), fever=True))
    trial.enter(a, "crs_assessment", "D3", crs(on(t0, 3), fever=False))
    trial.enter(a, "icans_assessment", "D2", icans(on(t0, 2), writes_sentence=False))
    trial.enter(a, "icans_assessment", "D3", icans(on(t0, 3), writes_sentence=True))
    for days, qpcr, visit in zip(CHECK_TIMES, CHECK_QPCR, PK_VISITS, strict=True):
        trial.enter(a, "pk_sample", visit, pk_sample(at(t0, days), round(days), qpcr))
    trial.enter(a, "ctdna_result", "D28", {"sample_date": on(t0, 28), "result": "not_detected"})
    trial.enter(a, "ctdna_result", "M6", {"sample_date": on(t0, 180), "result": "detected"})
    trial.enter(a, "imaging", "M3", imaging(on(t0, 87), False))
    trial.enter(a, "imaging", "UNS", imaging(on(t0, 269), True))
    trial.enter(
        a, "ada_test", "D14", {"sample_date": on(t0, 14), "result": "positive", "titre": 160}
    )
    trial.enter(a, "rcl_test", "M3", {"sample_date": on(t0, 90), "result": "negative"})
    dlt = {"assessment_date": on(t0, 29), "evaluable": True, "dlt": False, "ae_entry_ids": []}
    trial.enter(a, "dlt_assessment", "D28", dlt, "a_dlt")
    trial.sign("a_dlt")

    b = trial.register("B02")
    t0 = B_INFUSED
    trial.enter(b, "cart_infusion", "D0", infusion(t0))
    colitis = trial.enter(
        b, "adverse_event", "LOG", adverse_event("Colitis", on(t0, 10), 3, resolution=on(t0, 24))
    )
    trial.enter(
        b, "adverse_event", "LOG", adverse_event("Fever", on(t0, 0), 1, resolution=on(t0, 1))
    )
    trial.enter(b, "adverse_event", "LOG", adverse_event("Cytokine release syndrome", on(t0, 1), 1))
    for days, qpcr, visit in ((1, 1000, "D1"), (7, 5000, "D7"), (14, 2000, "D14")):
        trial.enter(b, "pk_sample", visit, pk_sample(at(t0, days), days, qpcr))
    trial.enter(b, "imaging", "UNS", imaging(on(t0, 366), False))
    dlt = {
        "assessment_date": on(t0, 28),
        "evaluable": True,
        "dlt": True,
        "ae_entry_ids": [colitis["entry_id"]],
        "dlt_categories": ["non_haematological_grade_3_over_7_days"],
    }
    trial.enter(b, "dlt_assessment", "D28", dlt, "b_dlt")
    trial.sign("b_dlt")

    c = trial.register("C03")
    t0 = C_INFUSED
    trial.enter(c, "cart_infusion", "D0", infusion(t0))
    trial.enter(c, "adverse_event", "LOG", adverse_event("Diarrhea", on(t0, 5), 2), "c_diarrhea")
    trial.enter(c, "adverse_event", "LOG", adverse_event("Headache", on(t0, 3), 2), "c_headache")
    trial.void("c_headache")
    dlt = {"assessment_date": on(t0, 28), "evaluable": True, "dlt": False, "ae_entry_ids": []}
    trial.enter(c, "dlt_assessment", "D28", dlt)
    death = {
        "end_date": on(t0, 153),
        "reason": "death",
        "death_date": on(t0, 153),
        "death_cause": "disease_recurrence",
    }
    trial.enter(c, "end_of_study", "EOS", death)

    d = trial.register("D04")
    trial.enter(d, "ctdna_result", "SCR", {"sample_date": "2023-08-01", "result": "detected"})
    return trial


@pytest.fixture
def trial(api: Api) -> Trial:
    """The constructed trial, entered through the API."""
    return build(api)


def runner_of(api: Api) -> ProjectionRunner:
    runner: ProjectionRunner = api.client.app.state.projections  # type: ignore[attr-defined]
    return runner


def report(api: Api, path: str, user: str | None = None, **params: Any) -> Any:
    # The safety reviewers read the study's reports; a patient's timeline is casebook data.
    user = user or ("cra" if path.startswith("/subjects/") else "src")
    response = api.get(user, path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def rows_by_subject(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["subject_id"]: row for row in body["rows"]}


class TestSafety:
    def test_teae_rows_and_summary(self, trial: Trial) -> None:
        body = report(trial.api, "/reports/safety/teae")
        assert body["rows"] == [
            {
                "subject_id": "CHH-A01",
                "dose_level": "DL1",
                "teae_count": 2,
                "worst_grade": 4,
                "serious_count": 1,
            },
            {
                "subject_id": "CHH-B02",
                "dose_level": "DL1",
                "teae_count": 3,
                "worst_grade": 3,
                "serious_count": 0,
            },
            {
                "subject_id": "CHH-C03",
                "dose_level": "DL1",
                "teae_count": 1,
                "worst_grade": 2,
                "serious_count": 0,
            },
        ]
        dl1 = body["summary"]["dose_levels"][0]
        assert dl1 == {
            "dose_level": "DL1",
            "treated": 3,
            "with_teae": 3,
            "grade_3_plus": 2,
            "by_worst_grade": {"1": 0, "2": 1, "3": 1, "4": 1, "5": 0},
        }
        assert [level["treated"] for level in body["summary"]["dose_levels"][1:]] == [0, 0]
        terms = {t["term"]: t for t in body["summary"]["terms"]}
        assert set(terms) == {
            "Colitis",
            "Cytokine release syndrome",
            "Diarrhea",
            "Fever",
            "Neutrophil count decreased",
        }
        assert terms["Cytokine release syndrome"]["subjects"] == 2
        assert terms["Cytokine release syndrome"]["worst_grade"] == 2
        assert body["position"] == trial.api.client.app.state.application.max_position()  # type: ignore[attr-defined]

    def test_a_corrected_grade_changes_the_tables(self, trial: Trial) -> None:
        trial.correct("c_diarrhea", {"grade": 3})
        body = report(trial.api, "/reports/safety/teae")
        assert rows_by_subject(body)["CHH-C03"]["worst_grade"] == 3
        assert body["summary"]["dose_levels"][0]["grade_3_plus"] == 3
        assert body["summary"]["dose_levels"][0]["by_worst_grade"]["2"] == 0

    def test_a_voided_entry_leaves_every_analysis(self, trial: Trial) -> None:
        trial.void("a_crs_ae")
        teae = rows_by_subject(report(trial.api, "/reports/safety/teae"))["CHH-A01"]
        assert (teae["teae_count"], teae["serious_count"]) == (1, 0)
        crs_row = rows_by_subject(report(trial.api, "/reports/safety/crs-icans"))["CHH-A01"]
        # Without the AE, the assessments alone: grade 2 on day 1, grade 0 on day 3.
        assert (crs_row["crs_worst_grade"], crs_row["crs_duration_days"]) == (2, 2)
        trial.void("a_infusion")
        for path in REPORTS:
            body = report(trial.api, path)
            assert "CHH-A01" not in {row.get("subject_id") for row in body["rows"]}, path

    def test_crs_and_icans(self, trial: Trial) -> None:
        rows = rows_by_subject(report(trial.api, "/reports/safety/crs-icans"))
        assert rows["CHH-A01"] == {
            "subject_id": "CHH-A01",
            "dose_level": "DL1",
            "crs_worst_grade": 2,
            "crs_onset_day": 1,
            "crs_duration_days": 3,  # the AE resolved on day 4
            "icans_worst_grade": 1,
            "icans_onset_day": 2,
            "icans_duration_days": 1,
        }
        b = rows["CHH-B02"]
        assert (b["crs_worst_grade"], b["crs_onset_day"], b["crs_duration_days"]) == (1, 1, None)
        c = rows["CHH-C03"]
        assert (c["crs_worst_grade"], c["crs_onset_day"], c["icans_worst_grade"]) == (0, None, 0)

    def test_dlt_counts_signed_assessments_and_a_correction_unsigns(self, trial: Trial) -> None:
        dl1 = report(trial.api, "/reports/safety/dlt")["rows"][0]
        assert dl1 == {
            "dose_level": "DL1",
            "treated": 3,
            "assessed": 2,
            "evaluable": 2,
            "dlt": 1,
            "subjects_with_dlt": ["CHH-B02"],
        }
        trial.correct("b_dlt", {"comment": "colitis grade 3 for 9 days"})
        dl1 = report(trial.api, "/reports/safety/dlt")["rows"][0]
        assert (dl1["assessed"], dl1["dlt"], dl1["subjects_with_dlt"]) == (1, 0, [])
        trial.sign("b_dlt")
        assert report(trial.api, "/reports/safety/dlt")["rows"][0]["dlt"] == 1

    def test_the_most_recently_signed_assessment_counts_as_in_the_escalation(
        self, api_settings: Settings, tmp_path: Path
    ) -> None:
        # study.json collects one DLT assessment (D28, not repeatable); a study that repeats
        # the visit can have two signed ones, and then the report and the escalation
        # engine must pick the same: the most recently signed.
        forms = tmp_path / "forms"
        shutil.copytree(default_forms_dir(), forms)
        study = json.loads((forms / "study.json").read_text(encoding="utf-8"))
        for visit in study["visits"]:
            if visit["code"] == "D28":
                visit["repeatable"] = True
        (forms / "study.json").write_text(json.dumps(study), encoding="utf-8")
        with TestClient(create_app(replace(api_settings, forms_dir=forms))) as client:
            api = Api(client)
            for username, role in (("crc", "site_staff"), ("pi", "investigator")):
                api.user(username, [role])
            api.user("src", ["safety_reviewer"], [])
            trial = Trial(api)
            b = trial.register("B02")
            trial.enter(b, "cart_infusion", "D0", infusion(B_INFUSED))
            colitis = adverse_event("Colitis", on(B_INFUSED, 10), 3, resolution=on(B_INFUSED, 24))
            colitis_id = trial.enter(b, "adverse_event", "LOG", colitis)["entry_id"]
            first = {"assessment_date": on(B_INFUSED, 28), "evaluable": True, "dlt": True}
            first |= {
                "ae_entry_ids": [colitis_id],
                "dlt_categories": ["non_haematological_grade_3_over_7_days"],
            }
            trial.enter(b, "dlt_assessment", "D28", first, "first")
            trial.sign("first")
            later = {"assessment_date": on(B_INFUSED, 29), "evaluable": True, "dlt": False}
            trial.enter(b, "dlt_assessment", "D28", {**later, "ae_entry_ids": []}, "later")
            trial.sign("later")
            application = client.app.state.application  # type: ignore[attr-defined]

            def counted() -> tuple[list[str], str | None]:
                row = report(api, "/reports/safety/dlt")["rows"][0]
                subject = application.repository.get(subject_stream(b))
                outcome = signed_dlt_outcome(subject)
                return row["subjects_with_dlt"], outcome.entry_id if outcome else None

            assert counted() == ([], trial.entries["later"]["entry_id"])
            # The first one, recorded first, is corrected and signed again: now the newest.
            trial.correct("first", {"comment": "confirmed on review"})
            assert counted() == ([], trial.entries["later"]["entry_id"])
            trial.sign("first")
            assert counted() == ([b], trial.entries["first"]["entry_id"])
            assert report(api, "/reports/safety/dlt")["rows"][0]["assessed"] == 1

    def test_rcl_and_ada_rows(self, trial: Trial) -> None:
        rows = report(trial.api, "/reports/safety/rcl-ada")["rows"]
        assert [(r["subject_id"], r["test"], r["study_day"], r["result"]) for r in rows] == [
            ("CHH-A01", "ada", 14, "positive"),
            ("CHH-A01", "rcl", 90, "negative"),
        ]
        assert rows[0]["titre"] == 160


class TestPk:
    def test_the_protocol_check_value_through_the_api(self, trial: Trial) -> None:
        body = report(trial.api, "/reports/pk", method="qpcr")
        rows = rows_by_subject(body)
        a = rows["CHH-A01"]
        assert a["method"] == "qpcr"
        assert a["cmax"] == 61000
        assert a["tmax"] == 10
        assert a["tlast"] == 28
        assert a["auc_0_28"] == pytest.approx(493699.2056, abs=1e-3)
        assert a["auc_last"] == pytest.approx(a["auc_0_28"])
        assert [p[0] for p in a["profile"]] == pytest.approx(list(CHECK_TIMES), abs=1e-9)
        assert [p[1] for p in a["profile"]] == list(CHECK_QPCR)
        b = rows["CHH-B02"]
        assert (b["cmax"], b["tmax"]) == (5000, 7)
        dl1 = body["summary"]["dose_levels"][0]
        assert dl1["n"] == 2
        assert dl1["cmax_geomean"] == pytest.approx((61000 * 5000) ** 0.5)
        assert dl1["auc_0_28_geomean"] == pytest.approx((a["auc_0_28"] * b["auc_0_28"]) ** 0.5)

    def test_flow_rows_are_all_blq(self, trial: Trial) -> None:
        rows = rows_by_subject(report(trial.api, "/reports/pk", method="flow"))
        assert rows["CHH-A01"]["cmax"] is None
        assert all(value == 0 for _, value in rows["CHH-A01"]["profile"])

    def test_an_unknown_method_is_422(self, api: Api) -> None:
        for path in ("/reports/pk", "/reports/pk/plot.png"):
            response = api.get("src", path, params={"method": "elisa"})
            assert response.status_code == 422
            assert response.json()["detail"][0]["path"] == "/method"


class TestEfficacy:
    def test_mrd(self, trial: Trial) -> None:
        rows = rows_by_subject(report(trial.api, "/reports/efficacy/mrd"))
        assert set(rows) == {"CHH-A01", "CHH-B02", "CHH-C03"}  # D04 is in screening
        a = rows["CHH-A01"]
        assert a["ctdna_course"] == [
            ["2023-03-14", "detected"],
            ["2023-05-23", "not_detected"],
            ["2023-10-22", "detected"],
        ]
        assert a["clearance_date"] == "2023-05-23"
        assert a["molecular_relapse_date"] == "2023-10-22"
        assert a["imaging_recurrence_date"] == "2024-01-19"
        assert a["recurrence_within_24m_of_resection"] is True
        assert rows["CHH-B02"]["recurrence_within_24m_of_resection"] is None

    def test_rfs(self, trial: Trial) -> None:
        body = report(trial.api, "/reports/efficacy/rfs")
        rows = rows_by_subject(body)
        assert (rows["CHH-A01"]["time_months"], rows["CHH-A01"]["event"]) == (269 / MONTH, 1)
        assert (rows["CHH-B02"]["time_months"], rows["CHH-B02"]["event"]) == (366 / MONTH, 0)
        assert (rows["CHH-C03"]["time_months"], rows["CHH-C03"]["event_type"]) == (
            153 / MONTH,
            "death",
        )
        # Events at 153 and 269 days with 3 and 2 at risk: S = 2/3 * 1/2.
        assert body["summary"]["rfs_24m"]["estimate"] == pytest.approx(1 / 3)
        # Nobody was followed 24 months (B the longest, 12): the value is carried forward.
        assert body["summary"]["followed_to_horizon"] is False
        curve = body["summary"]["curve"]
        assert [(p["time"], p["at_risk"]) for p in curve] == [
            (0.0, 3),
            (153 / MONTH, 3),
            (269 / MONTH, 2),
            (366 / MONTH, 1),
        ]
        assert curve[1]["survival"] == pytest.approx(2 / 3)

    def test_rfs_reproduces_the_protocol_kaplan_meier_check_value(self, api: Api) -> None:
        trial = Trial(api)
        # Months 5.1, 11.0, 8.0, 14.2, 24.0 x3 (events 1,1,0,1,0,0,1) in whole days; 730
        # days stands for 24.0 months (730.5 days), keeping the ties.
        followed = [(155, True), (335, True), (243, False), (432, True)]
        followed += [(730, False), (730, False), (730, True)]
        for n, (days, event) in enumerate(followed):
            subject = trial.register(f"K{n}")
            trial.enter(subject, "cart_infusion", "D0", infusion(A_INFUSED))
            trial.enter(subject, "imaging", "UNS", imaging(on(A_INFUSED, days), event))
        body = report(api, "/reports/efficacy/rfs")
        survival = {round(p["time"] * MONTH): p["survival"] for p in body["summary"]["curve"]}
        assert survival[335] == pytest.approx(0.6857143, abs=1e-7)  # S(12)
        assert body["summary"]["rfs_24m"]["estimate"] == pytest.approx(0.3428571, abs=1e-7)


class TestTimeline:
    def test_a_subjects_course_on_the_study_day_axis(self, trial: Trial) -> None:
        body = report(trial.api, "/subjects/CHH-A01/timeline", user="crc")
        assert (body["subject_id"], body["dose_level"], body["infusion_date"]) == (
            "CHH-A01",
            "DL1",
            "2023-04-25",
        )
        seen = [(r["date"], r["study_day"], r["category"]) for r in body["rows"]]
        assert seen[:4] == [
            ("2023-01-12", -103, "resection"),
            ("2023-03-14", -42, "ctdna"),
            ("2023-03-20", -36, "consent"),
            ("2023-04-24", -1, "adverse_event"),
        ]
        assert ("2023-04-25", 0, "infusion") in seen
        assert ("2023-04-26", 1, "crs") in seen
        assert ("2023-04-27", 2, "icans") in seen
        assert ("2023-04-29", 4, "adverse_event_resolved") in seen
        assert ("2024-01-19", 269, "recurrence") in seen
        assert seen == sorted(seen, key=lambda item: item[0])
        infusion_row = next(r for r in body["rows"] if r["category"] == "infusion")
        assert "DL1" in infusion_row["what"]

    def test_death_is_on_the_timeline(self, trial: Trial) -> None:
        rows = report(trial.api, "/subjects/CHH-C03/timeline", user="cra")["rows"]
        assert rows[-1]["category"] == "death"
        assert rows[-1]["study_day"] == 153
        assert "Headache" not in " ".join(r["what"] for r in rows)  # voided

    def test_unknown_subjects_and_other_sites_are_404(self, trial: Trial) -> None:
        assert trial.api.get("crc", "/subjects/CHH-NOPE/timeline").status_code == 404
        trial.api.user("elsewhere", ["investigator"], [])
        assert trial.api.get("elsewhere", "/subjects/CHH-A01/timeline").status_code == 404
        assert trial.api.get("admin", "/subjects/CHH-A01/timeline").status_code == 403


class TestEnrolment:
    def test_the_dose_level_comes_from_enrolment_until_the_infusion(self, api: Api) -> None:
        trial = Trial(api)
        subject = trial.register("E01")
        for form in ("informed_consent", "eligibility"):
            example = api.get("crc", f"/forms/{form}/1").json()["examples"][0]
            trial.enter(subject, form, "SCR", example)
        enrolled = api.post("crc", f"/subjects/{subject}/enrolment")
        assert enrolled.status_code == 201, enrolled.text
        level = enrolled.json()["dose_level"]
        (row,) = report(api, "/reports/efficacy/mrd")["rows"]
        assert (row["subject_id"], row["dose_level"]) == (subject, level)
        timeline = report(api, f"/subjects/{subject}/timeline")
        assert timeline["dose_level"] == level
        assert f"Enrolled at {level}" in [r["what"] for r in timeline["rows"]]
        assert report(api, "/reports/safety/teae")["rows"] == []  # not treated yet
        trial.enter(subject, "cart_infusion", "D0", infusion(A_INFUSED, level))
        assert report(api, "/reports/safety/teae")["rows"][0]["dose_level"] == level


class TestAsOf:
    def test_every_report_as_of_a_moment_is_the_state_then(self, trial: Trial) -> None:
        api = trial.api
        time.sleep(0.02)
        moment = datetime.now(UTC)
        before = {path: report(api, path) for path in (*REPORTS, "/subjects/CHH-C03/timeline")}
        time.sleep(0.02)
        trial.correct("c_diarrhea", {"grade": 3})
        trial.void("a_crs_ae")
        trial.correct("b_dlt", {"comment": "reviewed"})
        d = "CHH-D04"
        trial.enter(d, "cart_infusion", "D0", infusion(C_INFUSED, "DL2"))
        for path, then in before.items():
            replayed = report(api, path, as_of=moment.isoformat())
            assert replayed["rows"] == then["rows"], path
            assert replayed.get("summary") == then.get("summary"), path
            # Nothing was written between the moment and the reports taken then.
            assert replayed["position"] == then["position"], path
            assert replayed["as_of"] is not None
        changed = [
            path
            for path, then in before.items()
            if (now := report(api, path))["rows"] != then["rows"]
            or now.get("summary") != then.get("summary")
        ]
        assert sorted(changed) == [
            "/reports/efficacy/mrd",
            "/reports/efficacy/rfs",
            "/reports/safety/crs-icans",
            "/reports/safety/dlt",
            "/reports/safety/teae",
            "/subjects/CHH-C03/timeline",
        ]

    def test_as_of_now_is_the_live_report_position_included(self, trial: Trial) -> None:
        api = trial.api
        # The last events are of types the clinical projections never read: a query
        # and a sign-in. Live and as_of(now) both state the log head all the same.
        query = {"path": "/grade", "text": "Source document?"}
        assert api.post("cra", f"{trial.url('c_diarrhea')}/queries", query).status_code == 201
        api.tokens.pop("src")
        api.headers("src")
        head = api.client.app.state.application.max_position()  # type: ignore[attr-defined]
        live = {path: report(api, path) for path in (*REPORTS, "/subjects/CHH-A01/timeline")}
        now = datetime.now(UTC).isoformat()
        for path, body in live.items():
            replayed = report(api, path, as_of=now)
            assert replayed["position"] == body["position"] == head, path
            assert {**replayed, "as_of": None} == {**body, "as_of": None}, path

    def test_an_as_of_position_is_the_export_cut_at_that_moment(self, trial: Trial) -> None:
        api = trial.api
        time.sleep(0.02)
        moment = datetime.now(UTC).isoformat()
        time.sleep(0.02)
        trial.correct("c_diarrhea", {"grade": 3})
        # A sign-in only: an event no report reads, yet part of the log as it stood.
        api.tokens.pop("cra")
        api.headers("cra")
        later = datetime.now(UTC).isoformat()
        for instant in (moment, later):
            cut = api.get("fda", "/exports/sdtm/metadata.json", params={"as_of": instant})
            position = cut.json()["ledger"]["position"]
            for path in ("/reports/safety/teae", "/reports/efficacy/rfs"):
                assert report(api, path, as_of=instant)["position"] == position, (path, instant)
        assert report(api, "/reports/safety/teae", as_of=later)["position"] == (
            api.client.app.state.application.max_position()  # type: ignore[attr-defined]
        )

    def test_before_anything_happened_reports_are_empty(self, trial: Trial) -> None:
        body = report(trial.api, "/reports/safety/teae", as_of="2000-01-01T00:00:00Z")
        assert (body["rows"], body["position"]) == ([], 0)
        response = trial.api.get(
            "crc", "/subjects/CHH-A01/timeline", params={"as_of": "2000-01-01T00:00:00Z"}
        )
        assert response.status_code == 404

    @pytest.mark.parametrize("bad", ["yesterday", "2023-13-45T00:00:00Z", "1e9"])
    def test_a_malformed_as_of_is_422(self, api: Api, bad: str) -> None:
        for path in ("/reports/safety/teae", "/reports/efficacy/rfs/plot.png"):
            assert api.get("src", path, params={"as_of": bad}).status_code == 422, (path, bad)


class TestFormats:
    def test_every_table_as_csv(self, trial: Trial) -> None:
        for path in REPORTS:
            json_body = report(trial.api, path)
            response = trial.api.get("cra", path, params={"format": "csv"})
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith("text/csv")
            parsed = list(csv.DictReader(io.StringIO(response.text)))
            assert len(parsed) == len(json_body["rows"]), path
            if parsed:
                assert list(parsed[0]) == [k for k in parsed[0] if k in json_body["rows"][0]]

    def test_every_summary_table_as_csv(self, trial: Trial) -> None:
        expected = {
            "/reports/safety/teae": ("rows", "dose_levels", "terms"),
            "/reports/safety/crs-icans": ("rows",),
            "/reports/safety/dlt": ("rows",),
            "/reports/safety/rcl-ada": ("rows",),
            "/reports/pk?method=flow": ("rows", "dose_levels"),
            "/reports/pk?method=qpcr": ("rows", "dose_levels"),
            "/reports/efficacy/mrd": ("rows",),
            "/reports/efficacy/rfs": ("rows", "curve"),
            "/subjects/CHH-A01/timeline": ("rows",),
        }
        for path, names in expected.items():
            body = report(trial.api, path)
            listed = {k for k, v in (body.get("summary") or {}).items() if isinstance(v, list)}
            assert set(names) == {"rows"} | listed, path  # every list the JSON has
            for name in names:
                response = trial.api.get("cra", path, params={"format": "csv", "table": name})
                assert response.status_code == 200, (path, name, response.text)
                assert response.headers["content-type"].startswith("text/csv")
                disposition = response.headers["content-disposition"]
                assert disposition.endswith('.csv"')
                assert (name == "rows") != (name in disposition)
                rows = body["rows"] if name == "rows" else body["summary"][name]
                parsed = list(csv.reader(io.StringIO(response.text)))
                header, lines = parsed[0], parsed[1:]
                assert len(lines) == len(rows) > 0, (path, name)
                for line, row in zip(lines, rows, strict=True):
                    assert set(header) == set(row), (path, name)
                    assert line == [cell(row[column]) for column in header], (path, name)
        teae = trial.api.get(
            "cra", "/reports/safety/teae", params={"format": "csv", "table": "dose_levels"}
        )
        dl1 = next(csv.DictReader(io.StringIO(teae.text)))
        assert (dl1["dose_level"], dl1["treated"], dl1["with_teae"]) == ("DL1", "3", "3")
        assert dl1["by_worst_grade"] == '{"1":0,"2":1,"3":1,"4":1,"5":0}'
        curve = trial.api.get(
            "cra", "/reports/efficacy/rfs", params={"format": "csv", "table": "curve"}
        )
        assert [r["at_risk"] for r in csv.DictReader(io.StringIO(curve.text))] == [
            "3", "3", "2", "1",
        ]  # fmt: skip

    def test_an_unknown_table_is_422_naming_the_tables(self, trial: Trial) -> None:
        for path, names in (
            ("/reports/safety/teae", "rows, dose_levels, terms"),
            ("/reports/efficacy/rfs", "rows, curve"),
            ("/reports/safety/dlt", "rows"),
            ("/subjects/CHH-A01/timeline", "rows"),
        ):
            for fmt in ("csv", "json"):
                params = {"format": fmt, "table": "rfs_24m"}
                response = trial.api.get("cra", path, params=params)
                assert response.status_code == 422, (path, fmt)
                (problem,) = response.json()["detail"]
                assert problem["path"] == "/table"
                assert problem["message"].endswith(f"this report has: {names}"), problem

    def test_csv_numbers_are_unrounded(self, trial: Trial) -> None:
        response = trial.api.get("src", "/reports/pk", params={"method": "qpcr", "format": "csv"})
        parsed = {r["subject_id"]: r for r in csv.DictReader(io.StringIO(response.text))}
        body = rows_by_subject(report(trial.api, "/reports/pk", method="qpcr"))
        assert float(parsed["CHH-A01"]["auc_0_28"]) == body["CHH-A01"]["auc_0_28"]
        assert parsed["CHH-A01"]["profile"].startswith("[[0.0,0.0],")

    def test_an_unknown_format_is_422(self, api: Api) -> None:
        response = api.get("src", "/reports/safety/dlt", params={"format": "xlsx"})
        assert response.status_code == 422

    def test_plots_are_png(self, trial: Trial) -> None:
        for path in ("/reports/pk/plot.png", "/reports/efficacy/rfs/plot.png"):
            response = trial.api.get("src", path, params={"method": "qpcr"})
            assert response.status_code == 200, path
            assert response.headers["content-type"] == "image/png"
            assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
            assert len(response.content) > 5000

    def test_plots_of_an_empty_trial_are_png_too(self, api: Api) -> None:
        for path in ("/reports/pk/plot.png", "/reports/efficacy/rfs/plot.png"):
            response = api.get("src", path)
            assert response.status_code == 200, path
            assert response.content.startswith(b"\x89PNG")


class TestAccess:
    def test_every_clinical_role_reads_reports_and_admin_is_403(self, api: Api) -> None:
        for path in (*REPORTS, "/reports/pk/plot.png", "/reports/projections"):
            for user in ("crc", "pi", "cra", "dm", "src", "fda"):
                assert api.get(user, path).status_code == 200, (path, user)
            assert api.get("admin", path).status_code == 403, path
            assert api.client.get(path).status_code == 401, path

    def test_site_bound_roles_see_only_their_sites(self, trial: Trial) -> None:
        api = trial.api
        api.user("elsewhere", ["site_staff"], [])
        api.user("everywhere", ["regulator"], [])
        for path in REPORTS:
            assert report(api, path, user="everywhere")["rows"] == report(api, path)["rows"]
            rows = report(api, path, user="elsewhere")["rows"]
            assert not {r.get("subject_id") for r in rows} - {None}, path


class TestReadYourWrites:
    def test_a_report_reflects_the_write_just_made(self, trial: Trial) -> None:
        trial.correct("c_diarrhea", {"grade": 3})
        position = trial.api.client.app.state.application.max_position()  # type: ignore[attr-defined]
        body = report(trial.api, "/reports/safety/teae")
        assert body["position"] == position
        assert rows_by_subject(body)["CHH-C03"]["worst_grade"] == 3


def table_rows(
    runner: ProjectionRunner, name: str, engine: Engine | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every row of a projection's tables (in ``engine``, else the runner's), by primary key."""
    projection = runner.projections[name]
    dump = {}
    with (engine or runner.engine).connect() as conn:
        for table in projection.metadata.sorted_tables:
            query = select(table).order_by(*table.primary_key.columns)
            dump[table.name] = [comparable(row) for row in conn.execute(query).mappings()]
    return dump


@pytest.fixture
def every_change(trial: Trial) -> Trial:
    """The trial after corrections, voids, re-signatures and a late infusion."""
    trial.correct("c_diarrhea", {"grade": 3})
    trial.correct("b_dlt", {"comment": "reviewed"})
    trial.sign("b_dlt")
    trial.void("a_crs_ae")
    trial.enter("CHH-D04", "cart_infusion", "D0", infusion(C_INFUSED, "DL2"))
    return trial


@pytest.mark.parametrize("name", [p.name for p in all_projections()])
def test_incremental_rebuild_and_as_of_now_give_the_same_rows(
    every_change: Trial, name: str
) -> None:
    """Issue 7: incremental state == full rebuild == as_of(now), table by table."""
    api = every_change.api
    runner = runner_of(api)
    for path in REPORTS:  # incremental: caught up report by report
        report(api, path)
    runner.catch_up()
    incremental = table_rows(runner, name)
    reports_before = {path: report(api, path) for path in REPORTS}
    assert any(incremental.values()) or name == "query_list", name
    projection = runner.projections[name]
    replayed, position = replay_as_of(
        runner.recorder, runner.mapper, [projection], datetime.now(UTC)
    )
    try:
        as_of_now = table_rows(runner, name, replayed)
    finally:
        replayed.dispose()
    assert (
        set(as_of_now) == set(incremental) == {t.name for t in projection.metadata.tables.values()}
    )
    for table, rows in incremental.items():
        assert as_of_now[table] == rows, table
    assert position == runner.position(name)
    runner.rebuild(name)
    rebuilt = table_rows(runner, name)
    for table, rows in incremental.items():
        assert rebuilt[table] == rows, table
    for path, body in reports_before.items():
        assert report(api, path) == body, path
