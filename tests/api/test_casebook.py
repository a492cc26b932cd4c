"""Subjects and form entries: recording, hard checks, corrections, voids, audit, as_of."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.api.conftest import Api

SUBJECT = "CHH-S001"


def example(api: Api, form: str) -> dict[str, Any]:
    """The first example shipped in a form's schema: a complete, valid entry."""
    schema = api.get("crc", f"/forms/{form}/1").json()
    data: dict[str, Any] = copy.deepcopy(schema["examples"][0])
    return data


def register(api: Api, screening_number: str = "S001") -> str:
    response = api.post("crc", "/subjects", {"site": "CHH", "screening_number": screening_number})
    assert response.status_code == 201, response.text
    subject_id: str = response.json()["subject_id"]
    return subject_id


def enter_demographics(api: Api) -> dict[str, Any]:
    register(api)
    body = {"form": "demographics", "visit": "SCR", "data": example(api, "demographics")}
    response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry


def position(api: Api) -> int:
    application = api.client.app.state.application  # type: ignore[attr-defined]
    return int(application.max_position())


class TestRegistration:
    def test_register_returns_the_subject(self, api: Api) -> None:
        response = api.post("crc", "/subjects", {"site": "CHH", "screening_number": "S001"})
        assert response.status_code == 201
        assert response.json()["subject_id"] == SUBJECT
        assert response.json()["status"] == "screening"
        casebook = api.get("pi", f"/subjects/{SUBJECT}").json()
        assert casebook["site"] == "CHH"
        assert casebook["entries"] == []

    def test_registering_twice_conflicts(self, api: Api) -> None:
        register(api)
        again = api.post("pi", "/subjects", {"site": "CHH", "screening_number": "S001"})
        assert again.status_code == 409

    @pytest.mark.parametrize(
        "body",
        [
            {"site": "CHH"},
            {"site": "CHH", "screening_number": ""},
            {"site": "CHH", "screening_number": "S 1"},
            {"site": "CHH", "screening_number": "'; DROP TABLE stored_events;--"},
            {"site": "chh", "screening_number": "S1"},
            {"site": "CHH", "screening_number": "S1", "extra": 1},
        ],
    )
    def test_bad_registrations_are_422(self, api: Api, body: dict[str, Any]) -> None:
        before = position(api)
        assert api.post("crc", "/subjects", body).status_code == 422
        assert position(api) == before

    def test_unknown_site_is_422(self, api: Api) -> None:
        response = api.post("dm", "/subjects", {"site": "ZZZ", "screening_number": "S1"})
        assert response.status_code == 403  # a data manager never enters data
        response = api.post("pi", "/subjects", {"site": "ZZZ", "screening_number": "S1"})
        assert response.status_code == 404  # not one of the investigator's sites

    def test_unknown_subject_is_404(self, api: Api) -> None:
        assert api.get("crc", "/subjects/CHH-NOPE").status_code == 404
        body = {"form": "demographics", "visit": "SCR", "data": {}}
        assert api.post("crc", "/subjects/CHH-NOPE/entries", body).status_code == 404


