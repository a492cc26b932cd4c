"""Schemathesis against our own OpenAPI document, as every role: no 5xx, and every response
matches the documented schema and status codes. Bounded: a fixed number of examples per
operation, all through the real application on SQLite (in-process, nothing leaves the host)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from ecrf.api.app import create_app
from ecrf.checks import derive
from ecrf.config import Settings
from ecrf.persistence import DatabaseUrl
from tests.api.conftest import PASSWORD

ROLES = {
    "admin": ["admin"],
    "crc": ["site_staff"],
    "pi": ["investigator"],
    "cra": ["monitor"],
    "dm": ["data_manager"],
    "src": ["safety_reviewer"],
    "fda": ["regulator"],
}
EXAMPLES = 5
"""Examples per operation, each sent as every role: keeps the fuzz inside the CI budget."""


def _settings(data_dir: Path) -> Settings:
    return Settings(
        database=DatabaseUrl.parse(f"sqlite:///{data_dir / 'fuzz.sqlite'}"),
        data_dir=data_dir,
        run_projections=False,
        bootstrap_admin=f"admin:{PASSWORD}",
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )


# The document is generated from the app itself; no server is needed to read it.
schema = schemathesis.openapi.from_dict(create_app(_settings(Path("/nonexistent"))).openapi())


class World:
    """One running application with an account per role and a subject to aim at."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.headers: dict[str, dict[str, str]] = {}
        for username, roles in ROLES.items():
            if username != "admin":
                body = {
                    "username": username,
                    "full_name": username,
                    "password": PASSWORD,
                    "roles": roles,
                    "sites": [] if roles[0] in ("admin", "data_manager") else ["CHH"],
                }
                client.post("/users", json=body, headers=self.login("admin"))
            self.headers[username] = self.login(username)
        client.post(
            "/subjects", json={"site": "CHH", "screening_number": "F1"}, headers=self.headers["crc"]
        )

    def login(self, username: str) -> dict[str, str]:
        if username in self.headers:
            return self.headers[username]
        response = self.client.post(
            "/auth/token", data={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    with TestClient(create_app(_settings(data_dir)), raise_server_exceptions=False) as client:
        yield World(client)


def _send(world: World, case: Any, username: str) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=world.headers[username])
    kwargs.pop("base_url", None)
    return world.client.request(
        method=kwargs.pop("method"),
        url=kwargs.pop("url"),
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        json=kwargs.get("json"),
        content=kwargs.get("data") if isinstance(kwargs.get("data"), bytes | str) else None,
        data=kwargs.get("data") if isinstance(kwargs.get("data"), dict) else None,
        files=kwargs.get("files"),
        cookies=kwargs.get("cookies"),
    )


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_as_every_role(case: Any, world: World) -> None:
    for username in ROLES:
        response = _send(world, case, username)
        assert response.status_code < 500, (username, case.method, case.path, response.text)
        case.validate_response(
            response,
            checks=[status_code_conformance, response_schema_conformance],
            excluded_checks=[negative_data_rejection],
        )


def test_derive_is_pure() -> None:
    # Keeps the import of ecrf.checks honest: fuzzing must not depend on hidden state.
    assert derive("demographics", {"age": 1}) == {"age": 1}
