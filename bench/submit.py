"""Entry submission throughput and latency over HTTP: ecrf vs a bare baseline.

Starts `ecrf serve` and the baseline (bench/baseline_app.py) on 127.0.0.1, submits
adverse-event entries from 1, 8 and 32 concurrent clients for a fixed time each, and
prints a markdown table (also written under bench/results/). Bounded in count and time.

    .venv/bin/python -m bench.submit --engine sqlite --seconds 10
    .venv/bin/python -m bench.submit --engine postgres --postgres-url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

PASSWORD = "correct horse battery"
MAX_REQUESTS_PER_RUN = 200_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Result:
    """One measured run."""

    target: str
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _start(
    command: list[str], env: dict[str, str], port: int, probe: str
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server on port {port} did not start")


def _load(
    base: str,
    headers: dict[str, str],
    body: dict[str, Any],
    clients: int,
    seconds: float,
    target: str,
    subjects: list[str],
) -> Result:
    latencies: list[float] = []
    errors = 0
    count = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        nonlocal errors, count
        subject = subjects[index % len(subjects)]
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            while time.monotonic() < stop_at and count < MAX_REQUESTS_PER_RUN:
                started = time.perf_counter()
                response = http.post(f"/subjects/{subject}/entries", json=body)
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    count += 1
                    if response.status_code == 201:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Result(target, clients, len(latencies), errors, time.monotonic() - started, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/ecrf_bench")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--workers", type=int, default=1, help="API workers (PostgreSQL only)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ecrf-bench-"))
    url = f"sqlite:///{workdir / 'ecrf.sqlite'}" if args.engine == "sqlite" else args.postgres_url
    env = {
        **os.environ,
        "ECRF_DATABASE_URL": url,
        "ECRF_DATA_DIR": str(workdir / "data"),
        "ECRF_BOOTSTRAP_ADMIN": f"admin:{PASSWORD}",
        "ECRF_LOG_LEVEL": "warning",
    }
    ecrf_port, base_port = _free_port(), _free_port()
    ecrf = _start(
        [
            sys.executable,
            "-m",
            "ecrf.cli",
            "serve",
            "--port",
            str(ecrf_port),
            "--workers",
            str(args.workers),
        ],
        env,
        ecrf_port,
        "/openapi.json",
    )
    baseline = _start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.baseline_app:create",
            "--factory",
            "--port",
            str(base_port),
            "--log-level",
            "warning",
        ],
        env,
        base_port,
        "/health",
    )
    try:
        ecrf_base = f"http://127.0.0.1:{ecrf_port}"
        admin = httpx.post(
            f"{ecrf_base}/auth/token", data={"username": "admin", "password": PASSWORD}
        ).json()
        admin_headers = {"Authorization": f"Bearer {admin['access_token']}"}
        user = {
            "username": "crc",
            "full_name": "Bench",
            "password": PASSWORD,
            "roles": ["site_staff"],
            "sites": ["CHH"],
        }
        httpx.post(f"{ecrf_base}/users", json=user, headers=admin_headers)
        token = httpx.post(
            f"{ecrf_base}/auth/token", data={"username": "crc", "password": PASSWORD}
        ).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        example = httpx.get(f"{ecrf_base}/forms/adverse_event/1", headers=headers).json()[
            "examples"
        ][0]
        body = {"form": "adverse_event", "visit": "LOG", "data": example}
        # One casebook per client, as at a real site: clients do not fight over one stream.
        subjects = []
        for i in range(max(int(c) for c in args.clients.split(","))):
            response = httpx.post(
                f"{ecrf_base}/subjects",
                json={"site": "CHH", "screening_number": f"B{i}"},
                headers=headers,
            )
            subjects.append(response.json().get("subject_id", f"CHH-B{i}"))
        results = []
        for clients in (int(c) for c in args.clients.split(",")):
            results.append(_load(ecrf_base, headers, body, clients, args.seconds, "ecrf", subjects))
            results.append(
                _load(
                    f"http://127.0.0.1:{base_port}",
                    {},
                    body,
                    clients,
                    args.seconds,
                    "baseline",
                    subjects,
                )
            )
    finally:
        for process in (ecrf, baseline):
            process.terminate()
            process.wait(timeout=30)

    lines = [
        f"## Entry submission, {args.engine}, {args.seconds:.0f} s per run "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load generator on the same host (127.0.0.1).",
        "",
        "| clients | target | req/s | p50 ms | p95 ms | p99 ms | errors | ratio to baseline |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.clients, r.target): r for r in results}
    for r in results:
        base = by_key[(r.clients, "baseline")]
        ratio = r.throughput / base.throughput if base.throughput else float("nan")
        lines.append(
            f"| {r.clients} | {r.target} | {r.throughput:.0f} | {r.percentile(0.5):.1f} | "
            f"{r.percentile(0.95):.1f} | {r.percentile(0.99):.1f} | {r.errors} | "
            f"{ratio:.2f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(__file__).parent / "results" / f"submit-{args.engine}.md"
    out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
