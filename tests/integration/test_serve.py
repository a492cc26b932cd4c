"""`ecrf serve` as a real process on each store: it starts, serves docs, lets the admin in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_ecrf_serve_starts_and_serves_the_api(database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "ECRF_DATABASE_URL": database_url,
        "ECRF_DATA_DIR": str(tmp_path / "data"),
        "ECRF_BOOTSTRAP_ADMIN": "admin:correct horse battery",
        "ECRF_ARGON2_TIME_COST": "1",
        "ECRF_ARGON2_MEMORY_KIB": "1024",
    }
    command = [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("server did not start")
            time.sleep(0.2)
        token = httpx.post(
            f"{base}/auth/token", data={"username": "admin", "password": "correct horse battery"}
        )
        assert token.status_code == 200
        sites = httpx.get(
            f"{base}/sites", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
        )
        assert [s["site_id"] for s in sites.json()] == ["CHH"]
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    text = output.decode()
    assert f"http://127.0.0.1:{port}/docs" in text
    assert "First admin: admin" in text
    assert server.returncode in (0, -15)


@pytest.mark.postgres
def test_several_workers_start_together_and_share_one_identity(
    database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several workers need PostgreSQL")
    port = _free_port()
    env = {
        **os.environ,
        "ECRF_DATABASE_URL": database_url,
        "ECRF_DATA_DIR": str(tmp_path / "data"),
        "ECRF_BOOTSTRAP_ADMIN": "admin:correct horse battery",
        "ECRF_ARGON2_TIME_COST": "1",
        "ECRF_ARGON2_MEMORY_KIB": "1024",
    }
    command = [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(port), "--workers", "2"]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        # Both workers must have finished starting: until then a request may be queued on
        # the shared socket for a worker that is still importing the application.
        deadline = time.monotonic() + 90
        while log_path.read_text().count("Application startup complete.") < 2:
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"workers did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        response = httpx.post(
            f"{base}/auth/token",
            data={"username": "admin", "password": "correct horse battery"},
            timeout=30,
        )
        assert response.status_code == 200, log_path.read_text()
        token = response.json()["access_token"]
        # Requests land on either worker: every one must accept the token.
        statuses = [
            httpx.get(
                f"{base}/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ).status_code
            for _ in range(12)
        ]
        assert set(statuses) == {200}, log_path.read_text()
        assert "] died" not in log_path.read_text(), "uvicorn restarted a worker"
    finally:
        server.terminate()
        server.wait(timeout=30)
