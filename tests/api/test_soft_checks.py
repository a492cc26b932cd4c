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


def test_voiding_an_entry_closes_what_the_system_asked_about_it(api: Api) -> None:
    register(api)
    data = example(api, "cart_infusion")
    data["total_car_t_cells"] = int(data["weight_kg"] * 1_000_000 * 1.5)  # off target
    entry = _enter(api, "cart_infusion", "D0", data)
    [query] = _system_queries(api)
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
    asked = api.post("cra", f"{url}/queries", {"path": "/weight_kg", "text": "Source weight?"})
    assert asked.status_code == 201, asked.text
    voided = api.post("crc", f"{url}/void", {"reason": "entered twice", "expected_revision": 1})
    assert voided.status_code == 200, voided.text
    closed = api.get("cra", f"/queries/{query['query_id']}").json()
    assert closed["state"] == "closed"
    assert closed["messages"][-1]["text"] == "Closed: the entry was voided."
    # The monitor's own query is a person's question: it stays open.
    assert api.get("cra", f"/queries/{asked.json()['query_id']}").json()["state"] == "open"
    audit = api.get("fda", f"/subjects/{SUBJECT}/audit").json()
    closing = next(r for r in audit if r["action"] == "query_closed")
    assert (closing["user"], closing["role"]) == ("system", "system")


# Visit windows follow their anchor: a window finding depends on another entry's date.

WINDOW_VITALS = "2030-01-01T10:00:00+08:00"  # a D7 visit that only fits an infusion on 25 Dec


def _window_queries(api: Api, entry_id: str) -> list[dict[str, Any]]:
    """The system queries on an entry's date, each with its whole conversation."""
    return [
        api.get("cra", f"/queries/{q['query_id']}").json()
        for q in _system_queries(api)
        if q["entry_id"] == entry_id and q["path"] == "/assessment_datetime"
    ]


def _correct_infusion(api: Api, infusion: dict[str, Any], revision: int, when: str) -> None:
    url = f"/subjects/{SUBJECT}/entries/{infusion['entry_id']}/corrections"
    body = {
        "changes": {"infusion_datetime": when, "infusion_end_datetime": when},
        "reason": "date from the infusion record",
        "expected_revision": revision,
    }
    response = api.post("crc", url, body)
    assert response.status_code == 200, response.text


def _vitals_at_d7(api: Api) -> dict[str, Any]:
    vitals = example(api, "vital_signs")
    vitals["assessment_datetime"] = WINDOW_VITALS
    return _enter(api, "vital_signs", "D7", vitals)


def test_recording_the_infusion_checks_the_windows_of_earlier_entries(api: Api) -> None:
    register(api)
    vitals = _vitals_at_d7(api)
    assert vitals["open_queries"] == 0  # no infusion yet: nothing to count from
    _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    [query] = _window_queries(api, vitals["entry_id"])
    assert (query["state"], query["opened_by"], query["form"]) == ("open", "system", "vital_signs")
    assert "D7 window" in query["messages"][0]["text"]
    casebook = api.get("cra", f"/subjects/{SUBJECT}").json()
    by_id = {e["entry_id"]: e for e in casebook["entries"]}
    assert by_id[vitals["entry_id"]]["open_queries"] == 1


