"""Shared fixtures: every storage-dependent test runs on SQLite and on PostgreSQL.

PostgreSQL cases run when ``ECRF_TEST_POSTGRES_URL`` is set (each test gets a fresh
schema in that database, dropped afterwards); without it they skip, except under CI
(``CI=true``), where a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ecrf.config import Settings
from ecrf.persistence import DatabaseUrl

POSTGRES_URL = os.environ.get("ECRF_TEST_POSTGRES_URL", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Modules whose tests take tens of seconds each (kill -9 cycles, whole simulated trials,
# servers in subprocesses, the schemathesis fuzz). They run first: left where they fall,
# one of them could start last and keep one worker busy for a minute after the other ends.
SLOW_FIRST = (
    "tests/reliability/",
    "tests/integration/test_demo.py",
    "tests/integration/test_serve.py",
    "tests/fuzz/test_openapi_fuzz.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the slow modules first (a stable sort: every worker gets the same order)."""
    items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FIRST))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI, PostgreSQL is required: fail early instead of skipping."""
    if IN_CI and not POSTGRES_URL:
        raise pytest.UsageError("CI=true but ECRF_TEST_POSTGRES_URL is not set")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ecrf.sqlite'}"
        return
    if not POSTGRES_URL:
        pytest.skip("set ECRF_TEST_POSTGRES_URL to run PostgreSQL cases")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    plain = POSTGRES_URL.split("?", 1)[0]
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{plain}?schema={schema}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test instance; projections are caught up on read, not polled."""
    return Settings(
        database=DatabaseUrl.parse(database_url),
        data_dir=tmp_path / "data",
        run_projections=False,
        # Real argon2id, at a cost that keeps hundreds of logins per run fast.
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
