"""Monitoring and sign-off: queries, SDV, electronic signatures and locks (11.10(e), 11.50,
11.70, 11.200), each through the real API with its role matrix and bad input."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from tests.api.conftest import PASSWORD, Api
from tests.api.test_casebook import SUBJECT, enter_demographics


def _entry_url(entry: dict[str, Any]) -> str:
    return f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"


def _correct(api: Api, entry: dict[str, Any], revision: int, **changes: Any) -> Any:
    body = {"changes": changes, "reason": "source says otherwise", "expected_revision": revision}
    return api.post("crc", f"{_entry_url(entry)}/corrections", body)


def _open_query(api: Api, entry: dict[str, Any], user: str = "cra") -> dict[str, Any]:
    body = {"path": "/weight_kg", "text": "Weight differs from the nursing chart."}
    response = api.post(user, f"{_entry_url(entry)}/queries", body)
    assert response.status_code == 201, response.text
    query: dict[str, Any] = response.json()
    return query


class TestQueries:
    def test_the_whole_lifecycle(self, api: Api) -> None:
        entry = enter_demographics(api)
        query = _open_query(api, entry)
        assert query["state"] == "open"
        assert query["query_id"].startswith(f"{SUBJECT}.Q")
        assert api.get("crc", _entry_url(entry)).json()["open_queries"] == 1
        assert api.get("crc", f"/subjects/{SUBJECT}").json()["open_queries"] == 1
        qid = query["query_id"]
        answered = api.post("crc", f"/queries/{qid}/answer", {"text": "Chart was right: 71 kg."})
        assert answered.json()["state"] == "answered"
        closed = api.post("cra", f"/queries/{qid}/close", {"text": "Resolved."})
        assert closed.json()["state"] == "closed"
        assert api.get("crc", _entry_url(entry)).json()["open_queries"] == 0
        reopened = api.post("dm", f"/queries/{qid}/reopen", {"text": "Still inconsistent."})
        assert reopened.json()["state"] == "open"
        conversation = api.get("crc", f"/queries/{qid}").json()["messages"]
        assert [m["action"] for m in conversation] == ["opened", "answered", "closed", "reopened"]
        assert [m["user"] for m in conversation] == ["cra", "crc", "cra", "dm"]

    def test_the_work_list_filters_by_state_site_subject_and_form(self, api: Api) -> None:
        entry = enter_demographics(api)
        first = _open_query(api, entry)
        _open_query(api, entry, user="dm")
        api.post("crc", f"/queries/{first['query_id']}/answer", {"text": "Checked."})
        everything = api.get("cra", "/queries").json()
        assert len(everything) == 2
        open_only = api.get("cra", "/queries", params={"state": "open"}).json()
        assert [q["opened_by"] for q in open_only] == ["dm"]
        answered = api.get("crc", "/queries", params={"state": "answered"}).json()
        assert [q["query_id"] for q in answered] == [first["query_id"]]
        for params in ({"subject": SUBJECT}, {"site": "CHH"}, {"form": "demographics"}):
            assert len(api.get("dm", "/queries", params=params).json()) == 2
        assert api.get("dm", "/queries", params={"form": "labs"}).json() == []
        assert api.get("dm", "/queries", params={"state": "bogus"}).status_code == 422

    def test_a_correction_can_answer_a_query(self, api: Api) -> None:
        entry = enter_demographics(api)
        query = _open_query(api, entry)
        body = {
            "changes": {"weight_kg": 71.0},
            "reason": "corrected from the nursing chart",
            "expected_revision": 1,
            "query_id": query["query_id"],
        }
        assert api.post("crc", f"{_entry_url(entry)}/corrections", body).status_code == 200
        assert api.get("cra", f"/queries/{query['query_id']}").json()["state"] == "answered"
        audit = api.get("cra", f"{_entry_url(entry)}/audit").json()
        assert audit[-2]["action"] == "entry_corrected"
        assert audit[-2]["details"]["query_id"] == query["query_id"]
        assert audit[-1]["action"] == "query_answered"

    @pytest.mark.parametrize("user", ["crc", "pi", "src", "fda", "admin"])
    def test_only_monitors_and_data_managers_open_and_close(self, api: Api, user: str) -> None:
        entry = enter_demographics(api)
        body = {"path": "/weight_kg", "text": "Please check."}
        assert api.post(user, f"{_entry_url(entry)}/queries", body).status_code == 403
        query = _open_query(api, entry)
        assert api.post(user, f"/queries/{query['query_id']}/close", {}).status_code == 403

    @pytest.mark.parametrize("user", ["cra", "dm", "src", "fda", "admin"])
    def test_only_the_site_answers(self, api: Api, user: str) -> None:
        query = _open_query(api, enter_demographics(api))
        answer = api.post(user, f"/queries/{query['query_id']}/answer", {"text": "Fine."})
        assert answer.status_code == 403

    @pytest.mark.parametrize("path", ["/no_such_field", "/sex/extra", "weight_kg", ""])
    def test_a_query_on_a_path_the_form_does_not_define_is_422(self, api: Api, path: str) -> None:
        entry = enter_demographics(api)
        response = api.post("cra", f"{_entry_url(entry)}/queries", {"path": path, "text": "?"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["path"] == "/path"

    def test_an_answer_to_a_closed_query_conflicts(self, api: Api) -> None:
        query = _open_query(api, enter_demographics(api))
        qid = query["query_id"]
        api.post("cra", f"/queries/{qid}/close", {"text": "Raised in error."})
        assert api.post("crc", f"/queries/{qid}/answer", {"text": "Too late"}).status_code == 409
        assert api.post("cra", f"/queries/{qid}/close", {}).status_code == 409
        assert api.post("cra", f"/queries/{qid}/reopen", None).status_code == 200
        assert api.post("cra", f"/queries/{qid}/reopen", None).status_code == 409

    @pytest.mark.parametrize("qid", ["nope", "CHH-S001.Q99", "CHH-NOPE.Q1", ".Q1"])
    def test_unknown_queries_are_404(self, api: Api, qid: str) -> None:
        enter_demographics(api)
        assert api.post("crc", f"/queries/{qid}/answer", {"text": "x"}).status_code == 404

    def test_empty_texts_are_422(self, api: Api) -> None:
        entry = enter_demographics(api)
        body = {"path": "/weight_kg", "text": "   "}
        assert api.post("cra", f"{_entry_url(entry)}/queries", body).status_code == 422
        query = _open_query(api, entry)
        answer = api.post("crc", f"/queries/{query['query_id']}/answer", {"text": ""})
        assert answer.status_code == 422


class TestSourceDataVerification:
    def test_a_correction_after_sdv_shows_what_changed(self, api: Api) -> None:
        entry = enter_demographics(api)
        old = entry["data"]["weight_kg"]
        verified = api.post("cra", f"{_entry_url(entry)}/sdv", {"revision": 1})
        assert verified.status_code == 200
        assert verified.json()["sdv"] == "verified"
        assert api.get("cra", f"/subjects/{SUBJECT}").json()["sdv"] == "verified"
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 200
        current = api.get("cra", _entry_url(entry)).json()
        assert current["sdv"] == "changed_since_verified"
        assert current["sdv_revision"] == 1
        assert current["sdv_changes"] == [{"path": "/weight_kg", "old": old, "new": 80.0}]
        assert api.get("cra", f"/subjects/{SUBJECT}").json()["sdv"] == "partially_verified"
        again = api.post("cra", f"{_entry_url(entry)}/sdv", {"revision": 2})
        assert again.json()["sdv"] == "verified"

    def test_sdv_of_a_stale_revision_conflicts(self, api: Api) -> None:
        entry = enter_demographics(api)
        _correct(api, entry, 1, weight_kg=80.0)
        assert api.post("cra", f"{_entry_url(entry)}/sdv", {"revision": 1}).status_code == 409

    @pytest.mark.parametrize("user", ["crc", "pi", "dm", "src", "fda", "admin"])
    def test_only_monitors_verify(self, api: Api, user: str) -> None:
        entry = enter_demographics(api)
        assert api.post(user, f"{_entry_url(entry)}/sdv", {"revision": 1}).status_code == 403

    def test_sdv_is_in_the_audit_trail(self, api: Api) -> None:
        entry = enter_demographics(api)
        api.post("cra", f"{_entry_url(entry)}/sdv", {"revision": 1})
        record = api.get("fda", f"{_entry_url(entry)}/audit").json()[-1]
        assert (record["action"], record["user"], record["role"]) == (
            "entry_verified",
            "cra",
            "monitor",
        )
        assert record["revision"] == 1


def _sign(api: Api, entry: dict[str, Any], **overrides: Any) -> Any:
    body = {"username": "pi", "password": PASSWORD, "meaning": "review", **overrides}
    return api.post(overrides.pop("as_user", "pi"), f"{_entry_url(entry)}/signature", body)


class TestSignatures:
    def test_the_manifestation_is_bound_to_the_signed_data(self, api: Api) -> None:
        entry = enter_demographics(api)
        response = _sign(api, entry)
        assert response.status_code == 201, response.text
        signature = response.json()
        canonical = orjson.dumps(entry["data"], option=orjson.OPT_SORT_KEYS)
        assert signature["data_hash"] == hashlib.sha256(canonical).hexdigest()
        assert signature["signer"] == "pi"
        assert signature["signer_name"] == "Pi"
        assert signature["meaning"] == "review"
        assert signature["statement"]
        assert signature["revision"] == 1
        assert signature["at"].endswith("Z")
        assert api.get("cra", _entry_url(entry)).json()["signed"] is True

    def test_a_later_correction_invalidates_the_signature_visibly(self, api: Api) -> None:
        entry = enter_demographics(api)
        _sign(api, entry)
        _correct(api, entry, 1, weight_kg=80.0)
        current = api.get("cra", _entry_url(entry)).json()
        assert current["signed"] is False
        assert [s["valid"] for s in current["signatures"]] == [False]
        actions = [r["action"] for r in api.get("fda", f"{_entry_url(entry)}/audit").json()]
        assert actions == ["entry_recorded", "entry_signed", "entry_corrected"]

    def test_a_wrong_password_is_refused_and_counts_towards_lockout(self, api: Api) -> None:
        entry = enter_demographics(api)
        for _ in range(4):
            assert _sign(api, entry, password="not my password").status_code == 403
        assert _sign(api, entry, password="not my password").status_code == 423
        login = api.client.post("/auth/token", data={"username": "pi", "password": PASSWORD})
        assert login.status_code == 423
        assert api.get("cra", _entry_url(entry)).json()["signatures"] == []

    def test_nobody_signs_with_another_persons_credentials(self, api: Api) -> None:
        entry = enter_demographics(api)
        api.user("pi2", ["investigator"])
        as_other = {"username": "pi2", "password": PASSWORD, "meaning": "review"}
        response = api.post("pi", f"{_entry_url(entry)}/signature", as_other)
        assert response.status_code == 403
        assert api.get("cra", _entry_url(entry)).json()["signatures"] == []

    @pytest.mark.parametrize("user", ["crc", "cra", "dm", "src", "fda", "admin"])
    def test_only_investigators_sign(self, api: Api, user: str) -> None:
        entry = enter_demographics(api)
        body = {"username": user, "password": PASSWORD, "meaning": "review"}
        assert api.post(user, f"{_entry_url(entry)}/signature", body).status_code == 403

    def test_an_unknown_meaning_is_422(self, api: Api) -> None:
        entry = enter_demographics(api)
        response = _sign(api, entry, meaning="because")
        assert response.status_code == 422
        assert response.json()["detail"][0]["path"] == "/meaning"

    def test_a_casebook_signature_covers_every_live_entry(self, api: Api) -> None:
        entry = enter_demographics(api)
        body = {"username": "pi", "password": PASSWORD, "meaning": "approval"}
        signed = api.post("pi", f"/subjects/{SUBJECT}/signature", body)
        assert signed.status_code == 201, signed.text
        assert [e["entry_id"] for e in signed.json()["entries"]] == [entry["entry_id"]]
        assert api.get("cra", f"/subjects/{SUBJECT}").json()["signed"] is True
        _correct(api, entry, 1, weight_kg=80.0)
        casebook = api.get("cra", f"/subjects/{SUBJECT}").json()
        assert casebook["signed"] is False
        assert casebook["signatures"][0]["valid"] is False


class TestLocks:
    def test_a_locked_entry_refuses_corrections_and_voids(self, api: Api) -> None:
        entry = enter_demographics(api)
        locked = api.post("dm", f"{_entry_url(entry)}/lock", {"reason": "database lock"})
        assert locked.status_code == 200
        assert locked.json()["locked"] is True
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 423
        void = {"reason": "r", "expected_revision": 1}
        assert api.post("crc", f"{_entry_url(entry)}/void", void).status_code == 423
        unlocked = api.post("dm", f"{_entry_url(entry)}/unlock", {"reason": "query follow-up"})
        assert unlocked.json()["locked"] is False
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 200

    def test_a_locked_casebook_refuses_new_entries(self, api: Api) -> None:
        entry = enter_demographics(api)
        assert api.post("dm", f"/subjects/{SUBJECT}/lock", {"reason": "interim"}).status_code == 200
        body = {"form": "vital_signs", "visit": "SCR", "data": {}}
        assert api.post("crc", f"/subjects/{SUBJECT}/entries", body).status_code == 423
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 423
        assert api.get("crc", _entry_url(entry)).json()["locked"] is True
        assert api.post("dm", f"/subjects/{SUBJECT}/unlock", {"reason": "reopened"}).is_success
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 200

    def test_locks_need_a_reason_and_a_data_manager(self, api: Api) -> None:
        entry = enter_demographics(api)
        assert api.post("dm", f"{_entry_url(entry)}/lock", {"reason": " "}).status_code == 422
        for user in ("crc", "pi", "cra", "src", "fda", "admin"):
            response = api.post(user, f"{_entry_url(entry)}/lock", {"reason": "x"})
            assert response.status_code == 403, user
        assert api.post("dm", f"{_entry_url(entry)}/unlock", {"reason": "x"}).status_code == 409

    def test_locks_are_audited_with_their_reason(self, api: Api) -> None:
        entry = enter_demographics(api)
        api.post("dm", f"{_entry_url(entry)}/lock", {"reason": "database lock"})
        record = api.get("cra", f"/subjects/{SUBJECT}/audit").json()[-1]
        assert record["action"] == "entry_locked"
        assert (record["user"], record["role"], record["reason"]) == (
            "dm",
            "data_manager",
            "database lock",
        )


class TestSigningWhatWasRead:
    def test_a_signature_on_a_stale_revision_is_409_and_signs_nothing(self, api: Api) -> None:
        entry = enter_demographics(api)
        read = api.get("pi", _entry_url(entry)).json()  # the investigator reads revision 1
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 200  # the site corrects
        stale = _sign(api, entry, expected_revision=read["revision"])
        assert stale.status_code == 409
        assert "revision 2" in stale.json()["detail"]
        assert api.get("cra", _entry_url(entry)).json()["signatures"] == []
        current = _sign(api, entry, expected_revision=2)
        assert current.status_code == 201, current.text
        assert (current.json()["revision"], current.json()["valid"]) == (2, True)

    def test_without_expected_revision_the_current_revision_is_signed(self, api: Api) -> None:
        entry = enter_demographics(api)
        _correct(api, entry, 1, weight_kg=80.0)
        assert _sign(api, entry).json()["revision"] == 2

    @pytest.mark.parametrize("revision", [0, -1, "one", 1.5])
    def test_a_malformed_expected_revision_is_422(self, api: Api, revision: Any) -> None:
        entry = enter_demographics(api)
        response = _sign(api, entry, expected_revision=revision)
        assert response.status_code == 422
        assert response.json()["detail"][0]["path"] == "/expected_revision"

    def test_a_casebook_signature_on_a_stale_casebook_is_409(self, api: Api) -> None:
        entry = enter_demographics(api)
        read = api.get("pi", f"/subjects/{SUBJECT}").json()
        body = {"username": "pi", "password": PASSWORD, "meaning": "approval"}
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 200
        stale = api.post(
            "pi", f"/subjects/{SUBJECT}/signature", {**body, "expected_revision": read["revision"]}
        )
        assert stale.status_code == 409
        assert api.get("cra", f"/subjects/{SUBJECT}").json()["signatures"] == []
        now = api.get("pi", f"/subjects/{SUBJECT}").json()
        assert now["revision"] == read["revision"] + 1
        signed = api.post(
            "pi", f"/subjects/{SUBJECT}/signature", {**body, "expected_revision": now["revision"]}
        )
        assert signed.status_code == 201, signed.text
        assert signed.json()["entries"] == [
            {
                "entry_id": entry["entry_id"],
                "revision": 2,
                "data_hash": _hash(now["entries"][0]),
            }
        ]


def _hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(entry["data"], option=orjson.OPT_SORT_KEYS)).hexdigest()


class TestSigningWithOwnCredentials:
    """Two investigators with different passwords: only one's own password signs as them."""

    OTHER_PASSWORD = "a different pass phrase"

    def test_each_investigator_signs_only_with_their_own_password(self, api: Api) -> None:
        entry = enter_demographics(api)
        api.user("pi2", ["investigator"], password=self.OTHER_PASSWORD)
        url = f"{_entry_url(entry)}/signature"
        attempts = [
            ("pi", {"username": "pi2", "password": self.OTHER_PASSWORD}),  # another's, right
            ("pi", {"username": "pi", "password": self.OTHER_PASSWORD}),  # own name, their pw
            ("pi2", {"username": "pi2", "password": PASSWORD}),  # own name, the first's pw
            ("pi2", {"username": "pi", "password": PASSWORD}),  # the first's, right
        ]
        for caller, credentials in attempts:
            response = api.post(caller, url, {**credentials, "meaning": "review"})
            assert response.status_code == 403, (caller, credentials, response.text)
        assert api.get("cra", _entry_url(entry)).json()["signatures"] == []
        own = api.post(
            "pi2", url, {"username": "pi2", "password": self.OTHER_PASSWORD, "meaning": "review"}
        )
        assert own.status_code == 201, own.text
        assert (own.json()["signer"], own.json()["signer_name"]) == ("pi2", "Pi2")

    def test_a_wrong_password_counts_against_the_signer_not_the_other(self, api: Api) -> None:
        entry = enter_demographics(api)
        api.user("pi2", ["investigator"], password=self.OTHER_PASSWORD)
        url = f"{_entry_url(entry)}/signature"
        for _ in range(5):
            body = {"username": "pi2", "password": PASSWORD, "meaning": "review"}
            api.post("pi2", url, body)
        assert api.get("admin", "/users/pi2").json()["locked"] is True
        assert api.get("admin", "/users/pi").json()["locked"] is False
        assert _sign(api, entry).status_code == 201


