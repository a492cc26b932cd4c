"""Durability: a server killed with SIGKILL at random moments loses no acknowledged entry.

A writer submits entries over HTTP to `ecrf serve` while the server is killed and
restarted, at least 10 times, on SQLite and PostgreSQL; the server seals the ledger every
few events, so seals (and their copies outside the database) are cut by SIGKILL too.
In every cycle:

* the store as the killed server left it (what the restart finds): the ledger verifies
  with `ecrf verify`'s own code, and every projection, caught up as a restart does,
  equals a fresh rebuild from the log (row for row);
* after the restart: every acknowledged entry is there with its data, nothing
  unacknowledged is half there (every stored entry is whole and was sent by the writer),
  and the ledger verifies again on the live log.

At the end the installed `ecrf verify` command checks the final store. The writer is paced
so that the store stays small enough for a full rebuild in every cycle. The test is bounded
by its cycle count, not by a wall-clock assertion (timing goals live in bench/): it prints
its duration, about 60-90 s per engine on the CI machine.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ecrf.application import EcrfApplication
from ecrf.cli_ledger import open_log, verify_source
from ecrf.config import Settings
from ecrf.ledger.readers import HeldSeals, read_held_seals
from ecrf.ledger.records import mirror_path
from ecrf.ledger.seals import SealKey
from ecrf.ledger.verify import Report
from ecrf.persistence import DatabaseUrl
from projections.registry import build_runner

CYCLES = 10
PASSWORD = "correct horse battery"
SUBJECT = "CHH-K1"
SEAL_INTERVAL = 10
"""Events between seals: small, so that most cycles seal (and some are killed sealing)."""
WRITE_PAUSE = 0.01
"""Seconds between the writer's submissions: keeps the store small enough to rebuild every
projection from scratch in every cycle."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`ecrf serve` in a child process that can be killed and started again."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "ECRF_DATABASE_URL": database_url,
            "ECRF_DATA_DIR": str(data_dir),
            "ECRF_BOOTSTRAP_ADMIN": f"admin:{PASSWORD}",
            "ECRF_ARGON2_TIME_COST": "1",
            "ECRF_ARGON2_MEMORY_KIB": "1024",
            "ECRF_LOG_LEVEL": "warning",
            "ECRF_SEAL_INTERVAL": str(SEAL_INTERVAL),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                # /docs answers once start-up is done, without building the OpenAPI
                # document (half a second per restart) or recording a refused request.
                if httpx.get(f"{self.base}/docs", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail("server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def token(self, username: str) -> dict[str, str]:
        response = httpx.post(
            f"{self.base}/auth/token",
            data={"username": username, "password": PASSWORD},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


class Writer(threading.Thread):
    """Submits adverse events until stopped, remembering what was acknowledged."""

    def __init__(self, server: Server, headers: dict[str, str], example: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.headers = headers
        self.example = example
        self.acknowledged: dict[str, str] = {}  # entry id -> the term_other sent
        self.sent: set[str] = set()
        self.stopping = threading.Event()
        self.counter = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.server.base, timeout=10) as client:
            while not self.stopping.is_set():
                self.counter += 1
                marker = f"kill-test {self.counter}"
                data = {**self.example, "term": "Other, specify", "term_other": marker}
                self.sent.add(marker)
                body = {"form": "adverse_event", "visit": "LOG", "data": data}
                try:
                    response = client.post(
                        f"/subjects/{SUBJECT}/entries", json=body, headers=self.headers
                    )
                except httpx.TransportError:
                    time.sleep(0.02)
                    continue
                if response.status_code == 201:
                    self.acknowledged[response.json()["entry_id"]] = marker
                time.sleep(WRITE_PAUSE)


def _check_projections(application: EcrfApplication, settings: Settings) -> int:
    """Catch up as a restarted server does, then compare with a rebuild; return rows."""
    runner = build_runner(application, settings)
    try:
        runner.catch_up()
        incremental = _snapshot(runner)
        for name in runner.projections:
            runner.rebuild(name)
        rebuilt = _snapshot(runner)
        assert incremental == rebuilt
        return sum(len(rows) for rows in rebuilt.values())
    finally:
        runner.engine.dispose()


def _check_ledger(settings: Settings) -> Report:
    """What `ecrf verify --database` does with its defaults (the data directory's key and
    seal copies), through the command's own code."""
    key = SealKey.load(settings.data_dir / "seal-key.pem")
    mirror = mirror_path(settings.data_dir)
    held = read_held_seals(mirror) if mirror.exists() else HeldSeals()
    report = verify_source(
        open_log(settings.database), trusted_keys={key.key_id: key.public_key}, held_seals=held
    )
    assert report.ok, [str(p) for p in report.problems]
    return report


def _snapshot(runner: Any) -> dict[str, list[tuple[Any, ...]]]:
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with runner.engine.connect() as conn:
        for projection in runner.projections.values():
            for table in projection.metadata.sorted_tables:
                ordered = select(table).order_by(*table.primary_key.columns)
                rows[table.name] = [tuple(r) for r in conn.execute(ordered)]
    return rows


def test_sigkill_loses_no_acknowledged_entry(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(database_url, data_dir)
    try:
        _exercise(server, database_url, data_dir)
    finally:
        # Never leave a server behind, whatever failed.
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)


def _exercise(server: Server, database_url: str, data_dir: Path) -> None:
    started = time.monotonic()
    rng = random.Random(20261125)
    settings = Settings(
        database=DatabaseUrl.parse(database_url), data_dir=data_dir, run_projections=False
    )
    server.start()
    admin = server.token("admin")
    user = {
        "username": "crc",
        "full_name": "CRC",
        "password": PASSWORD,
        "roles": ["site_staff"],
        "sites": ["CHH"],
    }
    assert httpx.post(f"{server.base}/users", json=user, headers=admin).status_code == 201
    headers = server.token("crc")
    subject = {"site": "CHH", "screening_number": "K1"}
    assert httpx.post(f"{server.base}/subjects", json=subject, headers=headers).status_code == 201
    form = httpx.get(f"{server.base}/forms/adverse_event/1", headers=headers).json()
    writer = Writer(server, headers, form["examples"][0])
    writer.start()
    application: EcrfApplication | None = None
    seconds = {"server": 0.0, "ledger": 0.0, "projections": 0.0}
    try:
        for _ in range(CYCLES):
            # Up long enough, in most cycles, for the follower (polling each second) to seal.
            time.sleep(rng.uniform(0.2, 1.5))
            server.kill()
            # The store exactly as the killed server left it: what the restart finds.
            mark = time.monotonic()
            _check_ledger(settings)
            seconds["ledger"] += time.monotonic() - mark
            if application is None:
                # Opened while no server runs (it creates its tables if missing); only
                # its log reader and mapper are used, by the projection runner.
                application = EcrfApplication(settings)
            mark = time.monotonic()
            _check_projections(application, settings)
            seconds["projections"] += time.monotonic() - mark
            mark = time.monotonic()
            server.start()
            seconds["server"] += time.monotonic() - mark
            _check_casebook(server, writer)
            mark = time.monotonic()
            _check_ledger(settings)  # and on the live log, while the writer writes
            seconds["ledger"] += time.monotonic() - mark
    finally:
        writer.stopping.set()
        writer.join(timeout=15)
        if application is not None:
            application.close()
    # Everything acknowledged up to the writer's last request, then one last kill.
    _check_casebook(server, writer)
    server.kill()
    assert len(writer.acknowledged) > CYCLES

    verify = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "verify", "--database", database_url],
        env={**server.env, "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = _check_ledger(settings)
    # Seals were made between kills, and some copies may have been cut by one: both verify.
    assert report.seals >= 1
    assert report.sealed_through > 0
    application = EcrfApplication(settings)
    try:
        assert _check_projections(application, settings) > 0
    finally:
        application.close()
    elapsed = time.monotonic() - started
    print(
        f"kill -9 x{CYCLES}: {elapsed:.1f} s, {len(writer.acknowledged)} entries, "
        f"{report.events} events, {report.seals} seals, time in {seconds}"
    )


def _check_casebook(server: Server, writer: Writer) -> None:
    headers = server.token("crc")
    # What was acknowledged before the read must be in it (the writer keeps writing).
    acknowledged = dict(writer.acknowledged)
    casebook = httpx.get(f"{server.base}/subjects/{SUBJECT}", headers=headers, timeout=30).json()
    stored = {e["entry_id"]: e for e in casebook["entries"]}
    for entry_id, marker in acknowledged.items():
        assert entry_id in stored, f"acknowledged entry {entry_id} lost"
        assert stored[entry_id]["data"]["term_other"] == marker
    for entry in stored.values():
        # Whole: it carries the full example and a marker the writer really sent.
        assert entry["data"]["term_other"] in writer.sent
        assert entry["revision"] == 1
        assert set(writer.example) <= set(entry["data"]) | {"term_other"}
