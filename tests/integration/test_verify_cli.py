"""`ecrf verify` and `ecrf ledger seal` from the command line, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecrf.application import EcrfApplication
from ecrf.cli import app
from ecrf.commands import RegisterSubject
from ecrf.config import Settings
from ecrf.domain.access import Actor

CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))
FDA = Actor("fda", "Food and Drug", ("regulator",), ())


@pytest.fixture
def env(settings: Settings, database_url: str) -> dict[str, str]:
    return {"ECRF_DATABASE_URL": database_url, "ECRF_DATA_DIR": str(settings.data_dir)}


@pytest.fixture
def application(settings: Settings) -> Iterator[EcrfApplication]:
    application = EcrfApplication(settings)
    for number in ("C1", "C2"):
        application.register_subject(CRC, RegisterSubject(site="CHH", screening_number=number))
    yield application
    application.close()


def _break_an_event(application: EcrfApplication, position: int) -> None:
    table = application.table
    if table.engine == "sqlite":
        table.execute(f"DROP TRIGGER {table.table}_refuse_update", commit=True)
    else:
        table.execute(
            f'DROP TRIGGER "{table.table}_refuse_change" ON {table.qualified_name}', commit=True
        )
    where = f"FROM {table.qualified_name} WHERE {table.position_column} = ?"
    state = bytes(table.execute(f"SELECT state {where}", [position], fetch=True)[0][0])
    table.execute(
        f"UPDATE {table.qualified_name} SET state = ? WHERE {table.position_column} = ?",
        [state.replace(b"CHH", b"XXX"), position],
        commit=True,
    )


def test_seal_then_verify_the_database(
    application: EcrfApplication, env: dict[str, str], database_url: str
) -> None:
    runner = CliRunner()
    sealed = runner.invoke(app, ["ledger", "seal"], env=env)
    assert sealed.exit_code == 0, sealed.output
    assert "sealed through position" in sealed.output
    result = runner.invoke(app, ["verify", "--database", database_url], env=env)
    assert result.exit_code == 0, result.output
    assert "intact" in result.output
    assert "sealed through" in result.output


def test_a_tampered_database_exits_non_zero_and_says_where(
    application: EcrfApplication, env: dict[str, str], database_url: str
) -> None:
    position = application.max_position()
    _break_an_event(application, position)
    result = CliRunner().invoke(app, ["verify", "--database", database_url], env=env)
    assert result.exit_code == 1, result.output
    assert f"hash_mismatch position {position} stream " in result.output
    assert "version 1" in result.output
    assert "NOT INTACT" in result.output


def test_an_export_with_its_public_key(
    application: EcrfApplication, env: dict[str, str], tmp_path: Path
) -> None:
    application.ledger.seal()
    export = tmp_path / "ledger.jsonl"
    export.write_bytes(b"".join(application.ledger.export(FDA)))
    runner = CliRunner()
    key = tmp_path / "key.pem"
    printed = runner.invoke(app, ["ledger", "public-key"], env=env)
    assert printed.exit_code == 0
    key.write_text(printed.output)
    ok = runner.invoke(app, ["verify", "--file", str(export), "--public-key", str(key)])
    assert ok.exit_code == 0, ok.output
    other = tmp_path / "other.pem"
    other.write_text(application.ledger.key.generate().public_key_pem)
    refused = runner.invoke(app, ["verify", "--file", str(export), "--public-key", str(other)])
    assert refused.exit_code == 1
    assert "untrusted_key" in refused.output


def test_an_export_without_a_trusted_key_is_not_called_intact(
    application: EcrfApplication, tmp_path: Path
) -> None:
    application.ledger.seal()
    export = tmp_path / "ledger.jsonl"
    export.write_bytes(b"".join(application.ledger.export(FDA)))
    runner = CliRunner()
    untrusted = runner.invoke(app, ["verify", "--file", str(export)])
    assert untrusted.exit_code == 3, untrusted.output
    assert "UNTRUSTED SEALS" in untrusted.output
    accepted = runner.invoke(app, ["verify", "--file", str(export), "--trust-embedded-keys"])
    assert accepted.exit_code == 0, accepted.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["verify", "--database", "sqlite:///x", "--file", "y"])
    assert both.exit_code == 2
    missing = runner.invoke(app, ["verify", "--file", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2


def test_the_installed_command_runs_in_a_fresh_process(
    application: EcrfApplication, env: dict[str, str], database_url: str
) -> None:
    application.ledger.seal()
    result = subprocess.run(
        [sys.executable, "-m", "ecrf.cli", "verify", "--database", database_url],
        env={**env, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout


def test_a_torn_last_line_in_the_seal_copies_does_not_block_verify(
    application: EcrfApplication, env: dict[str, str], database_url: str
) -> None:
    application.ledger.seal()
    with application.ledger.mirror_path.open("ab") as handle:
        handle.write(b'{"kind":"seal","position":12,"head":"ab')  # a crash mid-append
    result = CliRunner().invoke(app, ["verify", "--database", database_url], env=env)
    assert result.exit_code == 0, result.output
    assert "intact" in result.output
    assert "cut short" in result.output
    assert "--seals" not in result.output


def test_a_corrupt_seal_copy_is_reported_as_a_problem(
    application: EcrfApplication, env: dict[str, str], database_url: str
) -> None:
    application.ledger.seal()
    mirror = application.ledger.mirror_path
    mirror.write_bytes(b"{not a seal}\n" + mirror.read_bytes())
    result = CliRunner().invoke(app, ["verify", "--database", database_url], env=env)
    assert result.exit_code == 1, result.output
    assert "bad_seal" in result.output
    assert "seals.jsonl line 1" in result.output


def test_a_given_seals_file_that_is_not_json_is_a_usage_error(
    application: EcrfApplication, env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    saved = tmp_path / "seals.json"
    saved.write_text("[{")
    result = CliRunner().invoke(
        app, ["verify", "--database", database_url, "--seals", str(saved)], env=env
    )
    assert result.exit_code == 2, result.output


def test_the_verifier_does_not_load_the_application_or_its_domain() -> None:
    probe = (
        "import sys, ecrf.cli_ledger; "
        "print(sorted(m for m in sys.modules if m.startswith(('ecrf.domain', "
        "'ecrf.application', 'ecrf.ledger.service', 'ecrf.commands'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
