"""`ecrf demo` and `ecrf serve --demo` on each store: a whole seeded trial, driven through
the application, reproducible from its seed, following the 3+3 rules at every decision."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from eventsourcing.persistence import JSONTranscoder, Mapper
from typer.testing import CliRunner

from ecrf.application import EcrfApplication
from ecrf.cli import app as cli
from ecrf.cli_demo import endpoint_tables
from ecrf.clinical.escalation import three_plus_three
from ecrf.config import Settings
from ecrf.demo.defaults import DEFAULT_SEED, DEMO_ACCOUNTS, DEMO_PASSWORD, STUDY_START
from ecrf.demo.trial import DemoResult, StoreNotEmptyError, run_demo
from ecrf.persistence import DatabaseUrl
from tests.conftest import POSTGRES_URL
from tests.rows import typed

SEED = DEFAULT_SEED
READER = next(a for a in DEMO_ACCOUNTS if a.username == "datamanager").actor
# Generated per run, so left out when two runs are compared.
IDS = frozenset({"entry_id", "ae_entry_id", "ae_entry_ids"})
# The staged soft-check findings; consistent data raises no other system query.
STAGED_FINDINGS = {
    ("crs_assessment", "/investigator_grade"),
    ("adverse_event", "/resolution_date"),
}
PNG = b"\x89PNG\r\n\x1a\n"


@contextmanager
def empty_store(kind: str, folder: Path) -> Iterator[str]:
    """A fresh, empty store URL: a new SQLite file, or a new PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'{uuid.uuid4().hex[:8]}.sqlite'}"
        return
    if not POSTGRES_URL:
        pytest.skip("set ECRF_TEST_POSTGRES_URL to run PostgreSQL cases")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    plain = POSTGRES_URL.split("?", 1)[0]
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{plain}?schema={schema}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def settings_for(url: str, folder: Path) -> Settings:
    return Settings(
        database=DatabaseUrl.parse(url),
        data_dir=folder / "data",
        run_projections=False,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )


def without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if k not in IDS}
    if isinstance(value, list | tuple):
        return [without_ids(v) for v in value]
    return value


@dataclass
class Trial:
    """One simulated trial and what a reader can see of it afterwards."""

    result: DemoResult
    decisions: list[Any]
    slots: list[Any]
    cohorts: list[Any]
    levels: list[str]
    settings: Any
    tables: dict[str, Any]
    casebooks: dict[str, Any]
    queries: list[tuple[str, str, str, bool, tuple[str, ...]]]
    signed: dict[str, int]
    backend: str
    stored_types: set[str]
    """The event types stored, each event read back as the library's own decoder reads it."""

    def fingerprint(self) -> dict[str, Any]:
        """Everything that must be equal for equal seeds (ids and timestamps aside)."""
        return {
            "outcomes": self.result.outcomes,
            "mtd": self.result.mtd,
            "decisions": self.result.decisions,
            "subjects": self.result.subjects,
            "enrolled": self.result.enrolled,
            "activity": dict(self.result.activity),
            "dates": (self.result.start, self.result.end),
            "reports": {
                name: without_ids([table.rows, table.summary])
                for name, table in self.tables.items()
            },
            "casebooks": self.casebooks,
            "queries": self.queries,
        }


def read_as_the_library_reads(application: EcrfApplication) -> set[str]:
    """The topics in the log, after checking every event decodes as the library's mapper has it.

    The application reads stored states with its own transcoder (orjson where it may); the
    library's JSON transcoder, with the same transcodings, is the reference.
    """
    library = JSONTranscoder()
    application.register_transcodings(library)
    reference: Mapper[Any] = Mapper(transcoder=library)
    topics = set()
    position = 0
    while notifications := application.recorder.select_notifications(
        start=position, limit=500, inclusive_of_start=False
    ):
        for notification in notifications:
            ours = application.mapper.to_domain_event(notification)
            theirs = reference.to_domain_event(notification)
            assert type(ours) is type(theirs)
            assert typed(vars(ours)) == typed(vars(theirs)), notification.topic
            topics.add(notification.topic)
        position = notifications[-1].id
    return topics


