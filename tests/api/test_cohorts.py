"""Enrolment, the cohort state and signed SRC decisions through the HTTP API.

The walk-through reproduces the PROTOCOL.md worked case `1NNN 2NTT` (back to dose 1) and
its continuation `1NNN 2NTT 1NNT` (stop, MTD dose 1) end to end.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from tests.api.conftest import PASSWORD, Api

WHY = "The committee prefers more data at this dose before escalating."


def examples(api: Api, form: str) -> list[dict[str, Any]]:
    """The examples shipped in a form's schema: complete, valid entries."""
    schema = api.get("crc", f"/forms/{form}/1").json()
    found: list[dict[str, Any]] = copy.deepcopy(schema["examples"])
    return found


def entry(api: Api, subject_id: str, form: str, visit: str, data: dict[str, Any]) -> str:
    body = {"form": form, "visit": visit, "data": data}
    response = api.post("crc", f"/subjects/{subject_id}/entries", body)
    assert response.status_code == 201, response.text
    entry_id: str = response.json()["entry_id"]
    return entry_id


def eligible(api: Api, number: int, consent: bool = True) -> str:
    """Register a subject with consent and confirmed eligibility."""
    response = api.post("crc", "/subjects", {"site": "CHH", "screening_number": f"S{number:03d}"})
    assert response.status_code == 201, response.text
    subject_id: str = response.json()["subject_id"]
    if consent:
        entry(api, subject_id, "informed_consent", "SCR", examples(api, "informed_consent")[0])
    entry(api, subject_id, "eligibility", "SCR", examples(api, "eligibility")[0])
    return subject_id


def enrol(api: Api, subject_id: str, as_user: str = "crc") -> Any:
    return api.post(as_user, f"/subjects/{subject_id}/enrolment")


def infuse(api: Api, subject_id: str, dose_level: str) -> None:
    data = {**examples(api, "cart_infusion")[0], "dose_level": dose_level}
    entry(api, subject_id, "cart_infusion", "D0", data)


def assess(api: Api, subject_id: str, outcome: str) -> None:
    """Record and sign a DLT assessment: ``N``, ``T`` or ``X`` (N and T infuse first)."""
    casebook = api.get("pi", f"/subjects/{subject_id}").json()
    if outcome != "X" and not any(
        e["form"] == "cart_infusion" and not e["voided"] for e in casebook["entries"]
    ):
        infuse(api, subject_id, str(casebook["dose_level"]))
    data = examples(api, "dlt_assessment")[{"N": 0, "T": 1, "X": 2}[outcome]]
    entry_id = entry(api, subject_id, "dlt_assessment", "D28", data)
    body = {"username": "pi", "password": PASSWORD, "meaning": "approval"}
    response = api.post("pi", f"/subjects/{subject_id}/entries/{entry_id}/signature", body)
    assert response.status_code == 201, response.text


def treat(api: Api, first: int, outcomes: str, dose_level: str) -> list[str]:
    """Enrol one subject per letter, infuse them, then sign their DLT assessments."""
    subjects = [eligible(api, first + i) for i in range(len(outcomes))]
    for subject_id in subjects:
        response = enrol(api, subject_id)
        assert response.status_code == 201, response.text
        assert response.json()["dose_level"] == dose_level
        infuse(api, subject_id, dose_level)
    for subject_id, letter in zip(subjects, outcomes, strict=True):
        assess(api, subject_id, letter)
    return subjects


def decide(api: Api, action: str, dose_level: str | None, **overrides: Any) -> Any:
    as_user = overrides.pop("as_user", "src")
    body = {
        "action": action,
        "dose_level": dose_level,
        "rationale": "",
        "password": PASSWORD,
        "meaning": "approval",
        **overrides,
    }
    return api.post(as_user, "/cohorts/decisions", body)


def cohorts(api: Api, as_user: str = "src") -> dict[str, Any]:
    response = api.get(as_user, "/cohorts")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def level(state: dict[str, Any], dose_level: str) -> dict[str, Any]:
    row: dict[str, Any] = next(r for r in state["levels"] if r["dose_level"] == dose_level)
    return row


