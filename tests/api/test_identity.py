"""Accounts, logins, lockout, tokens and the role/site rules (21 CFR 11.10(d)(g), 11.300)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ecrf.domain.errors import NotAuthenticatedError
from ecrf.security import TokenService
from tests.api.conftest import PASSWORD, Api
from tests.api.test_casebook import SUBJECT, enter_demographics


def test_login_returns_an_expiring_bearer_token(api: Api) -> None:
    response = api.client.post("/auth/token", data={"username": "crc", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    me = api.client.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["username"] == "crc"
    assert me.json()["full_name"] == "Crc"
    assert me.json()["roles"] == ["site_staff"]
    assert me.json()["sites"] == ["CHH"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic abc"}],
)
def test_requests_without_a_valid_token_are_401(api: Api, headers: dict[str, str]) -> None:
    response = api.client.get("/subjects", headers=headers)
    assert response.status_code == 401
    assert "detail" in response.json()


def test_a_tampered_token_is_refused(api: Api) -> None:
    token = api.headers("crc")["Authorization"].removeprefix("Bearer ")
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    response = api.client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_an_expired_token_is_refused() -> None:
    tokens = TokenService(secret="s" * 48, ttl_seconds=-1)
    token = tokens.issue("crc")
    time.sleep(0.01)
    with pytest.raises(NotAuthenticatedError, match="expired"):
        tokens.username(token)


def test_wrong_password_is_401_and_five_failures_lock_the_account(api: Api) -> None:
    for _ in range(4):
        response = api.client.post("/auth/token", data={"username": "crc", "password": "wrong!"})
        assert response.status_code == 401
    fifth = api.client.post("/auth/token", data={"username": "crc", "password": "wrong!"})
    assert fifth.status_code == 423
    # Even the right password is refused while locked.
    right = api.client.post("/auth/token", data={"username": "crc", "password": PASSWORD})
    assert right.status_code == 423
    unlocked = api.post("admin", "/users/crc/unlock", {"reason": "identity confirmed by phone"})
    assert unlocked.status_code == 200
    assert unlocked.json()["locked"] is False
    again = api.client.post("/auth/token", data={"username": "crc", "password": PASSWORD})
    assert again.status_code == 200


def test_a_success_resets_the_failure_count(api: Api) -> None:
    for _ in range(4):
        api.client.post("/auth/token", data={"username": "crc", "password": "wrong!"})
    assert api.client.post("/auth/token", data={"username": "crc", "password": PASSWORD}).is_success
    for _ in range(4):
        response = api.client.post("/auth/token", data={"username": "crc", "password": "wrong!"})
        assert response.status_code == 401


def test_logins_failures_and_lockouts_are_recorded_as_events(api: Api) -> None:
    application = api.client.app.state.application  # type: ignore[attr-defined]
    api.client.post("/auth/token", data={"username": "pi", "password": PASSWORD})
    for _ in range(5):
        api.client.post("/auth/token", data={"username": "pi", "password": "wrong!"})
    user = application._user("pi")
    kinds = [type(e).__name__ for e in application.events.get(user.id)]
    assert kinds.count("LoginSucceeded") >= 1
    assert kinds.count("LoginFailed") == 5
    assert kinds[-1] == "Locked"


def test_unknown_username_is_401_not_404(api: Api) -> None:
    response = api.client.post("/auth/token", data={"username": "nobody", "password": "x" * 12})
    assert response.status_code == 401


def test_only_admins_manage_accounts(api: Api) -> None:
    body = {
        "username": "eve",
        "full_name": "Eve",
        "password": PASSWORD,
        "roles": ["admin"],
        "sites": [],
    }
    for username in ("crc", "pi", "cra", "dm", "src", "fda"):
        assert api.post(username, "/users", body).status_code == 403
        grant = {"roles": ["admin"], "reason": "promotion"}
        assert api.patch(username, "/users/crc", grant).status_code == 403
        unlock = {"reason": "identity confirmed"}
        assert api.post(username, "/users/crc/unlock", unlock).status_code == 403
    assert api.get("crc", "/auth/me").json()["roles"] == ["site_staff"]


def test_account_changes_take_effect_immediately(api: Api) -> None:
    headers = api.headers("crc")
    changed = api.patch("admin", "/users/crc", {"roles": ["investigator"], "reason": "promoted"})
    assert changed.status_code == 200
    assert api.client.get("/auth/me", headers=headers).json()["roles"] == ["investigator"]
    api.patch("admin", "/users/crc", {"active": False, "reason": "left the site"})
    assert api.client.get("/auth/me", headers=headers).status_code == 401
    login = api.client.post("/auth/token", data={"username": "crc", "password": PASSWORD})
    assert login.status_code == 401


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"roles": ["superuser"], "reason": "new duties"}, "/roles/0"),
        ({"sites": ["XYZ"], "reason": "moved"}, "/sites/0"),
    ],
)
def test_unknown_roles_and_sites_are_422(api: Api, body: dict[str, list[str]], path: str) -> None:
    response = api.patch("admin", "/users/crc", body)
    assert response.status_code == 422
    assert [p["path"] for p in response.json()["detail"]] == [path]


def test_duplicate_usernames_conflict(api: Api) -> None:
    body = {
        "username": "CRC",
        "full_name": "Other",
        "password": PASSWORD,
        "roles": ["site_staff"],
        "sites": ["CHH"],
    }
    assert api.post("admin", "/users", body).status_code == 409


def test_weak_passwords_are_refused(api: Api) -> None:
    body = {"username": "newbie", "full_name": "N", "password": "short", "roles": ["monitor"]}
    response = api.post("admin", "/users", body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["path"] == "/password"


def test_admins_never_touch_clinical_data(api: Api) -> None:
    assert api.get("admin", "/subjects").status_code == 403
    created = api.post("admin", "/subjects", {"site": "CHH", "screening_number": "S1"})
    assert created.status_code == 403
    api.post("crc", "/subjects", {"site": "CHH", "screening_number": "S1"})
    assert api.get("admin", "/subjects/CHH-S1").status_code == 403


def test_sites_are_events_and_only_admins_add_them(api: Api) -> None:
    assert api.post("dm", "/sites", {"site_id": "RJH", "name": "Ruijin"}).status_code == 403
    assert api.post("admin", "/sites", {"site_id": "RJH", "name": "Ruijin"}).status_code == 201
    assert api.post("admin", "/sites", {"site_id": "RJH", "name": "Again"}).status_code == 409
    sites = api.get("crc", "/sites").json()
    assert {s["site_id"] for s in sites} == {"CHH", "RJH"}


def test_changing_your_own_password_is_an_event_and_needs_the_old_one(api: Api) -> None:
    body = {"current_password": "wrong password!", "new_password": "a brand new secret"}
    assert api.post("crc", "/auth/password", body).status_code == 403
    body["current_password"] = PASSWORD
    assert api.post("crc", "/auth/password", body).status_code == 204
    old = api.client.post("/auth/token", data={"username": "crc", "password": PASSWORD})
    assert old.status_code == 401
    new = api.client.post("/auth/token", data={"username": "crc", "password": "a brand new secret"})
    assert new.status_code == 200
    application = api.client.app.state.application  # type: ignore[attr-defined]
    kinds = [type(e).__name__ for e in application.events.get(application._user("crc").id)]
    assert "PasswordChanged" in kinds


def test_admins_reset_passwords_with_a_reason(api: Api) -> None:
    body = {"new_password": "temporary secret 1", "reason": "forgotten"}
    assert api.post("dm", "/users/crc/password", body).status_code == 403
    assert api.post("admin", "/users/crc/password", body).status_code == 204
    assert api.post("admin", "/users/nobody/password", body).status_code == 404
    login = api.client.post(
        "/auth/token", data={"username": "crc", "password": "temporary secret 1"}
    )
    assert login.status_code == 200


def test_an_admin_account_cannot_also_hold_clinical_roles(api: Api) -> None:
    body = {"roles": ["admin", "site_staff"], "sites": ["CHH"], "reason": "covering the site"}
    response = api.patch("admin", "/users/crc", body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["path"] == "/roles"
    # Nor can an admin change their own grants to reach clinical data.
    own = {"roles": ["site_staff"], "reason": "covering the site"}
    assert api.patch("admin", "/users/admin", own).status_code == 403
    assert api.get("admin", "/subjects").status_code == 403


def _user_events(api: Api, username: str) -> list[Any]:
    application = api.client.app.state.application  # type: ignore[attr-defined]
    return list(application.events.get(application._user(username).id))


def test_a_new_printed_name_shows_on_new_signatures_and_old_ones_keep_theirs(api: Api) -> None:
    entry = enter_demographics(api)
    url = f"/subjects/{SUBJECT}/entries/{entry['entry_id']}"
    sign = {"username": "pi", "password": PASSWORD, "meaning": "review"}
    assert api.post("pi", f"{url}/signature", sign).json()["signer_name"] == "Pi"
    body = {"full_name": "Dr Pia Ito", "reason": "name changed on marriage"}
    renamed = api.patch("admin", "/users/pi", body)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["full_name"] == "Dr Pia Ito"
    assert api.get("pi", "/auth/me").json()["full_name"] == "Dr Pia Ito"
    signed = api.post("pi", f"/subjects/{SUBJECT}/signature", {**sign, "meaning": "approval"})
    assert signed.json()["signer_name"] == "Dr Pia Ito"
    [earlier] = api.get("cra", url).json()["signatures"]
    assert (earlier["signer_name"], earlier["valid"]) == ("Pi", True)
    changed = [e for e in _user_events(api, "pi") if type(e).__name__ == "FullNameChanged"]
    assert [(e.full_name, e.audit["user"], e.audit["reason"]) for e in changed] == [
        ("Dr Pia Ito", "admin", "name changed on marriage")
    ]
    # The same name again changes nothing and records nothing.
    assert api.patch("admin", "/users/pi", body).status_code == 200
    assert [type(e).__name__ for e in _user_events(api, "pi")].count("FullNameChanged") == 1


@pytest.mark.parametrize("name", ["", "   ", "\u200b", "\ufeff\u00a0", "Dr\u0000Ito"])
def test_a_printed_name_must_be_visible_text(api: Api, name: str) -> None:
    response = api.patch("admin", "/users/pi", {"full_name": name, "reason": "typo"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["path"] == "/full_name"
    assert api.get("admin", "/users/pi").json()["full_name"] == "Pi"


MISSING_REASONS = [{}, {"reason": ""}, {"reason": "   "}, {"reason": "\u200b"}, {"reason": "\x00"}]


@pytest.mark.parametrize("reason", MISSING_REASONS)
def test_account_changes_need_a_reason(api: Api, reason: dict[str, str]) -> None:
    before = len(_user_events(api, "crc"))
    for change in ({"roles": ["investigator"]}, {"active": False}, {"full_name": "C. R. C."}):
        response = api.patch("admin", "/users/crc", {**change, **reason})
        assert response.status_code == 422, (change, response.text)
        assert [p["path"] for p in response.json()["detail"]] == ["/reason"]
    reset = api.post("admin", "/users/crc/password", {"new_password": "another secret", **reason})
    assert reset.status_code == 422
    assert len(_user_events(api, "crc")) == before
    assert api.get("admin", "/users/crc").json()["roles"] == ["site_staff"]


@pytest.mark.parametrize("reason", MISSING_REASONS)
def test_unlocking_an_account_needs_a_reason(api: Api, reason: dict[str, str]) -> None:
    for _ in range(5):
        api.client.post("/auth/token", data={"username": "crc", "password": "wrong!"})
    assert api.post("admin", "/users/crc/unlock", reason).status_code == 422
    assert api.client.post("/users/crc/unlock", headers=api.headers("admin")).status_code == 422
    assert api.get("admin", "/users/crc").json()["locked"] is True
    unlocked = api.post("admin", "/users/crc/unlock", {"reason": "identity checked by phone"})
    assert unlocked.status_code == 200
    last = _user_events(api, "crc")[-1]
    assert (type(last).__name__, last.audit["reason"]) == ("Unlocked", "identity checked by phone")


def test_account_changes_record_their_reason(api: Api) -> None:
    body = {"roles": ["investigator"], "sites": [], "reason": "moved to the sponsor"}
    assert api.patch("admin", "/users/crc", body).status_code == 200
    recorded = {type(e).__name__: e.audit["reason"] for e in _user_events(api, "crc")[-2:]}
    assert recorded == {
        "RolesChanged": "moved to the sponsor",
        "SitesChanged": "moved to the sponsor",
    }
