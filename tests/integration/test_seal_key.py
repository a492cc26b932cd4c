"""The seal key: made once at first start, private to its owner, or taken from a file."""

from __future__ import annotations

import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from ecrf.application import EcrfApplication
from ecrf.config import Settings
from ecrf.ledger.seals import SealKey


def test_first_start_makes_a_private_key_and_later_starts_reuse_it(settings: Settings) -> None:
    application = EcrfApplication(settings)
    try:
        application.ledger.start()
        application.ledger.stop(seal=False)
        first = application.ledger.key.key_id
    finally:
        application.close()
    path = settings.data_dir / "seal-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = EcrfApplication(settings)
    try:
        assert again.ledger.key.key_id == first
    finally:
        again.close()


def test_a_configured_key_file_is_used(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "key.pem"
    expected = SealKey.load_or_create(path)
    application = EcrfApplication(replace(settings, seal_key_file=path))
    try:
        assert application.ledger.key.key_id == expected.key_id
        assert not (settings.data_dir / "seal-key.pem").exists()
    finally:
        application.close()


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        ids.append(SealKey.load_or_create(path).key_id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECRF_SEAL_INTERVAL", "50")
    monkeypatch.setenv("ECRF_SEAL_MAX_AGE_SECONDS", "0")
    monkeypatch.setenv("ECRF_SEAL_KEY_FILE", str(tmp_path / "k.pem"))
    settings = Settings.from_env()
    assert settings.seal_interval == 50
    assert settings.seal_max_age_seconds == 0
    assert settings.seal_key_file == tmp_path / "k.pem"
    monkeypatch.delenv("ECRF_SEAL_INTERVAL")
    monkeypatch.delenv("ECRF_SEAL_MAX_AGE_SECONDS")
    monkeypatch.delenv("ECRF_SEAL_KEY_FILE")
    assert Settings.from_env().seal_interval == 1000
    assert Settings.from_env().seal_max_age_seconds == 3600
    assert Settings.from_env().seal_key_file is None