class TestEnrolment:
    def test_enrolment_assigns_a_dose_level_and_slot(self, api: Api) -> None:
        subject_id = eligible(api, 1)
        response = enrol(api, subject_id, as_user="pi")
        assert response.status_code == 201, response.text
        assert {k: response.json()[k] for k in ("dose_level", "slot")} == {
            "dose_level": "DL1",
            "slot": 1,
        }
        casebook = api.get("crc", f"/subjects/{subject_id}").json()
        assert (casebook["status"], casebook["dose_level"]) == ("enrolled", "DL1")
        listed = api.get("crc", "/subjects", params={"status": "enrolled"}).json()
        assert [(s["subject_id"], s["dose_level"]) for s in listed] == [(subject_id, "DL1")]
        audit = api.get("cra", f"/subjects/{subject_id}/audit").json()
        assert audit[-1]["action"] == "enrolled"
        assert audit[-1]["details"] == {"dose_level": "DL1", "slot": 1}

    def test_without_consent_the_subject_is_not_eligible(self, api: Api) -> None:
        subject_id = eligible(api, 1, consent=False)
        response = enrol(api, subject_id)
        assert response.status_code == 409
        assert "no informed consent is recorded" in response.json()["detail"]

    def test_enrolling_twice_conflicts(self, api: Api) -> None:
        subject_id = eligible(api, 1)
        assert enrol(api, subject_id).status_code == 201
        again = enrol(api, subject_id)
        assert again.status_code == 409
        assert "already enrolled at DL1" in again.json()["detail"]

    def test_a_full_cohort_says_its_dlt_window_is_pending(self, api: Api) -> None:
        for number in (1, 2, 3):
            assert enrol(api, eligible(api, number)).status_code == 201
        response = enrol(api, eligible(api, 4))
        assert response.status_code == 409
        assert "DLT window pending" in response.json()["detail"]

    @pytest.mark.parametrize("user", ["cra", "dm", "src", "fda", "admin"])
    def test_only_site_staff_and_investigators_enrol(self, api: Api, user: str) -> None:
        subject_id = eligible(api, 1)
        assert enrol(api, subject_id, as_user=user).status_code == 403

    def test_unknown_subject_is_404(self, api: Api) -> None:
        assert enrol(api, "CHH-NOPE").status_code == 404

    def test_unknown_fields_are_422(self, api: Api) -> None:
        subject_id = eligible(api, 1)
        response = api.post("crc", f"/subjects/{subject_id}/enrolment", {"dose_level": "DL3"})
        assert response.status_code == 422

    def test_twenty_concurrent_requests_get_three_slots(self, api: Api) -> None:
        subjects = [eligible(api, n) for n in range(1, 21)]
        api.headers("crc")
        barrier = threading.Barrier(len(subjects))
        statuses: list[tuple[int, str]] = []
        lock = threading.Lock()

        def attempt(subject_id: str) -> None:
            barrier.wait()
            response = enrol(api, subject_id)
            with lock:
                statuses.append((response.status_code, response.text))

        threads = [threading.Thread(target=attempt, args=(s,)) for s in subjects]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(code for code, _ in statuses).count(201) == 3
        refused = [text for code, text in statuses if code != 201]
        assert len(refused) == 17
        assert all("DLT window pending" in text for text in refused), refused
        state = cohorts(api)
        assert level(state, "DL1")["assigned"] == 3
        assert sorted(s["slot"] for s in state["slots"]) == [1, 2, 3]


class TestCohorts:
    def test_the_initial_state(self, api: Api) -> None:
        state = cohorts(api)
        assert state["outcomes"] == ""
        assert state["decisions"] == []
        assert state["mtd"] is None
        assert state["recommendation"]["action"] == "continue"
        assert state["recommendation"]["dose_level"] == "DL1"
        assert state["enrolment"]["open"] is True
        assert [
            (r["dose_level"], r["dose_per_kg"], r["assigned"], r["status"]) for r in state["levels"]
        ] == [
            ("DL1", 1000000, 0, "open"),
            ("DL2", 3000000, 0, "closed"),
            ("DL3", 6000000, 0, "closed"),
        ]
        for row in state["levels"]:
            assert {"infused", "evaluable", "dlt", "pending"} <= set(row)

    @pytest.mark.parametrize("user", ["crc", "pi", "cra", "dm", "src", "fda"])
    def test_every_clinical_role_reads_the_cohorts(self, api: Api, user: str) -> None:
        assert api.get(user, "/cohorts").status_code == 200

    def test_the_admin_and_strangers_cannot(self, api: Api) -> None:
        assert api.get("admin", "/cohorts").status_code == 403
        assert api.client.get("/cohorts").status_code == 401

    def test_counts_follow_infusions_and_signed_outcomes(self, api: Api) -> None:
        subjects = [eligible(api, n) for n in (1, 2, 3)]
        for subject_id in subjects:
            assert enrol(api, subject_id).status_code == 201
        infuse(api, subjects[0], "DL1")
        infuse(api, subjects[1], "DL1")
        assess(api, subjects[0], "N")
        assess(api, subjects[2], "X")
        state = cohorts(api)
        row = level(state, "DL1")
        assert {k: row[k] for k in ("assigned", "infused", "evaluable", "dlt", "pending")} == {
            "assigned": 3,
            "infused": 2,
            "evaluable": 1,
            "dlt": 0,
            "pending": 1,
        }
        assert row["not_evaluable"] == 1
        assert row["open_slots"] == 1  # the replacement for the non-evaluable patient
        assert state["outcomes"] == "1N"

    def test_the_plot_is_a_png(self, api: Api) -> None:
        treat(api, 1, "NT", "DL1")
        response = api.get("cra", "/cohorts/plot.png")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


