"""The role x endpoint x site matrix of PROTOCOL.md "Who uses it", through the real API.

Each row names an endpoint and the roles allowed to use it; every other role gets 403,
and site-bound users of another site get 404 (ids do not leak across sites). The safety
reviewer reads the safety tables and the dose cohorts, not casebooks, audit trails or queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.test_casebook import SUBJECT, example

ROLES = ["crc", "pi", "cra", "dm", "src", "fda", "admin"]
OTHER_SITE = ["rjh_crc", "rjh_pi", "rjh_cra"]


@dataclass
class World:
    """A CHH subject with one demographics entry, and users of a second site."""

    api: Api
    entry_id: str

    def entry_url(self) -> str:
        return f"/subjects/{SUBJECT}/entries/{self.entry_id}"

    def fresh_entry(self, user: str = "crc") -> str:
        body = {"form": "adverse_event", "visit": "LOG", "data": example(self.api, "adverse_event")}
        response = self.api.post(user, f"/subjects/{SUBJECT}/entries", body)
        assert response.status_code == 201, response.text
        entry_id: str = response.json()["entry_id"]
        return entry_id

    def fresh_query(self) -> str:
        """An open query (raised by the CHH monitor) on the demographics entry."""
        body = {"path": "/weight_kg", "text": "Please check against the chart."}
        response = self.api.post("cra", f"{self.entry_url()}/queries", body)
        assert response.status_code == 201, response.text
        query_id: str = response.json()["query_id"]
        return query_id

    def fresh_subject(self, screening_number: str) -> str:
        """Another CHH subject, with nothing entered yet."""
        body = {"site": "CHH", "screening_number": screening_number}
        response = self.api.post("crc", "/subjects", body)
        assert response.status_code == 201, response.text
        subject_id: str = response.json()["subject_id"]
        return subject_id

    def credentials(self, user: str, meaning: str) -> dict[str, str]:
        """A signature body with the caller's own username and password."""
        return {"username": user, "password": self.api.password(user), "meaning": meaning}


@pytest.fixture
def world(api: Api) -> World:
    api.post("admin", "/sites", {"site_id": "RJH", "name": "Ruijin"})
    api.user("rjh_crc", ["site_staff"], ["RJH"])
    api.user("rjh_pi", ["investigator"], ["RJH"])
    api.user("rjh_cra", ["monitor"], ["RJH"])
    for user in OTHER_SITE:
        api.headers(user)
    api.post("crc", "/subjects", {"site": "CHH", "screening_number": "S001"})
    body = {"form": "demographics", "visit": "SCR", "data": example(api, "demographics")}
    entry_id = api.post("crc", f"/subjects/{SUBJECT}/entries", body).json()["entry_id"]
    return World(api, entry_id)


Call = Callable[[World, str, int], Any]


def _read_casebook(w: World, user: str, i: int) -> Any:
    return w.api.get(user, f"/subjects/{SUBJECT}")


def _read_audit(w: World, user: str, i: int) -> Any:
    return w.api.get(user, f"{w.entry_url()}/audit")


def _register(w: World, user: str, i: int) -> Any:
    return w.api.post(user, "/subjects", {"site": "CHH", "screening_number": f"M{i}"})


def _enter(w: World, user: str, i: int) -> Any:
    body = {"form": "adverse_event", "visit": "LOG", "data": example(w.api, "adverse_event")}
    return w.api.post(user, f"/subjects/{SUBJECT}/entries", body)


def _correct(w: World, user: str, i: int) -> Any:
    entry_id = w.fresh_entry()
    grade = 1 if example(w.api, "adverse_event")["grade"] != 1 else 2
    body = {"changes": {"grade": grade}, "reason": "regraded", "expected_revision": 1}
    return w.api.post(user, f"/subjects/{SUBJECT}/entries/{entry_id}/corrections", body)


def _void(w: World, user: str, i: int) -> Any:
    entry_id = w.fresh_entry()
    body = {"reason": "entered in error", "expected_revision": 1}
    return w.api.post(user, f"/subjects/{SUBJECT}/entries/{entry_id}/void", body)