def _details(api: Api, entry: dict[str, Any], action: str) -> dict[str, Any]:
    [record] = [
        r for r in api.get("fda", f"{_entry_url(entry)}/audit").json() if r["action"] == action
    ]
    details: dict[str, Any] = record["details"]
    return details


class TestWhatAChangeUndoes:
    """The audit names the signatures a change invalidated and the SDV it made stale."""

    def test_a_correction_lists_invalidated_signatures_and_stale_sdv(self, api: Api) -> None:
        entry = enter_demographics(api)
        verified = api.post("cra", f"{_entry_url(entry)}/sdv", {"revision": 1}).json()
        signature = _sign(api, entry).json()
        assert _correct(api, entry, 1, weight_kg=80.0).status_code == 200
        details = _details(api, entry, "entry_corrected")
        assert details["invalidated_signatures"] == [
            {
                "signer": "pi",
                "signer_name": "Pi",
                "at": signature["at"],
                "meaning": "review",
                "revision": 1,
                "data_hash": signature["data_hash"],
            }
        ]
        assert details["stale_sdv"] == {
            "revision": 1,
            "verified_by": "cra",
            "verified_at": verified["sdv_at"],
        }
        subject_record = api.get("cra", f"/subjects/{SUBJECT}/audit").json()[-1]
        assert subject_record["action"] == "entry_corrected"
        assert subject_record["details"]["invalidated_signatures"][0]["signer"] == "pi"

    def test_a_second_correction_invalidates_nothing_more(self, api: Api) -> None:
        entry = enter_demographics(api)
        _sign(api, entry)
        _correct(api, entry, 1, weight_kg=80.0)
        _correct(api, entry, 2, weight_kg=81.0)
        audit = api.get("fda", f"{_entry_url(entry)}/audit").json()
        corrections = [r["details"] for r in audit if r["action"] == "entry_corrected"]
        assert "invalidated_signatures" in corrections[0]
        assert "invalidated_signatures" not in corrections[1]
        assert all("stale_sdv" not in d for d in corrections)

    def test_a_void_lists_what_it_invalidated(self, api: Api) -> None:
        entry = enter_demographics(api)
        api.post("cra", f"{_entry_url(entry)}/sdv", {"revision": 1})
        _sign(api, entry, meaning="authorship")
        void = {"reason": "wrong subject", "expected_revision": 1}
        assert api.post("crc", f"{_entry_url(entry)}/void", void).status_code == 200
        details = _details(api, entry, "entry_voided")
        assert [s["meaning"] for s in details["invalidated_signatures"]] == ["authorship"]
        assert details["stale_sdv"]["verified_by"] == "cra"

    def test_a_change_lists_the_casebook_signatures_it_invalidated(self, api: Api) -> None:
        entry = enter_demographics(api)
        body = {"username": "pi", "password": PASSWORD, "meaning": "approval"}
        casebook_signature = api.post("pi", f"/subjects/{SUBJECT}/signature", body).json()
        _correct(api, entry, 1, weight_kg=80.0)
        [lost] = _details(api, entry, "entry_corrected")["invalidated_casebook_signatures"]
        assert (lost["signer"], lost["meaning"], lost["at"]) == (
            "pi",
            "approval",
            casebook_signature["at"],
        )

    def test_changes_that_undo_nothing_say_nothing(self, api: Api) -> None:
        entry = enter_demographics(api)
        _correct(api, entry, 1, weight_kg=80.0)
        details = _details(api, entry, "entry_corrected")
        assert not {"invalidated_signatures", "stale_sdv", "invalidated_casebook_signatures"} & set(
            details
        )


