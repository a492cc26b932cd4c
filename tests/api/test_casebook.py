"""Subjects and form entries: recording, hard checks, corrections, voids, audit, as_of."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import StoredEvent

from ecrf.config import Settings
from ecrf.domain.ids import subject_stream
from ecrf.domain.subject import Subject
from ecrf.ledger.chain import seal_state, stored_hash
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
        assert entry["data"]["ethnic_group"] == "han"  # optional on demographics v1
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        body = {"changes": {"ethnic_group": None}, "reason": "not asked", "expected_revision": 1}
        response = api.post("crc", url, body)
        assert response.status_code == 200, response.text
        assert "ethnic_group" not in response.json()["data"]
        assert response.json()["data"]["height_cm"] == entry["data"]["height_cm"]
        audit = api.get("cra", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/audit").json()
        assert audit[-1]["changes"] == [{"path": "/ethnic_group", "old": "han", "new": None}]

    def test_a_merge_patch_null_on_a_required_field_is_422(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/corrections"
        body = {"changes": {"height_cm": None}, "reason": "not measured", "expected_revision": 1}
        response = api.post("crc", url, body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["path"] == "/height_cm"

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


class TestForms:
    def test_every_released_form_version_is_listed(self, api: Api) -> None:
        listed = api.get("cra", "/forms").json()
        by_key = {(f["form"], f["version"]): f for f in listed}
        assert {("demographics", 1), ("adverse_event", 1), ("adverse_event", 2)} <= set(by_key)
        demographics = by_key[("demographics", 1)]
        assert demographics["title"] == "Demographics"
        assert len(demographics["sha256"]) == 64
        assert demographics["current"] is True
        assert [by_key[("adverse_event", v)]["current"] for v in (1, 2)] == [False, True]
        schema = api.get("cra", "/forms/demographics/1").json()
        assert schema["$id"].endswith("/forms/demographics/v1.json")
        assert schema["additionalProperties"] is False

    @pytest.mark.parametrize(
        "path", ["/forms/no_such_form/1", "/forms/demographics/99", "/forms/demographics/0"]
    )
    def test_an_unknown_form_or_version_is_404(self, api: Api, path: str) -> None:
        response = api.get("crc", path)
        assert response.status_code == 404
        assert response.json()["detail"]

    def test_a_version_that_is_not_a_number_is_422(self, api: Api) -> None:
        assert api.get("crc", "/forms/demographics/first").status_code == 422

    def test_forms_need_a_login(self, api: Api) -> None:
        assert api.client.get("/forms").status_code == 401


MIB = 1024 * 1024


class TestBodyLimit:
    def _register_with_padding(self, api: Api, size: int) -> Any:
        body = b'{"site": "CHH", "screening_number": "S777"}'
        padded = body + b" " * (size - len(body))  # whitespace after the JSON is still JSON
        assert len(padded) == size
        headers = {**api.headers("crc"), "Content-Type": "application/json"}
        return api.client.post("/subjects", content=padded, headers=headers)

    def test_the_default_limit_is_one_mebibyte(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("ECRF_MAX_BODY_BYTES", raising=False)
        assert Settings.from_env().max_body_bytes == MIB

    def test_a_body_of_exactly_1_mib_is_accepted(self, api: Api) -> None:
        response = self._register_with_padding(api, MIB)
        assert response.status_code == 201, response.text[:200]

    def test_one_byte_more_is_413_and_stores_nothing(self, api: Api) -> None:
        before = position(api)
        response = self._register_with_padding(api, MIB + 1)
        assert response.status_code == 413
        assert str(MIB) in response.json()["detail"]
        assert position(api) == before
        assert api.get("crc", "/subjects/CHH-S777").status_code == 404


NUL = "\u0000"


class TestTextThatCannotBeStored:
    """NUL is valid JSON but not storable in PostgreSQL text; invisible text is no reason."""

    @pytest.mark.parametrize(
        ("change", "path"),
        [
            ({"term": "Other, specify", "term_other": f"rash{NUL}"}, "/term_other"),
            ({"sae_criteria": {f"death{NUL}": False}}, f"/sae_criteria/death{NUL}"),
            ({"term": NUL}, "/term"),
        ],
    )
    def test_nul_anywhere_in_form_data_is_422_with_its_pointer(
        self, api: Api, change: dict[str, Any], path: str
    ) -> None:
        register(api)
        data = {**example(api, "adverse_event"), **change}
        before = position(api)
        body = {"form": "adverse_event", "visit": "LOG", "data": data}
        response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
        assert response.status_code == 422, response.text
        assert path in [p["path"] for p in response.json()["detail"]]
        assert position(api) == before

    def test_nul_in_a_correction_is_422_and_stores_nothing(self, api: Api) -> None:
        register(api)
        body = {"form": "adverse_event", "visit": "LOG", "data": example(api, "adverse_event")}
        entry = api.post("crc", f"/subjects/{SUBJECT}/entries", body).json()
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        before = position(api)
        patch = {"term": "Other, specify", "term_other": f"a{NUL}b"}
        correction = {"changes": patch, "reason": "term", "expected_revision": 1}
        response = api.post("crc", f"{url}/corrections", correction)
        assert response.status_code == 422
        assert [p["path"] for p in response.json()["detail"]] == ["/term_other"]
        assert position(api) == before
        # The read models still follow the log: the query list answers.
        assert api.get("cra", "/queries").status_code == 200

    def test_nul_in_query_texts_and_names_is_422_and_the_query_list_still_answers(
        self, api: Api
    ) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        before = position(api)
        for body in (
            {"path": "/weight_kg", "text": f"Please check{NUL}"},
            {"path": f"/weight_kg{NUL}", "text": "Please check"},
        ):
            response = api.post("cra", f"{url}/queries", body)
            assert response.status_code == 422, response.text
        query = api.post("cra", f"{url}/queries", {"path": "/weight_kg", "text": "Check"}).json()
        for action, user in (("answer", "crc"), ("close", "cra")):
            response = api.post(user, f"/queries/{query['query_id']}/{action}", {"text": NUL})
            assert response.status_code == 422, response.text
        renamed = api.patch("admin", "/users/crc", {"full_name": f"C{NUL}", "reason": "typo"})
        assert renamed.status_code == 422
        site = api.post("admin", "/sites", {"site_id": "RJH", "name": f"Ruijin{NUL}"})
        assert site.status_code == 422
        assert position(api) == before + 1  # only the well-formed query
        listed = api.get("cra", "/queries").json()
        assert [q["query_id"] for q in listed] == [query["query_id"]]

    @pytest.mark.parametrize(
        "url",
        [
            "/queries?site=%00",
            "/queries?subject=CHH-S001%00",
            "/queries?form=demographics%00",
            "/subjects?site=%00",
            "/subjects?status=%00",
            "/subjects/CHH-S001%00/timeline",
            "/subjects/CHH-S001%00",
        ],
    )
    def test_nul_in_a_url_is_422(self, api: Api, url: str) -> None:
        enter_demographics(api)
        response = api.get("dm", url)
        assert response.status_code == 422, response.text
        assert "NUL" in response.json()["detail"][0]["message"]

    @pytest.mark.parametrize(
        "reason", ["", "   ", "\u200b", "\u200b\u2060\ufeff", "\u00a0\u3000", "\t\n", NUL]
    )
    def test_a_reason_needs_a_visible_character(self, api: Api, reason: str) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        before = position(api)
        correction = {"changes": {"weight_kg": 70.0}, "reason": reason, "expected_revision": 1}
        for path, body in (
            ("corrections", correction),
            ("void", {"reason": reason, "expected_revision": 1}),
        ):
            response = api.post("crc", f"{url}/{path}", body)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["detail"][0]["path"] == "/reason"
        assert api.post("dm", f"{url}/lock", {"reason": reason}).status_code == 422
        assert position(api) == before

    def test_a_reason_with_invisible_characters_around_visible_text_is_kept(self, api: Api) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        reason = "\u200bchart re-read\u200b"
        correction = {"changes": {"weight_kg": 70.0}, "reason": reason, "expected_revision": 1}
        assert api.post("crc", f"{url}/corrections", correction).status_code == 200
        assert api.get("cra", f"{url}/audit").json()[-1]["reason"] == reason


class TestSchemaOfCorrections:
    def test_a_correction_names_the_form_version_and_schema_that_validated_it(
        self, api: Api
    ) -> None:
        entry = enter_demographics(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        body = {"changes": {"weight_kg": 70.0}, "reason": "scale", "expected_revision": 1}
        assert api.post("crc", f"{url}/corrections", body).status_code == 200
        released = {(f["form"], f["version"]): f["sha256"] for f in api.get("crc", "/forms").json()}
        recorded, corrected = api.get("cra", f"{url}/audit").json()
        for record in (recorded, corrected):
            assert record["details"]["form_version"] == 1
            assert record["details"]["schema_sha256"] == released[("demographics", 1)]
        assert corrected["details"]["schema_sha256"] == entry["schema_sha256"]
        # The stored event itself carries them, as the ledger shows it to a regulator.
        events = api.get("fda", "/ledger/events", params={"limit": 1000}).json()
        [stored] = [e for e in events if e["type"].endswith("Subject.EntryCorrected")]
        assert stored["data"]["form_version"] == 1
        assert stored["data"]["schema_sha256"] == released[("demographics", 1)]

    def test_corrections_stored_before_they_named_their_schema_still_load(self, api: Api) -> None:
        entry = enter_demographics(api)
        application = api.client.app.state.application  # type: ignore[attr-defined]
        stream = subject_stream(SUBJECT)
        # A correction as the first release stored it: no class_version, no schema fields.
        subject = application.repository.get(stream)
        audit = {
            "user": "crc",
            "user_name": "Crc",
            "role": "site_staff",
            "site": "CHH",
            "request_id": "",
            "reason": "stored by the first release",
        }
        old = entry["data"]["weight_kg"]
        changes = [{"path": "/weight_kg", "old": old, "new": 70.0}]
        subject.correct_entry(
            entry["entry_id"], 1, {**entry["data"], "weight_kg": 70.0}, changes, audit
        )
        [pending] = subject.collect_events()
        stored = application.mapper.to_stored_event(pending)
        state = orjson.loads(stored.state)
        assert (state.pop("class_version"), state.pop("form_version")) == (2, 1)
        del state["schema_sha256"]
        [head] = application.recorder.select_events(stream, desc=True, limit=1)
        version = stored.originator_version
        chained = seal_state(str(stream), version, stored.topic, state, stored_hash(head.state))
        application.recorder.insert_events([StoredEvent(stream, version, stored.topic, chained)])

        *_, loaded = application.events.get(stream)
        assert type(loaded) is Subject.EntryCorrected
        assert (loaded.form_version, loaded.schema_sha256) == (None, None)  # upcast_v1_v2
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        current = api.get("cra", url).json()
        assert (current["revision"], current["data"]["weight_kg"]) == (2, 70.0)
        assert current["schema_sha256"] == entry["schema_sha256"]
        corrected = api.get("cra", f"{url}/audit").json()[-1]
        assert corrected["action"] == "entry_corrected"
        assert corrected["changes"] == changes
        assert "schema_sha256" not in corrected["details"]
        assert "form_version" not in corrected["details"]
        # Upcasting changes nothing stored: the hash chain still verifies.
        report = api.get("fda", "/ledger/verify").json()
        assert (report["ok"], report["problems"]) == (True, [])
        # And the casebook takes new corrections on top, which name their schema again.
        body = {"changes": {"weight_kg": 71.0}, "reason": "re-weighed", "expected_revision": 2}
        assert api.post("crc", f"{url}/corrections", body).status_code == 200
        latest = api.get("cra", f"{url}/audit").json()[-1]
        assert latest["details"]["schema_sha256"] == entry["schema_sha256"]
        assert api.get("fda", "/ledger/verify").json()["ok"] is True