def _open_query(w: World, user: str, i: int) -> Any:
    body = {"path": "/weight_kg", "text": "Please check."}
    return w.api.post(user, f"{w.entry_url()}/queries", body)


def _sdv(w: World, user: str, i: int) -> Any:
    entry_id = w.fresh_entry()
    return w.api.post(user, f"/subjects/{SUBJECT}/entries/{entry_id}/sdv", {"revision": 1})


def _lock(w: World, user: str, i: int) -> Any:
    entry_id = w.fresh_entry()
    return w.api.post(user, f"/subjects/{SUBJECT}/entries/{entry_id}/lock", {"reason": "lock"})


def _migrate(w: World, user: str, i: int) -> Any:
    body = {"form": "adverse_event", "version": 1, "visit": "LOG"}
    body["data"] = example(w.api, "adverse_event")
    response = w.api.post("crc", f"/subjects/{SUBJECT}/entries", body)
    assert response.status_code == 201, response.text
    url = f"/subjects/{SUBJECT}/entries/{response.json()['entry_id']}/migrate"
    return w.api.post(user, url, {"to_version": 2, "reason": "adverse_event v2 released"})


def _read_query(w: World, user: str, i: int) -> Any:
    return w.api.get(user, f"/queries/{w.fresh_query()}")


def _answer_query(w: World, user: str, i: int) -> Any:
    return w.api.post(user, f"/queries/{w.fresh_query()}/answer", {"text": "Chart says 62 kg."})


def _close_query(w: World, user: str, i: int) -> Any:
    return w.api.post(user, f"/queries/{w.fresh_query()}/close", {"text": "Resolved."})


def _reopen_query(w: World, user: str, i: int) -> Any:
    query_id = w.fresh_query()
    closed = w.api.post("cra", f"/queries/{query_id}/close", {"text": "Resolved."})
    assert closed.status_code == 200, closed.text
    return w.api.post(user, f"/queries/{query_id}/reopen", {"text": "Still open."})


def _sign_entry(w: World, user: str, i: int) -> Any:
    url = f"/subjects/{SUBJECT}/entries/{w.fresh_entry()}/signature"
    return w.api.post(user, url, w.credentials(user, "review"))


def _sign_casebook(w: World, user: str, i: int) -> Any:
    return w.api.post(user, f"/subjects/{SUBJECT}/signature", w.credentials(user, "approval"))


def _unlock(w: World, user: str, i: int) -> Any:
    url = f"/subjects/{SUBJECT}/entries/{w.fresh_entry()}"
    assert w.api.post("dm", f"{url}/lock", {"reason": "lock"}).status_code == 200
    return w.api.post(user, f"{url}/unlock", {"reason": "query follow-up"})


def _lock_casebook(w: World, user: str, i: int) -> Any:
    subject_id = w.fresh_subject(f"L{i}")
    return w.api.post(user, f"/subjects/{subject_id}/lock", {"reason": "interim analysis"})


def _unlock_casebook(w: World, user: str, i: int) -> Any:
    subject_id = w.fresh_subject(f"U{i}")
    locked = w.api.post("dm", f"/subjects/{subject_id}/lock", {"reason": "interim analysis"})
    assert locked.status_code == 200, locked.text
    return w.api.post(user, f"/subjects/{subject_id}/unlock", {"reason": "reopened"})


def _create_user(w: World, user: str, i: int) -> Any:
    body = {
        "username": f"new{i}",
        "full_name": "New Person",
        "password": "correct horse battery",
        "roles": ["monitor"],
        "sites": ["CHH"],
    }
    return w.api.post(user, "/users", body)


def _add_site(w: World, user: str, i: int) -> Any:
    return w.api.post(user, "/sites", {"site_id": f"S{i}X", "name": "New site"})