def test_every_timestamp_is_utc_with_z(api: Api) -> None:
    entry = enter_demographics(api)
    query = _open_query(api, entry)
    api.post("crc", f"/queries/{query['query_id']}/answer", {"text": "Checked."})
    api.post("cra", f"{_entry_url(entry)}/sdv", {"revision": 1})
    _sign(api, entry)
    _correct(api, entry, 1, weight_kg=80.0)
    stamps: list[str] = []
    for listed in api.get("cra", "/queries").json():
        stamps += [listed["opened_at"], listed["updated_at"]]
    full = api.get("cra", f"/queries/{query['query_id']}").json()
    stamps += [full["opened_at"], *(m["at"] for m in full["messages"])]
    current = api.get("cra", _entry_url(entry)).json()
    stamps += [current["recorded_at"], current["updated_at"], current["sdv_at"]]
    stamps += [s["at"] for s in current["signatures"]]
    audit = api.get("cra", f"{_entry_url(entry)}/audit").json()
    stamps += [r["at"] for r in audit]
    stamps += [s["at"] for s in audit[-1]["details"]["invalidated_signatures"]]
    stamps.append(audit[-1]["details"]["stale_sdv"]["verified_at"])
    stamps += [e["at"] for e in api.get("fda", "/ledger/events").json() if e["at"] is not None]
    assert len(stamps) > 12
    assert all(isinstance(s, str) and s.endswith("Z") for s in stamps), stamps