class TestDecisions:
    @pytest.mark.parametrize("user", ["crc", "pi", "cra", "dm", "fda", "admin"])
    def test_only_the_safety_reviewer_decides(self, api: Api, user: str) -> None:
        assert decide(api, "stop", None, rationale=WHY, as_user=user).status_code == 403

    def test_a_wrong_password_is_refused_and_counted(self, api: Api) -> None:
        for _ in range(4):
            response = decide(api, "stop", None, rationale=WHY, password="nope")
            assert response.status_code == 403
        assert decide(api, "stop", None, rationale=WHY, password="nope").status_code == 423
        assert api.get("admin", "/users/src").json()["locked"] is True
        assert cohorts(api, "cra")["decisions"] == []

    def test_no_decision_before_the_cohort_is_complete(self, api: Api) -> None:
        treat(api, 1, "NN", "DL1")
        response = decide(api, "escalate", "DL2")
        assert response.status_code == 409
        assert "not complete" in response.json()["detail"]

    @pytest.mark.parametrize(
        ("body", "path"),
        [
            ({"action": "leap"}, "/action"),
            ({"dose_level": "DL9"}, "/dose_level"),
            ({"dose_level": "DL3"}, "/dose_level"),
            ({"meaning": "whim"}, "/meaning"),
            ({"unexpected": 1}, "/unexpected"),
        ],
    )
    def test_bad_decisions_are_422(self, api: Api, body: dict[str, Any], path: str) -> None:
        treat(api, 1, "NNN", "DL1")
        fields = dict(body)  # the parameter is shared by both backends' cases
        action = fields.pop("action", "escalate")
        response = decide(api, action, fields.pop("dose_level", "DL2"), **fields)
        assert response.status_code == 422, response.text
        assert path in [p["path"] for p in response.json()["detail"]]

    def test_departing_from_the_recommendation_needs_a_justification(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        short = decide(api, "expand", "DL1", rationale="More data.")
        assert short.status_code == 422
        assert short.json()["detail"][0]["path"] == "/rationale"
        response = decide(api, "expand", "DL1", rationale=WHY)
        assert response.status_code == 201, response.text
        decision = response.json()
        assert decision["follows_recommendation"] is False
        assert decision["recommendation"]["action"] == "escalate"
        assert decision["rationale"] == WHY
        assert cohorts(api)["enrolment"]["dose_level"] == "DL1"


def test_protocol_worked_case_end_to_end(api: Api) -> None:
    """PROTOCOL.md: `1NNN 2NTT` -> back to dose 1; `1NNN 2NTT 1NNT` -> stop, MTD 1."""
    treat(api, 1, "NNN", "DL1")
    state = cohorts(api, "crc")
    assert state["outcomes"] == "1NNN"
    assert (state["recommendation"]["action"], state["recommendation"]["dose_level"]) == (
        "escalate",
        "DL2",
    )
    assert "awaiting the Safety Review Committee decision" in enrol(api, eligible(api, 90)).text
    response = decide(api, "escalate", "DL2")
    assert response.status_code == 201, response.text
    first = response.json()
    assert (first["signer"], first["meaning"], first["follows_recommendation"]) == (
        "src",
        "approval",
        True,
    )

    treat(api, 4, "NTT", "DL2")
    state = cohorts(api, "pi")
    assert state["outcomes"] == "1NNN 2NTT"
    assert (state["recommendation"]["action"], state["recommendation"]["dose_level"]) == (
        "deescalate",
        "DL1",
    )
    assert level(state, "DL2")["status"] == "halted"
    assert "halted" in enrol(api, "CHH-S090").json()["detail"]
    assert decide(api, "deescalate", "DL1").status_code == 201

    treat(api, 7, "NNT", "DL1")
    state = cohorts(api, "fda")
    assert state["outcomes"] == "1NNN 2NTT 1NNT"
    assert state["recommendation"]["action"] == "stop"
    assert state["recommendation"]["mtd"] == "DL1"
    response = decide(api, "stop", "DL1")
    assert response.status_code == 201, response.text

    state = cohorts(api, "cra")
    assert state["stopped"] is True
    assert state["mtd"] == "DL1"
    assert [(d["action"], d["dose_level"]) for d in state["decisions"]] == [
        ("escalate", "DL2"),
        ("deescalate", "DL1"),
        ("stop", "DL1"),
    ]
    assert [d["outcomes"] for d in state["decisions"]] == [
        "1NNN",
        "1NNN 2NTT",
        "1NNN 2NTT 1NNT",
    ]
    rows = {r["dose_level"]: r for r in state["levels"]}
    assert {k: rows["DL1"][k] for k in ("assigned", "infused", "evaluable", "dlt")} == {
        "assigned": 6,
        "infused": 6,
        "evaluable": 6,
        "dlt": 1,
    }
    assert {k: rows["DL2"][k] for k in ("assigned", "evaluable", "dlt", "status")} == {
        "assigned": 3,
        "evaluable": 3,
        "dlt": 2,
        "status": "halted",
    }
    assert rows["DL3"]["assigned"] == 0
    refused = enrol(api, "CHH-S090")
    assert refused.status_code == 409
    assert "study is stopped" in refused.json()["detail"]
    assert decide(api, "stop", None, rationale=WHY).status_code == 409