READERS = {"crc", "pi", "cra", "dm", "fda"}
MATRIX: list[tuple[str, Call, set[str], int, bool]] = [
    # (name, call, allowed roles, success status, site-bound)
    ("read casebook", _read_casebook, READERS, 200, True),
    ("read audit trail", _read_audit, READERS, 200, True),
    ("read query", _read_query, READERS, 200, True),
    ("register subject", _register, {"crc", "pi"}, 201, False),
    ("enter form", _enter, {"crc", "pi"}, 201, True),
    ("correct entry", _correct, {"crc", "pi"}, 200, True),
    ("void entry", _void, {"crc", "pi"}, 200, True),
    ("open query", _open_query, {"cra", "dm"}, 201, True),
    ("answer query", _answer_query, {"crc", "pi"}, 200, True),
    ("close query", _close_query, {"cra", "dm"}, 200, True),
    ("reopen query", _reopen_query, {"cra", "dm"}, 200, True),
    ("verify source", _sdv, {"cra"}, 200, True),
    ("sign entry", _sign_entry, {"pi"}, 201, True),
    ("sign casebook", _sign_casebook, {"pi"}, 201, True),
    ("lock entry", _lock, {"dm"}, 200, True),
    ("unlock entry", _unlock, {"dm"}, 200, True),
    ("lock casebook", _lock_casebook, {"dm"}, 200, True),
    ("unlock casebook", _unlock_casebook, {"dm"}, 200, True),
    ("migrate entry", _migrate, {"dm"}, 200, False),
    ("create user", _create_user, {"admin"}, 201, False),
    ("add site", _add_site, {"admin"}, 201, False),
]


@pytest.mark.parametrize(
    ("name", "call", "allowed", "success", "site_bound"),
    MATRIX,
    ids=[row[0] for row in MATRIX],
)
def test_role_matrix(
    world: World, name: str, call: Call, allowed: set[str], success: int, site_bound: bool
) -> None:
    for i, user in enumerate(ROLES):
        expected = success if user in allowed else 403
        response = call(world, user, i)
        assert response.status_code == expected, f"{name} as {user}: {response.text}"
    if site_bound:
        for i, user in enumerate(OTHER_SITE, start=len(ROLES)):
            expected = 404 if user.removeprefix("rjh_") in allowed else 403
            response = call(world, user, i)
            assert response.status_code == expected, f"{name} as {user}: {response.text}"


@pytest.mark.parametrize("path", ["/queries", "/subjects"])
def test_work_lists_show_each_reader_only_their_sites(world: World, path: str) -> None:
    query_id = world.fresh_query()
    for user in ROLES:
        response = world.api.get(user, path)
        if user not in READERS:
            assert response.status_code == 403, f"{path} as {user}: {response.text}"
            continue
        assert response.status_code == 200, f"{path} as {user}: {response.text}"
        listed = {row.get("query_id", row["subject_id"]) for row in response.json()}
        assert (query_id if path == "/queries" else SUBJECT) in listed, user
    for user in OTHER_SITE:
        response = world.api.get(user, path)
        assert response.status_code == 200, f"{path} as {user}: {response.text}"
        assert response.json() == [], user
    for user in ("rjh_cra", "rjh_crc"):
        assert world.api.get(user, "/queries", params={"site": "CHH"}).json() == []
        assert world.api.get(user, f"/queries/{query_id}").status_code == 404


def test_the_safety_reviewer_reads_safety_tables_and_cohorts_not_casebooks(world: World) -> None:
    for path in ("/reports/safety/teae", "/reports/safety/dlt", "/cohorts"):
        assert world.api.get("src", path).status_code == 200, path
    query_id = world.fresh_query()
    for path in (
        f"/subjects/{SUBJECT}",
        world.entry_url(),
        f"{world.entry_url()}/audit",
        f"/subjects/{SUBJECT}/audit",
        f"/subjects/{SUBJECT}/timeline",  # a patient's whole course, not a safety table
        "/subjects",
        "/queries",
        f"/queries/{query_id}",
    ):
        assert world.api.get("src", path).status_code == 403, path
