"""Runtime settings, read from the environment once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ecrf.persistence import DatabaseUrl


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one running instance."""

    database: DatabaseUrl
    data_dir: Path
    forms_dir: Path | None = None
    token_ttl_seconds: int = 900
    max_failed_logins: int = 5
    max_body_bytes: int = 1_048_576
    """Largest accepted request body: 1 MiB."""
    bootstrap_admin: str | None = field(default=None, repr=False)
    run_projections: bool = True
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    seal_interval: int = 1000
    seal_max_age_seconds: int = 3600
    """Seal pending events once the last seal is this old (0: only every N events)."""
    seal_key_file: Path | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from ``ECRF_*`` environment variables, with safe defaults."""
        env = os.environ
        forms_dir = env.get("ECRF_FORMS_DIR")
        seal_key = env.get("ECRF_SEAL_KEY_FILE")
        return cls(
            database=DatabaseUrl.parse(env.get("ECRF_DATABASE_URL")),
            data_dir=Path(env.get("ECRF_DATA_DIR", "ecrf-data")).resolve(),
            forms_dir=Path(forms_dir) if forms_dir else None,
            token_ttl_seconds=int(env.get("ECRF_TOKEN_TTL_SECONDS", "900")),
            max_failed_logins=int(env.get("ECRF_MAX_FAILED_LOGINS", "5")),
            max_body_bytes=int(env.get("ECRF_MAX_BODY_BYTES", "1048576")),
            bootstrap_admin=env.get("ECRF_BOOTSTRAP_ADMIN") or None,
            run_projections=env.get("ECRF_RUN_PROJECTIONS", "1") != "0",
            argon2_time_cost=int(env.get("ECRF_ARGON2_TIME_COST", "3")),
            argon2_memory_kib=int(env.get("ECRF_ARGON2_MEMORY_KIB", "65536")),
            seal_interval=int(env.get("ECRF_SEAL_INTERVAL", "1000")),
            seal_max_age_seconds=int(env.get("ECRF_SEAL_MAX_AGE_SECONDS", "3600")),
            seal_key_file=Path(seal_key) if seal_key else None,
        )