class TestEntries:
    def test_a_valid_entry_is_recorded_at_revision_1(self, api: Api) -> None:
        entry = enter_demographics(api)
        assert entry["revision"] == 1
        assert entry["version"] == 1
        assert entry["form"] == "demographics"
        assert entry["recorded_by"] == "crc"
        assert len(entry["schema_sha256"]) == 64
        fetched = api.get("cra", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}").json()
        assert fetched["data"] == entry["data"]

    def test_hard_checks_list_every_problem_with_its_pointer(self, api: Api) -> None:
        register(api)
        data = example(api, "demographics")
        data["sex"] = "X"
        data["weight_kg"] = "heavy"
        data["shoe_size"] = 44
        before = position(api)
        response = api.post(
            "crc",
            f"/subjects/{SUBJECT}/entries",
            {"form": "demographics", "visit": "SCR", "data": data},
        )
        assert response.status_code == 422
        paths = {p["path"] for p in response.json()["detail"]}
        assert {"/sex", "/weight_kg", "/shoe_size"} <= paths
        assert all(p["message"] for p in response.json()["detail"])
        assert position(api) == before

    def test_a_missing_required_field_points_at_the_field(self, api: Api) -> None:
        register(api)
        data = example(api, "demographics")
        del data["sex"]
        body = {"form": "demographics", "visit": "SCR", "data": data}
        response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        assert response.status_code == 422
        assert "/sex" in {p["path"] for p in response.json()["detail"]}

    @pytest.mark.parametrize(
        ("body", "path"),
        [
            ({"form": "no_such_form", "visit": "SCR", "data": {}}, "/form"),
            ({"form": "demographics", "version": 99, "visit": "SCR", "data": {}}, "/version"),
            ({"form": "demographics", "visit": "D14", "data": {}}, "/visit"),
            ({"form": "demographics", "visit": "NOPE", "data": {}}, "/visit"),
        ],
    )
    def test_unknown_form_version_or_wrong_visit_is_422(
        self, api: Api, body: dict[str, Any], path: str
    ) -> None:
        register(api)
        if body["data"] == {}:
            body["data"] = example(api, "demographics")
        response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["path"] == path

    def test_a_form_is_entered_once_per_non_repeatable_visit(self, api: Api) -> None:
        enter_demographics(api)
        body = {"form": "demographics", "visit": "SCR", "data": example(api, "demographics")}
        assert api.post("crc", f"/subjects/{SUBJECT}/entries", body).status_code == 409

    def test_log_forms_repeat(self, api: Api) -> None:
        register(api)
        body = {"form": "adverse_event", "visit": "LOG", "data": example(api, "adverse_event")}
        first = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        second = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        assert (first.status_code, second.status_code) == (201, 201)

    def test_unicode_and_injection_strings_are_stored_verbatim(self, api: Api) -> None:
        register(api)
        data = example(api, "adverse_event")
        data["term"] = "Other, specify"
        data["term_other"] = "Ödem '); DROP TABLE stored_events;-- 肝 🧪"
        body = {"form": "adverse_event", "visit": "LOG", "data": data}
        response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        assert response.status_code == 201, response.text
        entry_id = response.json()["entry_id"]
        fetched = api.get("crc", f"/subjects/{SUBJECT}/entries/{entry_id}").json()
        assert fetched["data"]["term_other"] == data["term_other"]

    @pytest.mark.parametrize(
        ("content", "content_type"),
        [
            (b'{"form": "demographics", "visit": "SCR", "data": {', "application/json"),
            (b'{"form": "demographics", "visit": "SCR", "data": []}', "application/json"),
            (b'{"form": "demographics", "visit": "SCR", "data": {"age": NaN}}', "application/json"),
            (b"\xff\xfe not utf-8", "application/json"),
            (b"form=demographics", "application/x-www-form-urlencoded"),
        ],
    )
    def test_malformed_bodies_are_422_and_store_nothing(
        self, api: Api, content: bytes, content_type: str
    ) -> None:
        register(api)
        before = position(api)
        headers = {**api.headers("crc"), "Content-Type": content_type}
        response = api.client.post(f"/subjects/{SUBJECT}/entries", content=content, headers=headers)
        assert response.status_code == 422, response.text
        assert position(api) == before

    def test_oversized_bodies_are_413(self, api: Api) -> None:
        register(api)
        data = example(api, "demographics")
        body = {"form": "demographics", "visit": "SCR", "data": data, "pad": "x" * 2_000_000}
        response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        assert response.status_code == 413

    def test_derived_fields_cannot_be_sent_by_clients(self, api: Api) -> None:
        register(api)
        data = example(api, "crs_assessment")
        data["grade"] = 1
        body = {"form": "crs_assessment", "visit": "D1", "data": data}
        response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["path"] == "/grade"