def simulate(url: str, folder: Path, seed: int = SEED, *, backend: str) -> Trial:
    settings = settings_for(url, folder)
    application = EcrfApplication(settings)
    try:
        result = run_demo(application, seed)
        escalation = application.escalation()
        casebooks: dict[str, Any] = {}
        queries = []
        signed = {}
        for subject_id in result.subjects:
            subject = application.subject(READER, subject_id)
            casebooks[subject_id] = [
                (e.form, e.visit, e.version, e.revision, e.voided, without_ids(e.data))
                for e in subject.entries.values()
            ]
            queries += [
                (q.form, q.path, q.state, q.system, tuple(m.text for m in q.messages))
                for q in subject.queries.values()
            ]
            signed[subject_id] = sum(1 for e in subject.entries.values() if e.signed)
        stored_types = read_as_the_library_reads(application)
        return Trial(
            result=result,
            decisions=list(escalation.decisions),
            slots=sorted(escalation.slots.values(), key=lambda s: s.slot),
            cohorts=list(escalation.cohorts),
            levels=[level.code for level in escalation.levels],
            settings=escalation.settings,
            tables=endpoint_tables(application, settings),
            casebooks=casebooks,
            queries=queries,
            signed=signed,
            backend=backend,
            stored_types=stored_types,
        )
    finally:
        application.close()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def trial(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Trial:
    """The default-seed trial, simulated once per store and module."""
    folder = tmp_path_factory.mktemp(f"demo-{request.param}")
    with empty_store(request.param, folder) as url:
        return simulate(url, folder, backend=request.param)


class TestTheSimulatedTrial:
    def test_every_decision_follows_the_3_plus_3_engine(self, trial: Trial) -> None:
        assert trial.decisions, "the SRC never met"
        for decision in trial.decisions:
            advice = three_plus_three(
                decision.outcomes,
                n_doses=len(trial.levels),
                allow_deescalation=trial.settings.allow_deescalation,
                mtd_requires=trial.settings.mtd_requires,
            )
            dose = advice.mtd if advice.stop else advice.next_dose
            expected = trial.levels[dose - 1] if dose is not None else None
            assert (decision.action, decision.dose_level) == (advice.action, expected)
            assert decision.follows_recommendation
            assert decision.signer == "safety"
        last = trial.decisions[-1]
        assert last.action == "stop"
        assert trial.result.stopped
        assert trial.result.mtd == last.dose_level
        # Each cohort after the first is at the dose the decision before it chose.
        for cohort, decision in zip(trial.cohorts[1:], trial.decisions, strict=False):
            assert cohort.dose_level == decision.dose_level
            assert all(
                s.dose_level == cohort.dose_level for s in trial.slots if s.cohort == cohort.number
            )

    def test_up_to_18_subjects_and_a_non_evaluable_one_is_replaced(self, trial: Trial) -> None:
        released = [s for s in trial.slots if s.outcome == "not_evaluable"]
        assert released
        # The study's maximum counts the patients who count: a replaced one does not.
        assert sum(1 for s in trial.slots if s.counts) <= 18
        assert len(trial.result.subjects) <= 18 + len(released)
        for slot in released:
            cohort = next(c for c in trial.cohorts if c.number == slot.cohort)
            members = [s for s in trial.slots if s.cohort == slot.cohort and s.counts]
            assert len(members) == cohort.capacity  # the replacement took the slot
        assert "pending" not in {s.outcome for s in trial.slots}

    def test_the_clinical_calendar_starts_on_the_fixed_study_date(self, trial: Trial) -> None:
        consents = [
            data["consent_date"]
            for entries in trial.casebooks.values()
            for form, _, _, _, _, data in entries
            if form == "informed_consent"
        ]
        assert min(consents) > STUDY_START.isoformat()
        assert max(consents) < trial.result.end.isoformat()
        assert trial.result.end.isoformat() < "2026-01-01"

    def test_data_quality_work_is_done_and_every_query_closed(self, trial: Trial) -> None:
        activity = trial.result.activity
        for kind in (
            "corrections",
            "voids",
            "queries by monitor",
            "queries by data manager",
            "queries answered",
            "source verifications",
            "signatures",
            "casebook signatures",
        ):
            assert activity[kind] >= 1, kind
        assert {q[2] for q in trial.queries} == {"closed"}
        system = {(form, path) for form, path, _, is_system, _ in trial.queries if is_system}
        assert system == STAGED_FINDINGS
        # Every casebook: a signed eligibility, DLT assessment and end of study.
        assert all(count >= 3 for count in trial.signed.values())

    def test_the_endpoint_tables_hold_the_trial(self, trial: Trial) -> None:
        tables = trial.tables
        treated = set(trial.result.infused_on)
        assert {r["subject_id"] for r in tables["teae"].rows} == treated
        dlts = {r["dose_level"]: r["dlt"] for r in tables["dlt"].rows}
        for level in trial.levels:
            assert dlts[level] == sum(
                1 for s in trial.slots if s.dose_level == level and s.outcome == "T"
            )
        crs = tables["crs_icans"].rows
        assert any(r["crs_worst_grade"] >= 1 for r in crs)
        assert any(r["icans_worst_grade"] >= 1 for r in crs)
        for method in ("flow", "qpcr"):
            rows = tables[f"pk_{method}"].rows
            assert {r["subject_id"] for r in rows} == treated
            levels = tables[f"pk_{method}"].summary["dose_levels"]
            means = [lvl["cmax_geomean"] for lvl in levels if lvl["n"]]
            assert means == sorted(means), "expansion rises with dose"
        # Some samples are below the limit of quantification (BLQ, entered as 0).
        assert any(c == 0 for r in tables["pk_flow"].rows for t, c in r["profile"] if t > 0)
        mrd = tables["mrd"].rows
        assert any(r["clearance_date"] for r in mrd)
        assert any(r["imaging_recurrence_date"] for r in mrd)
        rfs = tables["rfs"]
        assert {r["subject_id"] for r in rfs.rows} == treated
        rate = rfs.summary["rfs_24m"]
        assert 0 < rate["lower"] <= rate["estimate"] <= rate["upper"] < 1
        assert any(r["event_type"] == "recurrence" for r in rfs.rows)
        assert any(not r["event"] for r in rfs.rows)


def test_every_stored_event_reads_back_as_the_library_reads_it(trial: Trial) -> None:
    """Checked event by event while simulating; here, that the log held every kind."""
    kinds = {topic.rpartition(".")[2] for topic in trial.stored_types}
    assert {
        "Registered",
        "EntryRecorded",
        "EntryCorrected",
        "EntryVoided",
        "EntrySigned",
        "QueryOpened",
        "QueryClosed",
        "SlotAssigned",
        "OutcomeRecorded",
        "DecisionRecorded",
    } <= kinds


def test_the_same_seed_gives_the_same_trial(trial: Trial, tmp_path: Path) -> None:
    with empty_store(trial.backend, tmp_path) as url:
        again = simulate(url, tmp_path, backend=trial.backend)
    assert again.fingerprint() == trial.fingerprint()


def test_a_store_with_subjects_or_accounts_is_refused(settings: Settings) -> None:
    application = EcrfApplication(settings)
    try:
        application.create_admin("admin", "correct horse battery", "Administrator")
        before = application.max_position()
        with pytest.raises(StoreNotEmptyError, match="already holds user accounts"):
            run_demo(application, SEED)
        assert application.max_position() == before
    finally:
        application.close()


def _cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECRF_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("ECRF_ARGON2_MEMORY_KIB", "1024")
    monkeypatch.setenv("ECRF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("ECRF_DATABASE_URL", raising=False)
    monkeypatch.delenv("ECRF_BOOTSTRAP_ADMIN", raising=False)


def test_ecrf_demo_prints_the_tables_writes_the_plots_and_refuses_a_used_store(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, tmp_path)
    plots = tmp_path / "plots"
    runner = CliRunner()
    arguments = ["demo", "--seed", str(SEED), "--plots", str(plots), "--database", database_url]
    done = runner.invoke(cli, arguments)
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    for heading in (
        "Cohort progression",
        "TEAEs, days 0-28",
        "CRS and ICANS",
        "DLTs (signed assessments)",
        "PK (flow",
        "PK (qpcr",
        "MRD (ctDNA)",
        "recurrence-free survival",
        "2-year RFS (Kaplan-Meier",
        "95% CI",
    ):
        assert heading in text, heading
    outcomes = re.search(r"Outcomes: ((?:\d[NT]+ ?)+)", text)
    assert outcomes is not None
    mtd = re.search(r"MTD: (DL\d|none)", text)
    assert mtd is not None
    advice = three_plus_three(outcomes.group(1).strip(), n_doses=3)
    assert advice.stop
    assert mtd.group(1) == (f"DL{advice.mtd}" if advice.mtd else "none")
    for name in ("cohorts.png", "pk-flow.png", "pk-qpcr.png", "rfs-km.png"):
        image = (plots / name).read_bytes()
        assert image.startswith(PNG), name
        assert len(image) > 5000, name

    refused = runner.invoke(cli, arguments)
    assert refused.exit_code == 2
    assert "refused" in refused.output
    assert "already holds subjects" in " ".join(refused.output.split())


def test_serve_options_of_the_demo_need_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, tmp_path)
    refused = CliRunner().invoke(cli, ["serve", "--seed", "3"])
    assert refused.exit_code == 2
    assert "--demo" in refused.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_ecrf_serve_demo_serves_a_seeded_study(database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    real = tmp_path / "real.sqlite"
    env = {
        **os.environ,
        # A "real" store in the environment: the demo must not touch it.
        "ECRF_DATABASE_URL": f"sqlite:///{real}",
        "ECRF_DATA_DIR": str(tmp_path / "real-data"),
        "ECRF_BOOTSTRAP_ADMIN": "admin:correct horse battery",
        "ECRF_ARGON2_TIME_COST": "1",
        "ECRF_ARGON2_MEMORY_KIB": "1024",
        "COLUMNS": "200",
    }
    command = [sys.executable, "-m", "ecrf.cli", "serve", "--demo", "--port", str(port)]
    command += ["--seed", str(SEED), "--demo-dir", str(tmp_path / "demo")]
    if database_url.startswith("postgresql"):
        command += ["--demo-database", database_url]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"server did not start:\n{log_path.read_text()}")
            time.sleep(0.3)
        token = httpx.post(
            f"{base}/auth/token", data={"username": "pi", "password": DEMO_PASSWORD}, timeout=30
        )
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        subjects = httpx.get(f"{base}/subjects", headers=headers, timeout=30)
        assert subjects.status_code == 200
        assert len(subjects.json()) >= 6
        cohorts = httpx.get(f"{base}/cohorts", headers=headers, timeout=30)
        assert cohorts.status_code == 200
        assert cohorts.json()["stopped"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = " ".join(log_path.read_text().split())
    assert f"http://127.0.0.1:{port}/docs" in text
    assert DEMO_PASSWORD in text
    for account in DEMO_ACCOUNTS:
        assert account.username in text
    assert not real.exists(), "the demo wrote into ECRF_DATABASE_URL"
    if not database_url.startswith("postgresql"):
        assert list((tmp_path / "demo").glob("run-*/ecrf.sqlite"))
