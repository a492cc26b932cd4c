"""Enrolment, the cohort state and signed SRC decisions through the HTTP API.

Whole trials are walked through the API, GET /cohorts checked after every step: the
PROTOCOL.md worked case `1NNN 2NTT 1NNT` (too toxic at dose 2, back to dose 1, stop with
MTD dose 1), escalation to the top dose and an MTD there, `1NTT` (stop with no MTD), and a
non-evaluable patient replaced at the same dose.
"""

from __future__ import annotations

import copy
import io
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def enrol_and_infuse(api: Api, first: int, count: int, dose_level: str) -> list[str]:
    """Enrol ``count`` new eligible subjects (numbered from ``first``) and infuse them."""
    subjects = [eligible(api, first + i) for i in range(count)]
    for subject_id in subjects:
        response = enrol(api, subject_id)
        assert response.status_code == 201, response.text
        assert response.json()["dose_level"] == dose_level
        infuse(api, subject_id, dose_level)
    return subjects


def treat(api: Api, first: int, outcomes: str, dose_level: str) -> list[str]:
    """Enrol one subject per letter, infuse them, then sign their DLT assessments."""
    subjects = enrol_and_infuse(api, first, len(outcomes), dose_level)
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


COUNTS = ("assigned", "infused", "evaluable", "dlt", "pending", "status")
"""The fields of each GET /cohorts level that a walk checks at every step, in this order."""

Counts = tuple[int, int, int, int, int, str]
Levels = dict[str, Counts]
UNTREATED: Counts = (0, 0, 0, 0, 0, "closed")
FRESH: Levels = {"DL1": (0, 0, 0, 0, 0, "open"), "DL2": UNTREATED, "DL3": UNTREATED}