def test_correcting_the_infusion_date_closes_stale_window_queries(api: Api) -> None:
    register(api)
    vitals = _vitals_at_d7(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    [stale] = _window_queries(api, vitals["entry_id"])
    _correct_infusion(api, infusion, 1, "2029-12-25T09:40:00+08:00")  # vitals now on day 7
    [closed] = _window_queries(api, vitals["entry_id"])
    assert closed["query_id"] == stale["query_id"]
    assert closed["state"] == "closed"
    assert closed["messages"][-1]["user"] == "system"
    assert "recomputed" in closed["messages"][-1]["text"]
    audit = api.get("fda", f"/subjects/{SUBJECT}/audit").json()
    closing = [r for r in audit if r["action"] == "query_closed"]
    assert closing[-1]["user"] == "system"
    assert infusion["entry_id"] in closing[-1]["reason"]


def test_correcting_the_infusion_date_can_open_window_queries(api: Api) -> None:
    register(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    vitals = example(api, "vital_signs")
    vitals["assessment_datetime"] = "2023-05-02T10:00:00+08:00"  # day 7: inside D7
    entry = _enter(api, "vital_signs", "D7", vitals)
    assert _window_queries(api, entry["entry_id"]) == []
    _correct_infusion(api, infusion, 1, "2023-04-20T09:40:00+08:00")  # now day 12
    [query] = _window_queries(api, entry["entry_id"])
    assert query["state"] == "open"
    assert query["messages"][0]["text"].endswith("It is day 12.")
    # Moved again, still outside: the old finding is closed, the new one asked.
    _correct_infusion(api, infusion, 2, "2023-04-21T09:40:00+08:00")  # day 11
    states = {
        q["messages"][0]["text"].rpartition("It is ")[2]: q["state"]
        for q in _window_queries(api, entry["entry_id"])
    }
    assert states == {"day 12.": "closed", "day 11.": "open"}


def test_voiding_the_infusion_closes_window_queries(api: Api) -> None:
    register(api)
    vitals = _vitals_at_d7(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    url = f"/subjects/{SUBJECT}/entries/{infusion['entry_id']}/void"
    assert (
        api.post("crc", url, {"reason": "wrong subject", "expected_revision": 1}).status_code == 200
    )
    assert [q["state"] for q in _window_queries(api, vitals["entry_id"])] == ["closed"]


def test_a_window_finding_a_monitor_closed_is_not_asked_again(api: Api) -> None:
    register(api)
    vitals = _vitals_at_d7(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    [query] = _window_queries(api, vitals["entry_id"])
    closed = api.post(
        "cra", f"/queries/{query['query_id']}/close", {"text": "Visit confirmed late."}
    )
    assert closed.status_code == 200, closed.text
    # A correction of the infusion that leaves its date alone changes no window.
    url = f"/subjects/{SUBJECT}/entries/{infusion['entry_id']}/corrections"
    body = {
        "changes": {"product_lot": "CEA-CAR-230418-02"},
        "reason": "lot",
        "expected_revision": 1,
    }
    assert api.post("crc", url, body).status_code == 200
    assert [q["state"] for q in _window_queries(api, vitals["entry_id"])] == ["closed"]


# PK: a value below the sample's own LLOQ, when the lab reported one.


def test_pk_values_are_checked_against_the_samples_own_lloq(api: Api) -> None:
    register(api)
    sample = example(api, "pk_sample")
    sample.update(flow_cells_per_ul=3.0, flow_lloq_cells_per_ul=5.0)
    queried = _enter(api, "pk_sample", "D10", sample)
    [query] = [q for q in _system_queries(api) if q["entry_id"] == queried["entry_id"]]
    assert query["path"] == "/flow_cells_per_ul"
    assert "LLOQ (5 CAR+ cells/µL)" in query["last_text"]
    # Below the study's LLOQ (1) but above this lab's (0.2): a valid result, no query.
    sample.update(flow_cells_per_ul=0.5, flow_lloq_cells_per_ul=0.2, nominal_day=14)
    sample["sample_datetime"] = "2023-05-09T08:10:00+08:00"
    quiet = _enter(api, "pk_sample", "D14", sample)
    assert [q for q in _system_queries(api) if q["entry_id"] == quiet["entry_id"]] == []
    # Without its own LLOQ the study's applies.
    sample.pop("flow_lloq_cells_per_ul")
    sample.update(nominal_day=21, sample_datetime="2023-05-16T08:10:00+08:00")
    study_lloq = _enter(api, "pk_sample", "D21", sample)
    [query] = [q for q in _system_queries(api) if q["entry_id"] == study_lloq["entry_id"]]
    assert "LLOQ (1 CAR+ cells/µL)" in query["last_text"]


# Date order follows the other entry too: a finding compares dates on two entries.

ONSET_BEFORE_INFUSION = "Adverse event onset before the CAR-T infusion"


def _order_queries(api: Api, entry_id: str, path: str) -> list[dict[str, Any]]:
    """The system date-order queries on one field of an entry, with their conversations."""
    on_field = [
        api.get("cra", f"/queries/{q['query_id']}").json()
        for q in _system_queries(api)
        if q["entry_id"] == entry_id and q["path"] == path
    ]
    return [q for q in on_field if q["messages"][0]["text"].startswith(ONSET_BEFORE_INFUSION)]


def _ae_with_onset(api: Api, onset: str) -> dict[str, Any]:
    ae = example(api, "adverse_event")
    ae["onset_date"] = onset
    return _enter(api, "adverse_event", "LOG", ae)


def test_correcting_the_infusion_date_closes_an_adverse_events_onset_query(api: Api) -> None:
    register(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))  # 25 Apr
    ae = _ae_with_onset(api, "2023-04-24")
    [query] = _order_queries(api, ae["entry_id"], "/onset_date")
    assert query["state"] == "open"
    _correct_infusion(api, infusion, 1, "2023-04-23T09:40:00+08:00")  # now before the onset
    [closed] = _order_queries(api, ae["entry_id"], "/onset_date")
    assert closed["query_id"] == query["query_id"]
    assert (closed["state"], closed["messages"][-1]["user"]) == ("closed", "system")
    assert "cart_infusion" in closed["messages"][-1]["text"]
    entry = api.get("cra", f"/subjects/{SUBJECT}/entries/{ae['entry_id']}").json()
    assert entry["open_queries"] == 0
    closing = api.get("fda", f"/subjects/{SUBJECT}/audit").json()[-1]
    assert (closing["action"], closing["user"], closing["entry_id"]) == (
        "query_closed",
        "system",
        ae["entry_id"],
    )
    assert infusion["entry_id"] in closing["reason"]


def test_a_conflict_the_changed_entry_asks_about_is_not_asked_twice(api: Api) -> None:
    register(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    ae = _ae_with_onset(api, "2023-04-26")  # the day after the infusion: fine
    assert _order_queries(api, ae["entry_id"], "/onset_date") == []
    _correct_infusion(api, infusion, 1, "2023-04-27T09:40:00+08:00")  # now after the onset
    [asked] = _order_queries(api, infusion["entry_id"], "/infusion_datetime")
    assert asked["state"] == "open"
    assert _order_queries(api, ae["entry_id"], "/onset_date") == []
    # The site corrects the adverse event instead: the infusion's query is closed with it.
    url = f"/subjects/{SUBJECT}/entries/{ae['entry_id']}/corrections"
    fix = {
        "changes": {"onset_date": "2023-04-28", "resolution_date": "2023-04-30"},
        "reason": "onset from the nursing notes",
        "expected_revision": 1,
    }
    assert api.post("crc", url, fix).status_code == 200
    [closed] = _order_queries(api, infusion["entry_id"], "/infusion_datetime")
    assert (closed["state"], closed["messages"][-1]["user"]) == ("closed", "system")
    assert "adverse_event" in closed["messages"][-1]["text"]


def test_voiding_the_infusion_closes_onset_queries(api: Api) -> None:
    register(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    ae = _ae_with_onset(api, "2023-04-24")
    url = f"/subjects/{SUBJECT}/entries/{infusion['entry_id']}/void"
    void = {"reason": "entered for the wrong subject", "expected_revision": 1}
    assert api.post("crc", url, void).status_code == 200
    assert [q["state"] for q in _order_queries(api, ae["entry_id"], "/onset_date")] == ["closed"]


def test_a_conflict_that_still_holds_stays_open(api: Api) -> None:
    register(api)
    infusion = _enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    ae = _ae_with_onset(api, "2023-04-20")
    _correct_infusion(api, infusion, 1, "2023-04-22T09:40:00+08:00")  # still after the onset
    [query] = _order_queries(api, ae["entry_id"], "/onset_date")
    assert query["state"] == "open"
