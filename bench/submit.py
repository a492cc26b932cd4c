"""Entry submission throughput and latency over HTTP: ecrf vs a bare baseline.

Starts `ecrf serve` and the baseline (bench/baseline_app.py) on 127.0.0.1, submits
adverse-event entries from 1, 8 and 32 concurrent clients for a fixed time each, and
prints a markdown table (also written under bench/results/). Bounded in count and time.

    .venv/bin/python -m bench.submit --engine sqlite --seconds 10
    .venv/bin/python -m bench.submit --engine postgres --postgres-url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

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


class _Connection:
    """One HTTP/1.1 keep-alive connection, spoken raw: the lightest client asyncio allows.

    The load generator shares the two cores with the servers it measures; a raw client
    costs a fraction of an httpx thread per request, so both targets are measured with
    the same small overhead on the host.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        """Send one prepared request; the response status once its body is read."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected here")
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _post(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _load_async(
    port: int,
    headers: dict[str, str],
    body: bytes,
    clients: int,
    seconds: float,
    target: str,
    subjects: list[str],
) -> Result:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        subject = subjects[index % len(subjects)]
        raw = _post("127.0.0.1", port, f"/subjects/{subject}/entries", headers, body)
        connection = await _Connection.open("127.0.0.1", port)
        try:
            while time.monotonic() < stop_at and len(latencies) + errors < MAX_REQUESTS_PER_RUN:
                started = time.perf_counter()
                status = await connection.request(raw)
                elapsed = (time.perf_counter() - started) * 1000
                if status == 201:
                    latencies.append(elapsed)
                else:
                    errors += 1
        finally:
            connection.close()

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return Result(target, clients, len(latencies), errors, time.monotonic() - started, latencies)


def _load(
    port: int,
    headers: dict[str, str],
    body: dict[str, Any],
    clients: int,
    seconds: float,
    target: str,
    subjects: list[str],
) -> Result:
    """Drive ``clients`` concurrent keep-alive connections for ``seconds``."""
    payload = orjson.dumps(body)
    return asyncio.run(_load_async(port, headers, payload, clients, seconds, target, subjects))


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
            results.append(_load(ecrf_port, headers, body, clients, args.seconds, "ecrf", subjects))
            results.append(
                _load(
                    base_port,
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
    out = Path(__file__).parent / "results" / result_name(args.engine, args.workers)
    out.write_text(report, encoding="utf-8")


def result_name(engine: str, workers: int) -> str:
    """The results file: SQLite runs one worker; PostgreSQL names its worker count."""
    if engine == "sqlite" and workers == 1:
        return "submit-sqlite.md"
    return f"submit-{engine}-{workers}-worker{'' if workers == 1 else 's'}.md"


if __name__ == "__main__":
    main()
