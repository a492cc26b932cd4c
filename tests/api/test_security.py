"""Attacks on identity and access: each is refused, and each refusal is recorded in the log."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import pytest

from ecrf.api.errors import ANONYMOUS_REFUSALS_PER_MINUTE
from ecrf.domain.security_log import AccessRefusal
from tests.api.conftest import PASSWORD, Api
from tests.api.test_casebook import SUBJECT, enter_demographics


def _refusals(api: Api) -> list[Any]:
    application = api.client.app.state.application  # type: ignore[attr-defined]
    topic = f"{AccessRefusal.Recorded.__module__}:{AccessRefusal.Recorded.__qualname__}"
    notifications = application.recorder.select_notifications(
        start=None, limit=10_000, topics=[topic]
    )
    return [application.mapper.to_domain_event(n) for n in notifications]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_expired_token_is_refused_and_recorded(api: Api) -> None:
    application = api.client.app.state.application  # type: ignore[attr-defined]
    now = int(time.time())
    claims = {"sub": "crc", "iat": now - 3600, "exp": now - 60}
    expired = jwt.encode(claims, application.tokens.secret, algorithm="HS256")
    response = api.client.get("/subjects", headers=_bearer(expired))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    [refusal] = _refusals(api)
    assert (refusal.status, refusal.path, refusal.user) == (401, "/subjects", "anonymous")


def test_a_token_signed_with_another_key_is_refused(api: Api) -> None:
    forged = jwt.encode({"sub": "admin", "exp": int(time.time()) + 600}, "x" * 48, "HS256")
    assert api.client.get("/users/crc", headers=_bearer(forged)).status_code == 401
    assert [r.status for r in _refusals(api)] == [401]


def test_an_unsigned_token_is_refused(api: Api) -> None:
    header = '{"alg":"none","typ":"JWT"}'
    payload = f'{{"sub":"admin","exp":{int(time.time()) + 600}}}'
    unsigned = (
        ".".join(
            base64.urlsafe_b64encode(part.encode()).decode().rstrip("=")
            for part in (header, payload)
        )
        + "."
    )
    assert api.client.get("/users/crc", headers=_bearer(unsigned)).status_code == 401
    [refusal] = _refusals(api)
    assert (refusal.status, refusal.path, refusal.user) == (401, "/users/crc", "anonymous")


def test_lockout_is_refused_and_recorded(api: Api) -> None:
    for _ in range(5):
        api.client.post("/auth/token", data={"username": "cra", "password": "guess!"})
    locked = api.client.post("/auth/token", data={"username": "cra", "password": PASSWORD})
    assert locked.status_code == 423
    statuses = [r.status for r in _refusals(api) if r.path == "/auth/token"]
    assert statuses == [401, 401, 401, 401, 423, 423]


def test_cross_site_access_looks_absent_but_is_recorded(api: Api) -> None:
    enter_demographics(api)
    api.post("admin", "/sites", {"site_id": "RJH", "name": "Ruijin"})
    api.user("rjh_cra", ["monitor"], ["RJH"])
    assert api.get("rjh_cra", f"/subjects/{SUBJECT}").status_code == 404
    [refusal] = _refusals(api)
    assert (refusal.user, refusal.status) == ("rjh_cra", 404)
    assert "HiddenError" in refusal.reason


@pytest.mark.parametrize(
    ("user", "attempt"),
    [
        ("crc", "edit a user"),
        ("crc", "grant themself admin"),
        ("cra", "correct data"),
        ("admin", "enter clinical data"),
        ("fda", "void data"),
        ("src", "sign as an investigator"),
    ],
)
def test_privilege_escalation_is_refused_and_recorded(api: Api, user: str, attempt: str) -> None:
    entry = enter_demographics(api)
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
    requests = {
        "edit a user": lambda: api.patch(user, "/users/pi", {"sites": [], "reason": "r"}),
        "grant themself admin": lambda: api.patch(
            user, f"/users/{user}", {"roles": ["admin"], "reason": "r"}
        ),
        "correct data": lambda: api.post(
            user,
            f"{url}/corrections",
            {"changes": {"weight_kg": 1.0}, "reason": "r", "expected_revision": 1},
        ),
        "enter clinical data": lambda: api.post(
            user,
            f"/subjects/{SUBJECT}/entries",
            {"form": "demographics", "visit": "SCR", "data": {}},
        ),
        "void data": lambda: api.post(user, f"{url}/void", {"reason": "r", "expected_revision": 1}),
        "sign as an investigator": lambda: api.post(
            user, f"{url}/signature", {"username": user, "password": PASSWORD, "meaning": "review"}
        ),
    }
    response = requests[attempt]()
    assert response.status_code == 403, response.text
    [refusal] = _refusals(api)
    assert (refusal.user, refusal.status) == (user, 403)
    current = api.get("pi", url).json()
    assert current["revision"] == 1
    assert api.get("crc", "/auth/me").json()["roles"] == ["site_staff"]


def test_anonymous_refusals_are_recorded_up_to_a_budget_per_minute(api: Api) -> None:
    # Without a login anyone could grow the permanent log: past the budget, refusals are
    # only logged. The budget belongs to the app, so no other app in the process spends it.
    for _ in range(ANONYMOUS_REFUSALS_PER_MINUTE + 5):
        assert api.client.get("/auth/me", headers=_bearer("not-a-token")).status_code == 401
    anonymous = [r for r in _refusals(api) if r.user == "anonymous"]
    assert len(anonymous) == ANONYMOUS_REFUSALS_PER_MINUTE