@dataclass
class Walk:
    """A whole trial driven through the API, checking GET /cohorts after every step.

    Each check compares the outcome string (API.md notation), the engine's recommendation
    (action, dose level, and a rule a reviewer can read), the counts and status of every
    dose level, and the decisions recorded so far with whether they follow the engine.
    """

    api: Api
    outcomes: str = ""
    recommendation: tuple[str, str | None] = ("continue", "DL1")
    decisions: list[tuple[str, str | None, bool]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    enrolled: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    def check(self, levels: Levels, *, written: int = 0) -> dict[str, Any]:
        """GET /cohorts and compare it with what this step must show."""
        state = cohorts(self.api)
        assert state["outcomes"] == self.outcomes
        advice = state["recommendation"]
        assert (advice["action"], advice["dose_level"]) == self.recommendation, advice
        assert len(advice["rule"]) > 20, advice
        counts = {r["dose_level"]: tuple(r[k] for k in COUNTS) for r in state["levels"]}
        assert counts == levels
        decided = [
            (d["action"], d["dose_level"], d["follows_recommendation"]) for d in state["decisions"]
        ]
        assert decided == self.decisions
        # Served from the projection: a writer reads its own write.
        assert state["position"] >= written
        self.state = state
        return state

    def enrol(self, dose_level: str, count: int, levels: Levels) -> list[str]:
        """Enrol and infuse ``count`` new subjects at ``dose_level`` (outcomes pending)."""
        subjects = enrol_and_infuse(self.api, self.enrolled + 1, count, dose_level)
        self.enrolled += count
        self.pending += subjects
        self.check(levels)
        return subjects

    def assess(
        self, letters: str, outcomes: str, recommendation: tuple[str, str | None], levels: Levels
    ) -> None:
        """Sign the next pending patients' DLT assessments: N, T, or X (not evaluable)."""
        for letter in letters:
            assess(self.api, self.pending.pop(0), letter)
        self.outcomes, self.recommendation = outcomes, recommendation
        self.check(levels)

    def decide(
        self, action: str, dose_level: str | None, levels: Levels, rationale: str = ""
    ) -> dict[str, Any]:
        """Record a decision; one with a rationale is expected to depart from the engine."""
        given = self.state["recommendation"]
        response = decide(self.api, action, dose_level, rationale=rationale)
        assert response.status_code == 201, response.text
        decision: dict[str, Any] = response.json()
        follows = not rationale
        assert (decision["action"], decision["dose_level"]) == (action, dose_level)
        assert decision["follows_recommendation"] is follows
        assert decision["recommendation"] == given
        assert decision["outcomes"] == self.outcomes
        assert (decision["signer"], decision["meaning"]) == ("src", "approval")
        self.decisions.append((action, dose_level, follows))
        self.check(levels, written=decision["position"])
        return decision


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


class TestWholeTrials:
    def test_protocol_worked_case_end_to_end(self, api: Api) -> None:
        """PROTOCOL.md: `1NNN 2NTT` -> back to dose 1; `1NNN 2NTT 1NNT` -> stop, MTD 1."""
        walk = Walk(api)
        walk.check(FRESH)
        walk.enrol("DL1", 3, {"DL1": (3, 3, 0, 0, 3, "open"), "DL2": UNTREATED, "DL3": UNTREATED})
        assert "DLT window pending" in enrol(api, eligible(api, 90)).text
        walk.assess(
            "NNN",
            "1NNN",
            ("escalate", "DL2"),
            {"DL1": (3, 3, 3, 0, 0, "open"), "DL2": UNTREATED, "DL3": UNTREATED},
        )
        assert "awaiting the Safety Review Committee decision" in enrol(api, "CHH-S090").text
        walk.decide(
            "escalate",
            "DL2",
            {"DL1": (3, 3, 3, 0, 0, "closed"), "DL2": (0, 0, 0, 0, 0, "open"), "DL3": UNTREATED},
        )
        walk.enrol(
            "DL2",
            3,
            {"DL1": (3, 3, 3, 0, 0, "closed"), "DL2": (3, 3, 0, 0, 3, "open"), "DL3": UNTREATED},
        )
        walk.assess(
            "NTT",
            "1NNN 2NTT",
            ("deescalate", "DL1"),
            {"DL1": (3, 3, 3, 0, 0, "closed"), "DL2": (3, 3, 3, 2, 0, "halted"), "DL3": UNTREATED},
        )
        assert "halted" in enrol(api, "CHH-S090").json()["detail"]
        walk.decide(
            "deescalate",
            "DL1",
            {"DL1": (3, 3, 3, 0, 0, "open"), "DL2": (3, 3, 3, 2, 0, "halted"), "DL3": UNTREATED},
        )
        walk.enrol(
            "DL1",
            3,
            {"DL1": (6, 6, 3, 0, 3, "open"), "DL2": (3, 3, 3, 2, 0, "halted"), "DL3": UNTREATED},
        )
        walk.assess(
            "NNT",
            "1NNN 2NTT 1NNT",
            ("stop", "DL1"),
            {"DL1": (6, 6, 6, 1, 0, "open"), "DL2": (3, 3, 3, 2, 0, "halted"), "DL3": UNTREATED},
        )
        assert walk.state["recommendation"]["mtd"] == "DL1"
        walk.decide(
            "stop",
            "DL1",
            {"DL1": (6, 6, 6, 1, 0, "closed"), "DL2": (3, 3, 3, 2, 0, "halted"), "DL3": UNTREATED},
        )

        state = cohorts(api, "cra")
        assert (state["stopped"], state["mtd"]) == (True, "DL1")
        assert [d["outcomes"] for d in state["decisions"]] == [
            "1NNN",
            "1NNN 2NTT",
            "1NNN 2NTT 1NNT",
        ]
        assert [c["dose_level"] for c in state["cohorts"]] == ["DL1", "DL2", "DL1"]
        assert state["enrolment"]["open"] is False
        refused = enrol(api, "CHH-S090")
        assert refused.status_code == 409
        assert "study is stopped" in refused.json()["detail"]
        assert decide(api, "stop", None, rationale=WHY).status_code == 409

    def test_escalate_to_the_top_dose_and_declare_the_mtd(self, api: Api) -> None:
        """`1NNN 2NNN 3NNN` -> expand at the top dose (an MTD needs 6) -> `3NNT` -> MTD 3."""
        done: Counts = (3, 3, 3, 0, 0, "closed")
        walk = Walk(api)
        walk.check(FRESH)
        walk.enrol("DL1", 3, {"DL1": (3, 3, 0, 0, 3, "open"), "DL2": UNTREATED, "DL3": UNTREATED})
        walk.assess(
            "NNN",
            "1NNN",
            ("escalate", "DL2"),
            {"DL1": (3, 3, 3, 0, 0, "open"), "DL2": UNTREATED, "DL3": UNTREATED},
        )
        walk.decide(
            "escalate", "DL2", {"DL1": done, "DL2": (0, 0, 0, 0, 0, "open"), "DL3": UNTREATED}
        )
        walk.enrol("DL2", 3, {"DL1": done, "DL2": (3, 3, 0, 0, 3, "open"), "DL3": UNTREATED})
        walk.assess(
            "NNN",
            "1NNN 2NNN",
            ("escalate", "DL3"),
            {"DL1": done, "DL2": (3, 3, 3, 0, 0, "open"), "DL3": UNTREATED},
        )
        walk.decide("escalate", "DL3", {"DL1": done, "DL2": done, "DL3": (0, 0, 0, 0, 0, "open")})
        walk.enrol("DL3", 3, {"DL1": done, "DL2": done, "DL3": (3, 3, 0, 0, 3, "open")})
        walk.assess(
            "NNN",
            "1NNN 2NNN 3NNN",
            ("expand", "DL3"),
            {"DL1": done, "DL2": done, "DL3": (3, 3, 3, 0, 0, "open")},
        )
        assert "6 evaluated patients" in walk.state["recommendation"]["rule"]
        early = decide(api, "stop", "DL3", rationale=WHY)
        assert early.status_code == 409, early.text
        assert "requires 6" in early.json()["detail"]
        walk.decide("expand", "DL3", {"DL1": done, "DL2": done, "DL3": (3, 3, 3, 0, 0, "open")})
        opened = walk.state["enrolment"]
        assert (opened["open"], opened["dose_level"], opened["open_slots"]) == (True, "DL3", 3)
        walk.enrol("DL3", 3, {"DL1": done, "DL2": done, "DL3": (6, 6, 3, 0, 3, "open")})
        walk.assess(
            "NNT",
            "1NNN 2NNN 3NNN 3NNT",
            ("stop", "DL3"),
            {"DL1": done, "DL2": done, "DL3": (6, 6, 6, 1, 0, "open")},
        )
        assert walk.state["recommendation"]["mtd"] == "DL3"
        walk.decide("stop", "DL3", {"DL1": done, "DL2": done, "DL3": (6, 6, 6, 1, 0, "closed")})
        assert (walk.state["stopped"], walk.state["mtd"]) == (True, "DL3")
        assert len(walk.state["slots"]) == 12

    def test_too_toxic_at_the_first_dose_stops_with_no_mtd(self, api: Api) -> None:
        """`1NTT`: the second DLT halts dose 1; stop with no MTD."""
        walk = Walk(api)
        walk.check(FRESH)
        walk.enrol("DL1", 3, {"DL1": (3, 3, 0, 0, 3, "open"), "DL2": UNTREATED, "DL3": UNTREATED})
        walk.assess(
            "NT",
            "1NT",
            ("continue", "DL1"),
            {"DL1": (3, 3, 2, 1, 1, "open"), "DL2": UNTREATED, "DL3": UNTREATED},
        )
        walk.assess(
            "T",
            "1NTT",
            ("stop", None),
            {"DL1": (3, 3, 3, 2, 0, "halted"), "DL2": UNTREATED, "DL3": UNTREATED},
        )
        assert walk.state["recommendation"]["mtd"] is None
        assert "no MTD" in walk.state["recommendation"]["rule"]
        refused = decide(api, "stop", "DL1", rationale=WHY)
        assert refused.status_code == 409
        assert "too toxic" in refused.json()["detail"]
        walk.decide(
            "stop", None, {"DL1": (3, 3, 3, 2, 0, "halted"), "DL2": UNTREATED, "DL3": UNTREATED}
        )
        assert (walk.state["stopped"], walk.state["mtd"]) == (True, None)
        assert "study is stopped" in enrol(api, eligible(api, 90)).json()["detail"]

    def test_a_non_evaluable_patient_is_replaced_at_the_same_dose(self, api: Api) -> None:
        """`1NXN`: the slot of the non-evaluable patient is released and a new one opens."""
        walk = Walk(api)
        walk.check(FRESH)
        first = walk.enrol(
            "DL1", 3, {"DL1": (3, 3, 0, 0, 3, "open"), "DL2": UNTREATED, "DL3": UNTREATED}
        )
        assert walk.state["enrolment"]["open"] is False
        walk.assess(
            "NX",
            "1N",
            ("continue", "DL1"),
            {"DL1": (3, 3, 1, 0, 1, "open"), "DL2": UNTREATED, "DL3": UNTREATED},
        )
        assert (
            level(walk.state, "DL1")["not_evaluable"],
            level(walk.state, "DL1")["open_slots"],
        ) == (
            1,
            1,
        )
        released = next(s for s in walk.state["slots"] if s["subject_id"] == first[1])
        assert (released["slot"], released["outcome"]) == (2, "not_evaluable")
        opened = walk.state["enrolment"]
        assert (opened["open"], opened["dose_level"], opened["cohort"], opened["open_slots"]) == (
            True,
            "DL1",
            1,
            1,
        )
        (replacement,) = walk.enrol(
            "DL1", 1, {"DL1": (4, 4, 1, 0, 2, "open"), "DL2": UNTREATED, "DL3": UNTREATED}
        )
        slot = next(s for s in walk.state["slots"] if s["subject_id"] == replacement)
        assert (slot["slot"], slot["cohort"], slot["dose_level"]) == (4, 1, "DL1")
        assert level(walk.state, "DL1")["open_slots"] == 0
        walk.assess(
            "NN",
            "1NNN",
            ("escalate", "DL2"),
            {"DL1": (4, 4, 3, 0, 0, "open"), "DL2": UNTREATED, "DL3": UNTREATED},
        )
        walk.decide(
            "escalate",
            "DL2",
            {"DL1": (4, 4, 3, 0, 0, "closed"), "DL2": (0, 0, 0, 0, 0, "open"), "DL3": UNTREATED},
        )
        walk.enrol(
            "DL2",
            3,
            {"DL1": (4, 4, 3, 0, 0, "closed"), "DL2": (3, 3, 0, 0, 3, "open"), "DL3": UNTREATED},
        )
        walk.assess(
            "NNN",
            "1NNN 2NNN",
            ("escalate", "DL3"),
            {"DL1": (4, 4, 3, 0, 0, "closed"), "DL2": (3, 3, 3, 0, 0, "open"), "DL3": UNTREATED},
        )


class TestRefusals:
    """What the protocol forbids is refused (409) even with a written justification."""

    def test_a_dose_never_treated_is_never_the_mtd(self, api: Api) -> None:
        response = decide(api, "stop", "DL3", rationale=WHY)
        assert response.status_code == 409, response.text
        assert "DL3 cannot be declared the MTD" in response.json()["detail"]
        assert "0 evaluated patient(s)" in response.json()["detail"]
        state = cohorts(api)
        assert (state["mtd"], state["stopped"], state["decisions"]) == (None, False, [])
        assert state["enrolment"]["open"] is True

    def test_the_mtd_needs_the_evaluated_patients_the_study_requires(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        response = decide(api, "stop", "DL1", rationale=WHY)
        assert response.status_code == 409
        assert "3 evaluated patient(s) and the study requires 6" in response.json()["detail"]

    def test_a_too_toxic_dose_is_never_the_mtd(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        assert decide(api, "escalate", "DL2").status_code == 201
        treat(api, 4, "NTT", "DL2")
        response = decide(api, "stop", "DL2", rationale=WHY)
        assert response.status_code == 409
        assert "too toxic" in response.json()["detail"]

    def test_no_dose_above_a_halted_one_is_opened(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        assert decide(api, "escalate", "DL2").status_code == 201
        treat(api, 4, "TT", "DL2")
        response = decide(api, "escalate", "DL3", rationale=WHY)
        assert response.status_code == 409
        assert "above DL2, which is halted" in response.json()["detail"]
        assert cohorts(api)["decisions"][-1]["action"] == "escalate"  # only the first

    def test_escalation_needs_the_current_dose_cleared(self, api: Api) -> None:
        treat(api, 1, "NNT", "DL1")
        response = decide(api, "escalate", "DL2", rationale=WHY)
        assert response.status_code == 409
        assert "cannot escalate from DL1: 1 DLT(s) in 3" in response.json()["detail"]

    def test_a_too_toxic_or_closed_level_is_not_expanded(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        assert decide(api, "escalate", "DL2").status_code == 201
        treat(api, 4, "NTT", "DL2")
        toxic = decide(api, "expand", "DL2", rationale=WHY)
        assert toxic.status_code == 409
        assert "too toxic" in toxic.json()["detail"]
        closed = decide(api, "expand", "DL1", rationale=WHY)
        assert closed.status_code == 422
        assert closed.json()["detail"][0]["path"] == "/dose_level"

    def test_no_deescalation_below_the_first_dose(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        response = decide(api, "deescalate", "DL1", rationale=WHY)
        assert response.status_code == 422
        (problem,) = response.json()["detail"]
        assert problem["path"] == "/dose_level"
        assert "no dose level below DL1" in problem["message"]

    @pytest.mark.parametrize(
        ("action", "dose_level"),
        [("escalate", "DL2"), ("expand", "DL1"), ("deescalate", "DL1"), ("stop", None)],
    )
    def test_nothing_is_decided_after_the_stop(
        self, api: Api, action: str, dose_level: str | None
    ) -> None:
        treat(api, 1, "NNN", "DL1")
        assert decide(api, "stop", None, rationale=WHY).status_code == 201
        response = decide(api, action, dose_level, rationale=WHY)
        assert response.status_code == 409
        assert "already stopped" in response.json()["detail"]

    def test_a_more_cautious_decision_is_allowed_and_flagged(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        assert decide(api, "escalate", "DL2").status_code == 201
        treat(api, 4, "NTT", "DL2")
        assert decide(api, "deescalate", "DL1").status_code == 201
        treat(api, 7, "NNT", "DL1")
        assert cohorts(api)["recommendation"]["mtd"] == "DL1"
        assert decide(api, "stop", None).status_code == 422  # needs a justification
        response = decide(api, "stop", None, rationale=WHY)
        assert response.status_code == 201, response.text
        state = cohorts(api)
        assert (state["mtd"], state["stopped"]) == (None, True)
        assert state["decisions"][-1]["follows_recommendation"] is False
        assert state["decisions"][-1]["rationale"] == WHY


class TestReading:
    def test_the_plot_shows_patients_over_time(self, api: Api) -> None:
        from matplotlib import image

        treat(api, 1, "NNN", "DL1")
        assert decide(api, "escalate", "DL2").status_code == 201
        first, second, _ = enrol_and_infuse(api, 4, 3, "DL2")
        assess(api, first, "T")
        assess(api, second, "X")
        for x in ("assigned", "infused"):
            response = api.get("cra", "/cohorts/plot.png", params={"x": x})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/png"
            assert int(response.headers["X-Log-Position"]) > 0
            pixels = image.imread(io.BytesIO(response.content), format="png")
            height, width, _ = pixels.shape
            assert (height, width) == (420, 1000)
            rgb = (pixels[:, :, :3] * 255).round()

            def near(colour: str, rgb: Any = rgb) -> int:
                target = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
                return int((abs(rgb - target).max(axis=2) < 12).sum())

            assert near("#c62828") > 50, x  # the DLT marker
            assert near("#2e7d32") > 50, x  # patients without a DLT
            assert near("#5d4037") > 20, x  # the non-evaluable patient
            assert near("#1565c0") > 50, x  # the decision line and its label

    def test_the_plot_of_an_empty_trial_is_a_png(self, api: Api) -> None:
        from matplotlib import image

        response = api.get("src", "/cohorts/plot.png")
        assert response.status_code == 200
        pixels = image.imread(io.BytesIO(response.content), format="png")
        assert pixels.shape[:2] == (420, 1000)

    def test_a_bad_plot_axis_is_422(self, api: Api) -> None:
        assert api.get("src", "/cohorts/plot.png", params={"x": "slot"}).status_code == 422

    def test_the_cohorts_as_of_a_moment_are_the_state_then(self, api: Api) -> None:
        before_anything = datetime.now(UTC)
        treat(api, 1, "NNN", "DL1")
        assert decide(api, "escalate", "DL2").status_code == 201
        then = cohorts(api)
        moment = datetime.now(UTC)
        treat(api, 4, "NTT", "DL2")
        assert decide(api, "deescalate", "DL1").status_code == 201
        replayed = api.get("src", "/cohorts", params={"as_of": moment.isoformat()}).json()
        assert replayed["as_of"] is not None
        assert replayed["position"] <= then["position"]
        unchanged = ("levels", "recommendation", "decisions", "outcomes", "cohorts", "slots")
        assert {k: replayed[k] for k in unchanged} == {k: then[k] for k in unchanged}
        assert replayed["enrolment"] == then["enrolment"]
        assert cohorts(api)["outcomes"] == "1NNN 2NTT"
        empty = api.get("src", "/cohorts", params={"as_of": before_anything.isoformat()}).json()
        assert (empty["outcomes"], empty["slots"], empty["decisions"]) == ("", [], [])
        assert empty["position"] < then["position"]
        assert [r["assigned"] for r in empty["levels"]] == [0, 0, 0]
        assert api.get("src", "/cohorts", params={"as_of": "soon"}).status_code == 422

    def test_a_reader_sees_the_decision_just_made(self, api: Api) -> None:
        treat(api, 1, "NNN", "DL1")
        decision = decide(api, "escalate", "DL2").json()
        response = api.get("cra", "/cohorts")
        assert int(response.headers["X-Log-Position"]) >= decision["position"]
        body = response.json()
        assert body["position"] >= decision["position"]
        assert body["decisions"][-1]["decision_hash"] == decision["decision_hash"]
        assert body["enrolment"]["dose_level"] == "DL2"

    def test_other_sites_subjects_are_not_named(self, api: Api) -> None:
        api.user("elsewhere", ["site_staff"], [])
        treat(api, 1, "N", "DL1")
        (slot,) = cohorts(api, "elsewhere")["slots"]
        assert (slot["subject_id"], slot["outcome"], slot["infused"]) == (None, "N", True)
        assert cohorts(api, "crc")["slots"][0]["subject_id"] == "CHH-S001"
