"""The role x endpoint x site matrix of PROTOCOL.md "Who uses it", through the real API.

Each row names an endpoint and the roles allowed to use it; every other role gets 403,
and site-bound users of another site get 404 (ids do not leak across sites).
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


READERS = {"crc", "pi", "cra", "dm", "src", "fda"}
MATRIX: list[tuple[str, Call, set[str], int, bool]] = [
    # (name, call, allowed roles, success status, site-bound)
    ("read casebook", _read_casebook, READERS, 200, True),
    ("read audit trail", _read_audit, READERS, 200, True),
    ("register subject", _register, {"crc", "pi"}, 201, False),
    ("enter form", _enter, {"crc", "pi"}, 201, True),
    ("correct entry", _correct, {"crc", "pi"}, 200, True),
    ("void entry", _void, {"crc", "pi"}, 200, True),
    ("open query", _open_query, {"cra", "dm"}, 201, True),
    ("verify source", _sdv, {"cra"}, 200, True),
    ("lock entry", _lock, {"dm"}, 200, False),
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
