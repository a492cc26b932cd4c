"""Form versions through the API: the study's current version, and migrating an entry.

adverse_event v2 adds ``action_taken``; new entries get v2, v1 entries stay v1 until a data
manager migrates them with a reason (dry run first). The refused cases store nothing.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ecrf.api.app import create_app
from ecrf.config import Settings
from ecrf.domain.ids import subject_stream
from ecrf.forms import default_forms_dir
from tests.api.conftest import Api
from tests.api.test_casebook import SUBJECT, position, register

REASON = "adverse_event v2 released: record the action taken"


def ae_example(api: Api, index: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(api.get("crc", "/forms/adverse_event/1").json())
    return dict(data["examples"][index])


def enter_v1_ae(api: Api, index: int = 0) -> dict[str, Any]:
    """An adverse event entered on v1, as before v2 was released."""
    body = {"form": "adverse_event", "version": 1, "visit": "LOG", "data": ae_example(api, index)}
    response = api.post("crc", f"/subjects/{SUBJECT}/entries", body)
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    assert entry["version"] == 1
    return entry


def migrate_url(entry_id: str) -> str:
    return f"/subjects/{SUBJECT}/entries/{entry_id}/migrate"


def migrate(api: Api, entry_id: str, **body: Any) -> Any:
    return api.post("dm", migrate_url(entry_id), {"to_version": 2, "reason": REASON, **body})


def sha256_of(api: Api, form: str, version: int) -> str:
    listed = api.get("crc", "/forms").json()
    return str(next(f["sha256"] for f in listed if (f["form"], f["version"]) == (form, version)))


class TestVersions:
    def test_new_entries_get_the_current_version_and_v1_entries_stay_readable(
        self, api: Api
    ) -> None:
        register(api)
        old = enter_v1_ae(api)
        body = {"form": "adverse_event", "visit": "LOG", "data": ae_example(api, 1)}
        new = api.post("crc", f"/subjects/{SUBJECT}/entries", body).json()
        assert (old["version"], new["version"]) == (1, 2)
        assert new["schema_sha256"] == sha256_of(api, "adverse_event", 2)
        fetched = api.get("cra", f"/subjects/{SUBJECT}/entries/{old['entry_id']}").json()
        assert (fetched["version"], fetched["data"]) == (1, old["data"])
        versions = {
            (f["form"], f["version"]): f["current"]
            for f in api.get("crc", "/forms").json()
            if f["form"] in ("adverse_event", "labs")
        }
        assert versions == {
            ("adverse_event", 1): False,
            ("adverse_event", 2): True,
            ("labs", 1): True,
        }

    def test_the_new_field_exists_only_on_v2(self, api: Api) -> None:
        register(api)
        data = {**ae_example(api), "action_taken": "not_applicable"}
        v1 = {"form": "adverse_event", "version": 1, "visit": "LOG", "data": data}
        refused = api.post("crc", f"/subjects/{SUBJECT}/entries", v1)
        assert refused.status_code == 422
        assert [p["path"] for p in refused.json()["detail"]] == ["/action_taken"]
        v2 = {"form": "adverse_event", "visit": "LOG", "data": data}
        assert api.post("crc", f"/subjects/{SUBJECT}/entries", v2).status_code == 201
        wrong = {**v2, "data": {**data, "action_taken": "DRUG WITHDRAWN"}}
        response = api.post("crc", f"/subjects/{SUBJECT}/entries", wrong)
        assert response.status_code == 422
        assert [p["path"] for p in response.json()["detail"]] == ["/action_taken"]


class TestMigration:
    def test_a_dry_run_shows_what_would_change_and_stores_nothing(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        before = position(api)
        response = migrate(api, entry["entry_id"], dry_run=True)
        assert response.status_code == 200, response.text
        preview = response.json()
        assert preview["dry_run"] is True
        assert (preview["from_version"], preview["to_version"]) == (1, 2)
        assert preview["schema_sha256"] == sha256_of(api, "adverse_event", 2)
        assert preview["changes"] == []  # v1 data is valid v2 data as it stands
        assert (preview["entry"]["version"], preview["entry"]["revision"]) == (2, 1)
        assert preview["position"] == before
        assert position(api) == before
        stored = api.get("dm", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}").json()
        assert (stored["version"], stored["schema_sha256"]) == (1, entry["schema_sha256"])
        audit = api.get("dm", f"/subjects/{SUBJECT}/entries/{entry['entry_id']}/audit").json()
        assert [r["action"] for r in audit] == ["entry_recorded"]

    def test_a_migration_is_a_reasoned_audited_event(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        time.sleep(0.01)
        moment = datetime.now(UTC)
        time.sleep(0.01)
        response = migrate(api, entry["entry_id"], dry_run=False, expected_revision=1)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["dry_run"] is False
        assert result["position"] == position(api)
        migrated = result["entry"]
        assert (migrated["version"], migrated["revision"]) == (2, 1)
        assert migrated["data"] == entry["data"]
        assert migrated["schema_sha256"] == sha256_of(api, "adverse_event", 2)

        [recorded, record] = api.get("cra", f"{url}/audit").json()
        assert recorded["action"] == "entry_recorded"
        assert (record["action"], record["reason"], record["user"], record["role"]) == (
            "entry_migrated",
            REASON,
            "dm",
            "data_manager",
        )
        assert (record["form"], record["revision"], record["changes"]) == ("adverse_event", 1, [])
        assert record["details"] == {
            "from_version": 1,
            "to_version": 2,
            "schema_sha256": sha256_of(api, "adverse_event", 2),
        }
        subject_audit = api.get("fda", f"/subjects/{SUBJECT}/audit").json()
        assert subject_audit[-1]["event_id"] == record["event_id"]

        # The casebook shows the new version; as it stood before, the old one.
        casebook = api.get("cra", f"/subjects/{SUBJECT}").json()
        assert [e["version"] for e in casebook["entries"]] == [2]
        then = api.get("cra", f"/subjects/{SUBJECT}", params={"as_of": moment.isoformat()}).json()
        assert [e["version"] for e in then["entries"]] == [1]
        assert api.get("cra", url, params={"as_of": moment.isoformat()}).json()["version"] == 1

        # Validated by v2 from now on: the new field can be added by a correction.
        body = {
            "changes": {"action_taken": "not_applicable"},
            "reason": "completed on the v2 form",
            "expected_revision": 1,
        }
        corrected = api.post("crc", f"{url}/corrections", body)
        assert corrected.status_code == 200, corrected.text
        assert corrected.json()["data"]["action_taken"] == "not_applicable"
        # The hash chain holds with the new event type in it.
        verified = api.get("fda", "/ledger/verify").json()
        assert verified["ok"] is True, verified["problems"]

    def test_signatures_and_sdv_of_unchanged_data_still_hold(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        assert api.post("cra", f"{url}/sdv", {"revision": 1}).status_code == 200
        signed = api.post(
            "pi",
            f"{url}/signature",
            {"username": "pi", "password": "correct horse battery", "meaning": "authorship"},
        )
        assert signed.status_code == 201, signed.text
        assert migrate(api, entry["entry_id"]).status_code == 200
        after = api.get("cra", url).json()
        assert (after["version"], after["sdv"], after["signed"]) == (2, "verified", True)


class TestRefusals:
    @pytest.mark.parametrize(("to_version", "message"), [(1, "newer"), (9, "no version 9")])
    def test_same_lower_or_unknown_versions_are_422(
        self, api: Api, to_version: int, message: str
    ) -> None:
        register(api)
        entry = enter_v1_ae(api)
        before = position(api)
        for dry_run in (True, False):
            response = migrate(api, entry["entry_id"], to_version=to_version, dry_run=dry_run)
            assert response.status_code == 422, response.text
            [problem] = response.json()["detail"]
            assert problem["path"] == "/to_version"
            assert message in problem["message"]
        assert position(api) == before

    def test_an_entry_already_on_v2_is_not_migrated_again_nor_back(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        assert migrate(api, entry["entry_id"]).status_code == 200
        for to_version in (1, 2):
            response = migrate(api, entry["entry_id"], to_version=to_version)
            assert response.status_code == 422
            assert response.json()["detail"][0]["path"] == "/to_version"

    @pytest.mark.parametrize(
        "body",
        [
            {"to_version": 2, "reason": ""},
            {"to_version": 2, "reason": "   "},
            {"to_version": 2},
            {"reason": REASON},
            {"to_version": 0, "reason": REASON},
            {"to_version": "two", "reason": REASON},
            {"to_version": 2, "reason": REASON, "dry_run": "perhaps"},
            {"to_version": 2, "reason": REASON, "mapping": {}},
        ],
    )
    def test_bad_bodies_are_422(self, api: Api, body: dict[str, Any]) -> None:
        register(api)
        entry = enter_v1_ae(api)
        before = position(api)
        response = api.post("dm", migrate_url(entry["entry_id"]), body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"]
        assert position(api) == before

    def test_a_blank_reason_points_at_the_reason(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        response = api.post("dm", migrate_url(entry["entry_id"]), {"to_version": 2, "reason": " "})
        assert [p["path"] for p in response.json()["detail"]] == ["/reason"]

    def test_a_voided_entry_conflicts_like_its_corrections(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        api.post("crc", f"{url}/void", {"reason": "wrong subject", "expected_revision": 1})
        before = position(api)
        for dry_run in (True, False):
            response = migrate(api, entry["entry_id"], dry_run=dry_run)
            assert response.status_code == 409
            assert "voided" in response.json()["detail"]
        assert position(api) == before

    def test_locked_entries_and_casebooks_are_423(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        assert api.post("dm", f"{url}/lock", {"reason": "clean"}).status_code == 200
        assert migrate(api, entry["entry_id"], dry_run=True).status_code == 423
        assert migrate(api, entry["entry_id"]).status_code == 423
        assert api.post("dm", f"{url}/unlock", {"reason": "migrate"}).status_code == 200
        assert api.post("dm", f"/subjects/{SUBJECT}/lock", {"reason": "clean"}).status_code == 200
        assert migrate(api, entry["entry_id"]).status_code == 423
        assert api.get("dm", url).json()["version"] == 1

    def test_a_stale_expected_revision_is_409(self, api: Api) -> None:
        register(api)
        entry = enter_v1_ae(api)
        url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
        body = {"changes": {"grade": 3}, "reason": "regraded", "expected_revision": 1}
        assert api.post("crc", f"{url}/corrections", body).status_code == 200
        response = migrate(api, entry["entry_id"], expected_revision=1)
        assert response.status_code == 409
        assert "revision 2" in response.json()["detail"]
        assert migrate(api, entry["entry_id"], expected_revision=2).status_code == 200

    @pytest.mark.parametrize("user", ["crc", "pi", "cra", "src", "fda", "admin"])
    def test_only_data_managers_migrate(self, api: Api, user: str) -> None:
        register(api)
        entry = enter_v1_ae(api)
        body = {"to_version": 2, "reason": REASON, "dry_run": True}
        assert api.post(user, migrate_url(entry["entry_id"]), body).status_code == 403

    def test_unknown_subjects_and_entries_are_404(self, api: Api) -> None:
        register(api)
        assert migrate(api, "no-such-entry").status_code == 404
        body = {"to_version": 2, "reason": REASON}
        assert api.post("dm", "/subjects/CHH-NOPE/entries/x/migrate", body).status_code == 404


# A forms folder with versions the shipped study does not have: a stricter adverse_event v3
# (not current) and a crs_assessment v2 (v1 plus an optional field), to reach the cases the
# shipped forms cannot: data that would not validate, and derived values recomputed.


@pytest.fixture
def draft_api(api_settings: Settings, tmp_path: Path) -> Iterator[Api]:
    forms = tmp_path / "forms"
    shutil.copytree(default_forms_dir(), forms)
    strict = json.loads((forms / "adverse_event" / "v2.json").read_text(encoding="utf-8"))
    strict["$id"] = "https://ecrf.invalid/forms/adverse_event/v3.json"
    strict["required"] = [*strict["required"], "action_taken", "outcome"]
    del strict["properties"]["special_interest"]
    (forms / "adverse_event" / "v3.json").write_text(json.dumps(strict), encoding="utf-8")
    crs = json.loads((forms / "crs_assessment" / "v1.json").read_text(encoding="utf-8"))
    crs["$id"] = "https://ecrf.invalid/forms/crs_assessment/v2.json"
    crs["properties"]["ferritin_ug_per_l"] = {"type": "number", "minimum": 0, "maximum": 1e6}
    (forms / "crs_assessment" / "v2.json").write_text(json.dumps(crs), encoding="utf-8")
    study = json.loads((forms / "study.json").read_text(encoding="utf-8"))
    assert study["forms"]["crs_assessment"]["current_version"] == 1  # v2 not yet current
    with TestClient(create_app(replace(api_settings, forms_dir=forms))) as client:
        harness = Api(client)
        harness.user("crc", ["site_staff"])
        harness.user("cra", ["monitor"])
        harness.user("dm", ["data_manager"], [])
        harness.user("src", ["safety_reviewer"], [])
        for username in ("admin", "crc", "cra", "dm", "src"):
            harness.headers(username)
        yield harness


def test_data_that_would_not_validate_is_refused_listing_every_problem(draft_api: Api) -> None:
    api = draft_api
    register(api)
    data = ae_example(api, 1)  # ongoing neutropenia: no action taken, no special_interest
    data["special_interest"] = False
    data.pop("outcome")
    body = {"form": "adverse_event", "version": 1, "visit": "LOG", "data": data}
    entry = api.post("crc", f"/subjects/{SUBJECT}/entries", body).json()
    before = position(api)
    for dry_run in (True, False):
        response = migrate(api, entry["entry_id"], to_version=3, dry_run=dry_run)
        assert response.status_code == 422, response.text
        problems = {p["path"] for p in response.json()["detail"]}
        assert problems == {"/action_taken", "/outcome", "/special_interest"}
    assert position(api) == before
    # The intermediate version still takes it.
    assert migrate(api, entry["entry_id"], to_version=2).status_code == 200


def test_derived_values_are_recomputed_and_reports_use_the_migrated_data(draft_api: Api) -> None:
    api = draft_api
    application = api.client.app.state.application  # type: ignore[attr-defined]
    register(api)
    infusion = api.get("crc", "/forms/cart_infusion/1").json()["examples"][0]
    body = {"form": "cart_infusion", "visit": "D0", "data": infusion}
    assert api.post("crc", f"/subjects/{SUBJECT}/entries", body).status_code == 201
    components = {
        "assessment_date": "2023-04-26",
        "fever": True,
        "max_temperature_c": 39.2,
        "hypotension": "one_vasopressor",
        "vasopressors": ["norepinephrine"],
        "hypoxia": "none",
        "antipyretic_or_anticytokine": False,
    }
    # An entry stored by an earlier release whose derivation gave grade 1: stale data as
    # it would sit in the log, written through the aggregate and the real event store.
    subject = application.repository.get(subject_stream(SUBJECT))
    form = application.forms.get("crs_assessment", 1)
    stale = {**components, "grade": 1}
    assert form.problems(stale) == []
    audit = {"user": "crc", "user_name": "Crc", "role": "site_staff", "site": "CHH"}
    subject.record_entry("crs-old", "crs_assessment", 1, "D1", stale, form.sha256, audit)
    application.save(subject)
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    report = "/reports/safety/crs-icans"
    assert api.get("src", report).json()["rows"][0]["crs_worst_grade"] == 1

    preview = migrate(api, "crs-old", dry_run=True).json()
    assert preview["changes"] == [{"path": "/grade", "old": 1, "new": 3}]
    assert api.get("src", report).json()["rows"][0]["crs_worst_grade"] == 1
    response = migrate(api, "crs-old")
    assert response.status_code == 200, response.text
    entry = response.json()["entry"]
    assert (entry["version"], entry["revision"], entry["data"]["grade"]) == (2, 2, 3)
    # Reports read the migrated data; as of before the migration, the data then.
    assert api.get("src", report).json()["rows"][0]["crs_worst_grade"] == 3
    then = api.get("src", report, params={"as_of": moment.isoformat()}).json()
    assert then["rows"][0]["crs_worst_grade"] == 1
