"""`ecrf export odm FILE` and `ecrf export sdtm DIR` against real SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from ecrf.application import EcrfApplication
from ecrf.cli import app as cli
from ecrf.commands import CorrectEntry, RecordEntry, RegisterSubject
from ecrf.config import Settings
from ecrf.domain.access import Actor
from ecrf.export import odm_read
from ecrf.export.sdtm_files import read_xpt
from tests.export_support import xsd_errors

CRC = Actor("crc", "Carol Chen", ("site_staff",), ("CHH",))


def record(application: EcrfApplication, form: str, visit: str, index: int = 0) -> str:
    data = copy.deepcopy(application.forms.get(form).schema["examples"][index])
    _, entry, _ = application.record_entry(
        CRC, "CHH-S001", RecordEntry(form=form, visit=visit, data=data)
    )
    return entry.entry_id


@pytest.fixture
def cli_env(settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A database holding one subject, and the environment the command line reads."""
    application = EcrfApplication(settings)
    try:
        application.register_subject(CRC, RegisterSubject(site="CHH", screening_number="S001"))
        record(application, "informed_consent", "SCR")
        record(application, "cart_infusion", "D0")
        ae = record(application, "adverse_event", "LOG")
        application.correct_entry(
            CRC,
            "CHH-S001",
            ae,
            CorrectEntry(changes={"grade": 3}, reason="Re-graded", expected_revision=1),
        )
    finally:
        application.close()
    monkeypatch.setenv("ECRF_DATABASE_URL", database_url)
    monkeypatch.setenv("ECRF_DATA_DIR", str(settings.data_dir))
    return settings


def test_odm_files_are_valid_and_state_their_cut(cli_env: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    for kind in ("snapshot", "transactional"):
        target = tmp_path / "out" / f"{kind}.xml"
        result = runner.invoke(cli, ["export", "odm", str(target), "--type", kind])
        assert result.exit_code == 0, result.output
        assert "ledger position" in result.output
        document = target.read_bytes()
        assert xsd_errors(document) == []
    snapshot = odm_read.snapshot_entries((tmp_path / "out" / "snapshot.xml").read_bytes())
    replayed = odm_read.replay((tmp_path / "out" / "transactional.xml").read_bytes())
    assert snapshot == replayed
    grades = [d["grade"] for d in snapshot["CHH-S001"].values() if "grade" in d]
    assert grades == [3]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_sdtm_folder_with_metadata_and_as_of(cli_env: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "sdtm", str(tmp_path / "then")])
    assert result.exit_code == 0, result.output
    metadata = orjson.loads((tmp_path / "then" / "metadata.json").read_bytes())
    assert {d["name"] for d in metadata["datasets"]} >= {"DM", "AE", "SUPPAE", "ADTTE"}
    frame, _ = read_xpt(tmp_path / "then" / "ae.xpt")
    assert frame.loc[0, "AETOXGR"] == "3"
    # Every file states the cut: each XPT in its label, the CSVs through metadata.json.
    ledger = metadata["ledger"]
    label = f"ledger {ledger['position']} head {ledger['head'][:12]}"
    assert metadata["xpt_file_label"] == label
    for dataset in metadata["datasets"]:
        assert sorted(dataset["files"]) == [
            f"{dataset['name'].lower()}.{f}" for f in ("csv", "xpt")
        ]
        assert read_xpt(tmp_path / "then" / dataset["files"][1])[1]["file_label"] == label
        assert (tmp_path / "then" / dataset["files"][0]).exists()
    said = " ".join(result.output.split())  # rich wraps long lines
    assert f"ledger position {ledger['position']}, head {ledger['head']}" in said
    # A later change, then the export again as of the first one's stated instant.
    application = EcrfApplication(cli_env)
    try:
        record(application, "adverse_event", "LOG", 1)
    finally:
        application.close()
    as_of = metadata["ledger"]["as_of"]
    again = runner.invoke(cli, ["export", "sdtm", str(tmp_path / "again"), "--as-of", as_of])
    assert again.exit_code == 0, again.output
    for name in ("dm.csv", "ae.csv", "suppae.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "then" / name).read_bytes()
    repeated = orjson.loads((tmp_path / "again" / "metadata.json").read_bytes())
    assert repeated["ledger"].pop("requested_as_of") == as_of
    assert metadata["ledger"].pop("requested_as_of") is None
    assert repeated == metadata
    now = runner.invoke(cli, ["export", "sdtm", str(tmp_path / "now"), "--format", "csv"])
    assert now.exit_code == 0, now.output
    assert not (tmp_path / "now" / "ae.xpt").exists()
    assert (tmp_path / "now" / "ae.csv").read_bytes() != (tmp_path / "then" / "ae.csv").read_bytes()


@pytest.mark.parametrize(
    "arguments",
    [
        ["export", "odm", "x.xml", "--type", "everything"],
        ["export", "odm", "x.xml", "--as-of", "yesterday"],
        ["export", "sdtm", "out", "--format", "sas7bdat"],
    ],
)
def test_bad_options_are_refused(cli_env: Settings, tmp_path: Path, arguments: list[str]) -> None:
    arguments = [a if a not in ("x.xml", "out") else str(tmp_path / a) for a in arguments]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "x.xml").exists()
