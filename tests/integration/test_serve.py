"""`ecrf serve` as a real process on each store: it starts, serves docs, lets the admin in."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ecrf.cli import app as cli
from ecrf.forms import default_forms_dir


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


def test_a_bad_schema_file_stops_serve_with_its_name(tmp_path: Path) -> None:
    forms = tmp_path / "forms"
    shutil.copytree(default_forms_dir(), forms)
    broken = forms / "demographics" / "v1.json"
    broken.write_text('{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": 7}')
    result = CliRunner().invoke(
        cli,
        ["serve"],
        env={
            "ECRF_FORMS_DIR": str(forms),
            "ECRF_DATABASE_URL": f"sqlite:///{tmp_path / 'ecrf.sqlite'}",
            "ECRF_DATA_DIR": str(tmp_path / "data"),
        },
    )
    assert result.exit_code == 2
    assert "cannot start" in result.output
    assert "v1.json" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "ecrf.sqlite").exists()


def test_create_admin_makes_an_admin_and_refuses_bad_input(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        "ECRF_DATABASE_URL": database_url,
        "ECRF_DATA_DIR": str(tmp_path / "data"),
        "ECRF_ARGON2_TIME_COST": "1",
        "ECRF_ARGON2_MEMORY_KIB": "1024",
    }
    runner = CliRunner()
    password = ["--password", "correct horse battery"]
    bad_name = runner.invoke(cli, ["users", "create-admin", "Bad Name", *password], env=env)
    assert bad_name.exit_code == 2
    assert "refused" in bad_name.output
    assert "[a-z0-9]" in bad_name.output  # the pattern is shown, not eaten as markup
    short = runner.invoke(cli, ["users", "create-admin", "root", "--password", "short"], env=env)
    assert short.exit_code == 2
    assert "password" in short.output
    made = runner.invoke(cli, ["users", "create-admin", "root", *password], env=env)
    assert made.exit_code == 0, made.output
    assert "admin root created" in made.output
    again = runner.invoke(cli, ["users", "create-admin", "root", *password], env=env)
    assert again.exit_code == 2
    assert "Traceback" not in again.output
