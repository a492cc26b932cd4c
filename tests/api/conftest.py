"""API fixtures: the real application behind FastAPI's TestClient, plus accounts per role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ecrf.api.app import create_app
from ecrf.application import EcrfApplication
from ecrf.commands import CreateUser
from ecrf.config import Settings

PASSWORD = "correct horse battery"
# One account per clinical role (username, roles, sites), made for every API test.
ROLE_ACCOUNTS: tuple[tuple[str, list[str], list[str]], ...] = (
    ("crc", ["site_staff"], ["CHH"]),
    ("pi", ["investigator"], ["CHH"]),
    ("cra", ["monitor"], ["CHH"]),
    ("dm", ["data_manager"], []),
    ("src", ["safety_reviewer"], []),
    ("fda", ["regulator"], []),
)


@dataclass
class Api:
    """A TestClient with helpers to create accounts and act as them."""

    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)

    def password(self, username: str) -> str:
        """The password of an account made here (``PASSWORD`` unless it was given one)."""
        return self.passwords.get(username, PASSWORD)

    def headers(self, username: str) -> dict[str, str]:
        """Bearer headers for ``username`` (logging in once)."""
        if username not in self.tokens:
            response = self.client.post(
                "/auth/token", data={"username": username, "password": self.password(username)}
            )
            assert response.status_code == 200, response.text
            self.tokens[username] = response.json()["access_token"]
        return {"Authorization": f"Bearer {self.tokens[username]}"}

    def user(
        self,
        username: str,
        roles: list[str],
        sites: list[str] | None = None,
        password: str = PASSWORD,
    ) -> str:
        """Create an account (as the admin) and return its username."""
        response = self.client.post(
            "/users",
            json={
                "username": username,
                "full_name": username.replace("_", " ").title(),
                "password": password,
                "roles": roles,
                "sites": sites if sites is not None else ["CHH"],
            },
            headers=self.headers("admin"),
        )
        assert response.status_code == 201, response.text
        self.passwords[username] = password
        return username

    def get(self, username: str, path: str, **kwargs: Any) -> Any:
        """GET as ``username``."""
        return self.client.get(path, headers=self.headers(username), **kwargs)

    def post(self, username: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """POST JSON as ``username``."""
        return self.client.post(path, json=body, headers=self.headers(username), **kwargs)

    def patch(self, username: str, path: str, body: Any) -> Any:
        """PATCH JSON as ``username``."""
        return self.client.patch(path, json=body, headers=self.headers(username))


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """Settings with a bootstrap admin."""
    return replace(settings, bootstrap_admin=f"admin:{PASSWORD}")


@pytest.fixture
def api(api_settings: Settings) -> Iterator[Api]:
    """The real server in-process, with an admin and one user per clinical role at CHH."""
    with TestClient(create_app(api_settings)) as client:
        harness = Api(client)
        # The accounts are made and logged in through the application, not over HTTP:
        # the same commands and events, without thirteen round trips through the test
        # client before every API test (the routes themselves are tested in test_identity).
        application: EcrfApplication = client.app.state.application  # type: ignore[attr-defined]
        admin = application.actor_for_token(application.tokens.issue("admin"))
        for username, roles, sites in ROLE_ACCOUNTS:
            account = CreateUser(
                username=username,
                full_name=username.title(),
                password=PASSWORD,
                roles=roles,
                sites=sites,
            )
            application.create_user(admin, account)
        # Logins are recorded as events; log everyone in now so that tests comparing
        # log positions before and after a refused request see only that request.
        for username in ("admin", *(account[0] for account in ROLE_ACCOUNTS)):
            application.authenticate(username, PASSWORD)
            harness.tokens[username] = application.tokens.issue(username)
        yield harness
