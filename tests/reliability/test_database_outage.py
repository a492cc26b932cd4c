"""When PostgreSQL is unreachable, requests fail with 503 (never 500) and recover by themselves."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from fastapi.testclient import TestClient

from ecrf.api.app import create_app
from ecrf.config import Settings
from ecrf.persistence import DatabaseUrl
from tests.api.conftest import PASSWORD
from tests.reliability.proxy import CuttableProxy

POSTGRES_URL = os.environ.get("ECRF_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.postgres


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[TestClient, CuttableProxy]]:
    if not POSTGRES_URL:
        pytest.skip("set ECRF_TEST_POSTGRES_URL to run PostgreSQL cases")
    plain = POSTGRES_URL.split("?", 1)[0]
    parts = urlsplit(plain)
    proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{proxy.port}{parts.path}"
    proxied_settings = Settings(
        database=DatabaseUrl.parse(f"{url}?schema={schema}&connect_timeout=1"),
        data_dir=tmp_path / "data",
        run_projections=False,
        bootstrap_admin=f"admin:{PASSWORD}",
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
    try:
        with TestClient(create_app(proxied_settings), raise_server_exceptions=False) as client:
            yield client, proxy
    finally:
        proxy.close()
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _token(client: TestClient) -> dict[str, str]:
    response = client.post("/auth/token", data={"username": "admin", "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_an_outage_is_503_and_the_server_recovers_by_itself(
    proxied: tuple[TestClient, CuttableProxy],
) -> None:
    client, proxy = proxied
    headers = _token(client)
    body = {"site_id": "RJH", "name": "Ruijin"}
    proxy.cut()
    started = time.monotonic()
    down = client.post("/sites", json=body, headers=headers)
    assert down.status_code == 503, down.text
    assert "unavailable" in down.json()["detail"]
    # While the outage is fresh, requests fail fast rather than each waiting it out.
    quick = time.monotonic()
    assert client.get("/sites", headers=headers).status_code == 503
    assert time.monotonic() - quick < 1
    assert time.monotonic() - started < 30
    proxy.restore()
    deadline = time.monotonic() + 30
    while True:
        response = client.post("/sites", json=body, headers=headers)
        if response.status_code == 201 or time.monotonic() > deadline:
            break
        assert response.status_code == 503, response.text
        time.sleep(0.5)
    assert response.status_code == 201
    assert {s["site_id"] for s in client.get("/sites", headers=headers).json()} == {"CHH", "RJH"}
