"""Derived grades and soft checks through the API: data is accepted, a system query opens."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api
from tests.api.test_casebook import SUBJECT, example, register


def _enter(api: Api, form: str, visit: str, data: dict[str, Any]) -> dict[str, Any]:
    response = api.post(
        "crc", f"/subjects/{SUBJECT}/entries", {"form": form, "visit": visit, "data": data}
    )
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry


def _system_queries(api: Api) -> list[dict[str, Any]]:
    return [q for q in api.get("cra", "/queries").json() if q["system"]]


def test_the_server_derives_the_crs_grade_and_queries_a_different_investigator_grade(
    api: Api,
) -> None:
    register(api)
    data = example(api, "crs_assessment")
    data.update(fever=True, hypotension="one_vasopressor", hypoxia="none", investigator_grade=2)
    data.pop("oxygen_flow_l_per_min", None)  # no oxygen without hypoxia
    data["vasopressors"] = ["norepinephrine"]
    entry = _enter(api, "crs_assessment", "D1", data)
    assert entry["data"]["grade"] == 3
    assert entry["open_queries"] == 1
    [query] = _system_queries(api)
    assert (query["path"], query["opened_by"], query["state"]) == (
        "/investigator_grade",
        "system",
        "open",
    )
    audit = api.get("fda", f"/subjects/{SUBJECT}/audit").json()
    opened = next(r for r in audit if r["action"] == "query_opened")
    assert (opened["user"], opened["role"]) == ("system", "system")

    # Agreeing with the derived grade resolves the system query by itself.
    fix = {
        "changes": {"investigator_grade": 3},
        "reason": "regraded per ASTCT",
        "expected_revision": 1,
    }
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
    corrected = api.post("pi", url, fix)
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["open_queries"] == 0
    assert [q["state"] for q in _system_queries(api)] == ["closed"]


def test_a_correction_recomputes_derived_values(api: Api) -> None:
    register(api)
    data = example(api, "icans_assessment")
    entry = _enter(api, "icans_assessment", "D1", data)
    before = entry["data"]["ice_score"]
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
    patch = {"counts_back": not data["counts_back"]}
    body = {"changes": patch, "reason": "worksheet re-read", "expected_revision": 1}
    response = api.post("crc", url, body)
    assert response.status_code == 200, response.text
    after = response.json()["data"]["ice_score"]
    assert abs(after - before) == 1
    audit = api.get("cra", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/audit").json()
    correction = next(r for r in audit if r["action"] == "entry_corrected")
    assert {"/counts_back", "/ice_score"} <= {c["path"] for c in correction["changes"]}
    # The worksheet total no longer matches the items: the system asks about it.
    assert audit[-1]["action"] == "query_opened"
    assert audit[-1]["details"]["path"] == "/ice_total_recorded"


def test_an_off_target_cell_dose_is_accepted_and_queried(api: Api) -> None:
    register(api)
    data = example(api, "cart_infusion")
    data["total_car_t_cells"] = int(data["weight_kg"] * 1_000_000 * 1.5)
    entry = _enter(api, "cart_infusion", "D0", data)
    assert entry["data"]["cells_per_kg"] == 1_500_000
    assert [q["path"] for q in _system_queries(api)] == ["/total_car_t_cells"]


def test_an_entry_outside_its_visit_window_is_queried(api: Api) -> None:
    register(api)
    _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    vitals = example(api, "vital_signs")
    vitals["assessment_datetime"] = "2030-01-01T10:00:00+08:00"
    _enter(api, "vital_signs", "D7", vitals)
    assert "/assessment_datetime" in [q["path"] for q in _system_queries(api)]


def test_hard_checks_stay_422(api: Api) -> None:
    register(api)
    data = example(api, "crs_assessment")
    data["hypoxia"] = "a little"
    body = {"form": "crs_assessment", "visit": "D1", "data": data}
    response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
    assert response.status_code == 422
    assert _system_queries(api) == []


def test_two_findings_on_one_field_are_two_queries_and_both_close(api: Api) -> None:
    register(api)
    consent = example(api, "informed_consent")
    _enter(api, "informed_consent", "SCR", consent)
    _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    ae = example(api, "adverse_event")
    ae["onset_date"] = "2000-01-01"  # before consent and before the infusion
    ae.pop("resolution_date", None)
    ae["ongoing"] = True
    ae["outcome"] = "not_recovered"  # an ongoing event has not recovered
    entry = _enter(api, "adverse_event", "LOG", ae)
    onset = [q for q in _system_queries(api) if q["path"] == "/onset_date"]
    assert len(onset) == 2
    infusion_day = example(api, "cart_infusion")["infusion_datetime"][:10]
    fix = {"changes": {"onset_date": infusion_day}, "reason": "typo", "expected_revision": 1}
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
    assert api.post("crc", url, fix).status_code == 200
    onset = [q for q in _system_queries(api) if q["path"] == "/onset_date"]
    assert [q["state"] for q in onset] == ["closed", "closed"]
