"""The bare baseline for bench/submit.py: validate the same schema, insert the same bytes.

A FastAPI endpoint with no identity, audit, hash chain or event sourcing: it validates the
entry with jsonschema-rs and inserts the canonical JSON with raw SQL, on the same engine.
Start with: uvicorn bench.baseline_app:create --factory (ECRF_DATABASE_URL as for ecrf).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from typing import Any

import jsonschema_rs
import orjson
import psycopg
from fastapi import FastAPI, HTTPException, Request, Response

from ecrf.forms import FormRegistry
from ecrf.persistence import DatabaseUrl


def create() -> FastAPI:
    """The baseline app."""
    database = DatabaseUrl.parse(os.environ.get("ECRF_DATABASE_URL"))
    forms = FormRegistry()
    validators = {
        f.form: jsonschema_rs.validator_for(f.schema, validate_formats=True) for f in forms
    }
    local = threading.local()

    def connection() -> Any:
        if not hasattr(local, "conn"):
            conn: Any
            if database.engine == "sqlite":
                conn = sqlite3.connect(database.sqlite_path + ".baseline", isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, body BLOB)")
            else:
                dsn = (
                    f"host={database.host} port={database.port} dbname={database.dbname} "
                    f"user={database.user}"
                )
                conn = psycopg.connect(dsn, autocommit=True)
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS baseline_entries (id text primary key, body bytea)"
                )
            local.conn = conn
        return local.conn

    app = FastAPI()

    @app.post("/subjects/{subject_id}/entries", status_code=201)
    def record(subject_id: str, body: dict[str, Any]) -> dict[str, str]:
        validator = validators.get(body.get("form", ""))
        if validator is None or not validator.is_valid(body.get("data")):
            raise HTTPException(422, "invalid")
        entry_id = str(uuid.uuid4())
        payload = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        conn = connection()
        if database.engine == "sqlite":
            conn.execute("INSERT INTO entries VALUES (?, ?)", (entry_id, payload))
        else:
            conn.execute("INSERT INTO baseline_entries VALUES (%s, %s)", (entry_id, payload))
        return {"entry_id": entry_id}

    @app.get("/health")
    def health(request: Request) -> Response:
        return Response(status_code=204)

    return app