class TestCorrections:
    def test_a_correction_records_old_and_new_per_path_with_its_reason(self, api: Api) -> None:
        entry = enter_demographics(api)
        old_weight = entry["data"]["weight_kg"]
        response = api.post(
            "crc",
            f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections",
            {
                "changes": {"weight_kg": 71.5},
                "reason": "transcription error",
                "expected_revision": 1,
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["revision"] == 2
        assert response.json()["data"]["weight_kg"] == 71.5
        audit = api.get("cra", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/audit").json()
        assert [r["action"] for r in audit] == ["entry_recorded", "entry_corrected"]
        correction = audit[-1]
        assert correction["changes"] == [{"path": "/weight_kg", "old": old_weight, "new": 71.5}]
        assert correction["reason"] == "transcription error"
        assert correction["user"] == "crc"
        assert correction["user_name"] == "Crc"
        assert correction["role"] == "site_staff"
        assert correction["site"] == "CHH"
        assert correction["at"].endswith("Z")
        assert correction["position"] > audit[0]["position"]

    def test_a_merge_patch_null_removes_an_optional_field(self, api: Api) -> None:
        entry = enter_demographics(api)
        assert "height_cm" in entry["data"]
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        body = {"changes": {"height_cm": None}, "reason": "not measured", "expected_revision": 1}
        response = api.post("crc", url, body)
        if response.status_code == 422:  # height is required on this form version
            assert response.json()["detail"][0]["path"] == "/height_cm"
            return
        assert "height_cm" not in response.json()["data"]

    @pytest.mark.parametrize("reason", ["", "   "])
    def test_a_reason_is_mandatory(self, api: Api, reason: str) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        body = {"changes": {"weight_kg": 70.0}, "reason": reason, "expected_revision": 1}
        response = api.post("crc", url, body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["path"] == "/reason"

    def test_a_stale_revision_conflicts_and_loses_nothing(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        first = {"changes": {"weight_kg": 70.0}, "reason": "r1", "expected_revision": 1}
        second = {"changes": {"weight_kg": 72.0}, "reason": "r2", "expected_revision": 1}
        assert api.post("crc", url, first).status_code == 200
        assert api.post("pi", url, second).status_code == 409
        current = api.get("crc", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}").json()
        assert current["data"]["weight_kg"] == 70.0
        assert current["revision"] == 2

    def test_a_correction_that_breaks_the_schema_is_422_and_stores_nothing(self, api: Api) -> None:
        entry = enter_demographics(api)
        before = position(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        body = {"changes": {"sex": "unknown"}, "reason": "r", "expected_revision": 1}
        response = api.post("crc", url, body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["path"] == "/sex"
        assert position(api) == before

    def test_a_correction_that_changes_nothing_conflicts(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        body = {"changes": {"sex": entry["data"]["sex"]}, "reason": "r", "expected_revision": 1}
        assert api.post("crc", url, body).status_code == 409

    def test_monitors_and_data_managers_cannot_correct(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        body = {"changes": {"weight_kg": 70.0}, "reason": "r", "expected_revision": 1}
        for user in ("cra", "dm", "src", "fda", "admin"):
            assert api.post(user, url, body).status_code == 403, user


class TestVoids:
    def test_a_voided_entry_stays_in_the_audit_trail(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        response = api.post(
            "pi", f"{url}/void", {"reason": "wrong patient", "expected_revision": 1}
        )
        assert response.status_code == 200
        assert response.json()["voided"] is True
        assert response.json()["revision"] == 2
        audit = api.get("fda", f"{url}/audit").json()
        assert audit[-1]["action"] == "entry_voided"
        assert audit[-1]["reason"] == "wrong patient"
        correction = {"changes": {"weight_kg": 70.0}, "reason": "r", "expected_revision": 2}
        assert api.post("crc", f"{url}/corrections", correction).status_code == 409

    def test_after_a_void_the_form_can_be_entered_again(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/void"
        api.post("crc", url, {"reason": "wrong visit", "expected_revision": 1})
        body = {"form": "demographics", "visit": "SCR", "data": example(api, "demographics")}
        assert api.post("crc", f"/subjects/{SUBJECT}/entries", body).status_code == 201

    def test_a_void_needs_a_reason(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/void"
        assert api.post("crc", url, {"expected_revision": 1}).status_code == 422


class TestAsOf:
    def test_the_casebook_as_of_a_moment_is_exactly_as_it_stood(self, api: Api) -> None:
        entry = enter_demographics(api)
        time.sleep(0.01)
        moment = datetime.now(UTC)
        time.sleep(0.01)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        body = {"changes": {"weight_kg": 99.0}, "reason": "r", "expected_revision": 1}
        assert api.post("crc", f"{url}/corrections", body).status_code == 200
        then = api.get("cra", f"/subjects/{SUBJECT}", params={"as_of": moment.isoformat()}).json()
        assert then["entries"][0]["data"] == entry["data"]
        assert then["entries"][0]["revision"] == 1
        one = api.get("cra", url, params={"as_of": moment.isoformat()}).json()
        assert one["data"] == entry["data"]
        now = api.get("cra", f"/subjects/{SUBJECT}").json()
        assert now["entries"][0]["data"]["weight_kg"] == 99.0

    def test_before_registration_the_subject_did_not_exist(self, api: Api) -> None:
        moment = datetime.now(UTC)
        time.sleep(0.01)
        register(api)
        response = api.get("cra", f"/subjects/{SUBJECT}", params={"as_of": moment.isoformat()})
        assert response.status_code == 404

    def test_a_malformed_as_of_is_422(self, api: Api) -> None:
        register(api)
        response = api.get("cra", f"/subjects/{SUBJECT}", params={"as_of": "yesterday"})
        assert response.status_code == 422


def test_the_subject_audit_lists_every_event_oldest_first(api: Api) -> None:
    entry = enter_demographics(api)
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
    api.post("crc", url, {"changes": {"weight_kg": 70.0}, "reason": "r", "expected_revision": 1})
    audit = api.get("dm", f"/subjects/{SUBJECT}/audit").json()
    assert [r["action"] for r in audit] == ["registered", "entry_recorded", "entry_corrected"]
    positions = [r["position"] for r in audit]
    assert positions == sorted(positions)
    assert all(len(r["event_id"]) == 64 for r in audit)
    recorded = audit[1]
    assert {c["path"] for c in recorded["changes"]} == {f"/{k}" for k in entry["data"]}


def test_two_concurrent_corrections_give_one_200_and_one_409(api: Api) -> None:
    import threading

    entry = enter_demographics(api)
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
    statuses: list[int] = []
    barrier = threading.Barrier(2)

    def correct(user: str, weight: float) -> None:
        body = {"changes": {"weight_kg": weight}, "reason": "r", "expected_revision": 1}
        barrier.wait()
        statuses.append(api.post(user, url, body).status_code)

    threads = [
        threading.Thread(target=correct, args=("crc", 70.0)),
        threading.Thread(target=correct, args=("pi", 72.0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409]
    audit = api.get("cra", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/audit").json()
    assert [r["action"] for r in audit].count("entry_corrected") == 1


def test_deeply_nested_data_is_422_not_500(api: Api) -> None:
    register(api)
    data = example(api, "adverse_event")
    nested: Any = "x"
    for _ in range(500):
        nested = [nested]
    data["term_other"] = nested
    body = {"form": "adverse_event", "visit": "LOG", "data": data}
    before = position(api)
    response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
    assert response.status_code == 422
    assert "nested" in response.json()["detail"][0]["message"]
    assert position(api) == before
