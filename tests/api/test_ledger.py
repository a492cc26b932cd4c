"""The ledger endpoints: who may read them, paging, seals, verification and the export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ecrf.api.app import create_app
from ecrf.application import EcrfApplication
from ecrf.cli import app as cli
from ecrf.config import Settings
from ecrf.domain.ids import subject_stream
from ecrf.ledger.readers import verify_export
from ecrf.ledger.records import LEDGER_STREAM
from ecrf.ledger.seals import Seal, key_id_of, load_public_key, verify_seal
from tests.api.conftest import PASSWORD, Api

READERS = ["fda", "cra", "dm"]
OTHERS = ["crc", "pi", "src", "admin"]
GETS = [
    "/ledger/events",
    "/ledger/keys",
    "/ledger/seals",
    "/ledger/verify",
    "/exports/ledger.jsonl",
]


def _casebook(api: Api) -> str:
    response = api.post("crc", "/subjects", {"site": "CHH", "screening_number": "L001"})
    assert response.status_code == 201, response.text
    subject_id: str = response.json()["subject_id"]
    data = api.get("crc", "/forms/demographics/1").json()["examples"][0]
    body = {"form": "demographics", "visit": "SCR", "data": data}
    response = api.post("crc", f"/subjects/{subject_id}/entries", body)
    assert response.status_code == 201, response.text
    return subject_id


def _events(api: Api, user: str = "fda", **params: Any) -> list[dict[str, Any]]:
    response = api.get(user, "/ledger/events", params=params)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()
    return events


def _second_site(api: Api) -> None:
    """Add site RJH with its own site staff (logged in now, so later logs stay quiet)."""
    assert api.post("admin", "/sites", {"site_id": "RJH", "name": "Ruijin"}).is_success
    api.user("rjh_crc", ["site_staff"], ["RJH"])
    api.headers("rjh_crc")


def _register(api: Api, user: str, site: str, number: str) -> str:
    response = api.post(user, "/subjects", {"site": site, "screening_number": number})
    assert response.status_code == 201, response.text
    subject_id: str = response.json()["subject_id"]
    return subject_id


def _site(event: dict[str, Any]) -> str | None:
    site: str | None = ((event["data"] or {}).get("audit") or {}).get("site")
    return site


class TestAccess:
    @pytest.mark.parametrize("path", GETS)
    @pytest.mark.parametrize("username", READERS)
    def test_regulators_monitors_and_data_managers_read(
        self, api: Api, username: str, path: str
    ) -> None:
        assert api.get(username, path).status_code == 200

    def test_a_monitor_sees_only_the_events_of_their_sites(self, api: Api) -> None:
        _casebook(api)
        api.post("admin", "/sites", {"site_id": "RJH", "name": "Ruijin"})
        api.user("rjh_crc", ["site_staff"], ["RJH"])
        assert api.post(
            "rjh_crc", "/subjects", {"site": "RJH", "screening_number": "X1"}
        ).is_success
        monitor = api.get("cra", "/ledger/events", params={"limit": 1000}).json()
        sites = {(e["data"] or {}).get("audit", {}).get("site") for e in monitor}
        assert "RJH" not in sites
        assert "CHH" in sites
        regulator = _events(api, limit=1000)
        assert "RJH" in {(e["data"] or {}).get("audit", {}).get("site") for e in regulator}

    def test_password_hashes_are_withheld_from_the_events_page(self, api: Api) -> None:
        for event in _events(api, limit=1000):
            if event["data"] and "password_hash" in event["data"]:
                assert event["data"]["password_hash"] == "withheld"

    @pytest.mark.parametrize("path", [*GETS, "POST /ledger/seals"])
    @pytest.mark.parametrize("username", OTHERS)
    def test_other_roles_are_refused(self, api: Api, username: str, path: str) -> None:
        if path.startswith("POST "):
            response = api.post(username, path.removeprefix("POST "))
        else:
            response = api.get(username, path)
        assert response.status_code == 403

    @pytest.mark.parametrize("path", GETS)
    def test_no_token_is_401(self, api: Api, path: str) -> None:
        response = api.client.get(path)
        assert response.status_code == 401
        assert response.json()["detail"]


class TestEvents:
    def test_commit_order_with_the_chain(self, api: Api) -> None:
        _casebook(api)
        events = _events(api, limit=1000)
        positions = [e["position"] for e in events]
        assert positions == sorted(positions)
        assert set(events[0]) == {
            "position",
            "stream",
            "version",
            "type",
            "at",
            "actor",
            "data",
            "prev_hash",
            "hash",
        }
        last_hash: dict[str, str] = {}
        for event in events:
            assert event["prev_hash"] == last_hash.get(event["stream"], "0" * 64)
            assert event["data"]["hash"] == event["hash"]
            assert event["at"].endswith("Z")
            last_hash[event["stream"]] = event["hash"]
        recorded = [e for e in events if e["type"].endswith("Subject.EntryRecorded")]
        assert recorded[0]["actor"] == "crc"
        assert recorded[0]["data"]["data"]["age"] == 56

    def test_paging(self, api: Api) -> None:
        everything = _events(api, limit=1000)
        first = _events(api, limit=3)
        rest = _events(api, after=first[-1]["position"], limit=1000)
        assert first + rest == everything
        assert _events(api, after=everything[-1]["position"]) == []

    def test_one_stream(self, api: Api) -> None:
        _casebook(api)
        stream = next(e["stream"] for e in _events(api, limit=1000) if "Subject" in e["type"])
        events = _events(api, stream=stream)
        assert [e["version"] for e in events] == [1, 2]
        assert {e["stream"] for e in events} == {stream}
        assert _events(api, stream=stream, after=events[0]["position"]) == events[1:]

    def test_a_position_beyond_64_bits_is_422(self, api: Api) -> None:
        response = api.get("fda", "/ledger/events", params={"after": 2**63})
        assert response.status_code == 422

    @pytest.mark.parametrize(
        "params",
        [{"limit": 0}, {"limit": 1001}, {"after": -1}, {"limit": "x"}, {"stream": "not-a-uuid"}],
    )
    def test_bad_paging_is_422(self, api: Api, params: dict[str, Any]) -> None:
        response = api.get("fda", "/ledger/events", params=params)
        assert response.status_code == 422
        assert response.json()["detail"]


class TestMonitorPaging:
    """A monitor's pages skip other sites' events but never end the listing early."""

    def test_a_page_of_only_another_sites_events_is_read_past(self, api: Api) -> None:
        _second_site(api)
        before = _events(api, limit=1000)[-1]["position"]
        for number in range(5):
            _register(api, "rjh_crc", "RJH", f"R{number}")
        chh = _register(api, "crc", "CHH", "C1")
        response = api.get("cra", "/ledger/events", params={"after": before, "limit": 3})
        assert response.status_code == 200, response.text
        page = response.json()
        # Six events follow: five of RJH, then CHH's; the monitor's page is CHH's.
        assert [e["stream"] for e in page] == [str(subject_stream(chh))]
        assert int(response.headers["X-Next-After"]) == page[-1]["position"]

    def test_paging_through_gives_every_visible_event_once(self, api: Api) -> None:
        _second_site(api)
        for number in range(4):
            _register(api, "rjh_crc", "RJH", f"R{number}")
            _register(api, "rjh_crc", "RJH", f"Q{number}")
            _register(api, "crc", "CHH", f"C{number}")
        everything = _events(api, "cra", limit=1000)
        assert "RJH" not in {_site(e) for e in everything}
        pages: list[list[dict[str, Any]]] = []
        after = 0
        while True:
            response = api.get("cra", "/ledger/events", params={"after": after, "limit": 2})
            assert response.status_code == 200
            pages.append(response.json())
            after = int(response.headers["X-Next-After"])
            if len(pages[-1]) < 2:
                break
        # Every page but the last is full: a short page means the end of the log.
        assert all(len(page) == 2 for page in pages[:-1])
        assert [e for page in pages for e in page] == everything
        assert _events(api, "cra", after=after) == []

    def test_the_hint_is_the_last_position_for_unbound_readers(self, api: Api) -> None:
        response = api.get("fda", "/ledger/events", params={"limit": 2})
        assert int(response.headers["X-Next-After"]) == response.json()[-1]["position"]
        last = _events(api, limit=1000)[-1]["position"]
        response = api.get("fda", "/ledger/events", params={"after": last})
        assert response.json() == []
        assert int(response.headers["X-Next-After"]) == last

    def test_a_monitor_reading_another_sites_stream_gets_nothing(self, api: Api) -> None:
        _second_site(api)
        rjh = _register(api, "rjh_crc", "RJH", "R1")
        stream = str(subject_stream(rjh))
        assert len(_events(api, stream=stream)) == 1
        assert _events(api, "cra", stream=stream) == []


class TestKeysAndSeals:
    def test_keys(self, api: Api) -> None:
        keys = api.get("fda", "/ledger/keys").json()
        assert len(keys) == 1
        assert keys[0]["algorithm"] == "Ed25519"
        key = load_public_key(keys[0]["public_key_pem"].encode())
        assert key_id_of(key) == keys[0]["key_id"]

    def test_sealing_on_demand(self, api: Api) -> None:
        _casebook(api)
        response = api.post("dm", "/ledger/seals")
        assert response.status_code == 201, response.text
        seal = response.json()
        assert seal["position"] < seal["event_position"]
        again = api.post("fda", "/ledger/seals")
        assert again.status_code == 200
        assert again.json() == seal
        listed = api.get("cra", "/ledger/seals").json()
        assert listed == [seal]
        assert {"position", "head", "at", "signature", "key_id"} <= set(seal)

    def test_a_listed_seal_verifies_with_a_listed_key(self, api: Api) -> None:
        api.post("fda", "/ledger/seals")
        seal = Seal.from_dict(api.get("fda", "/ledger/seals").json()[0])
        key = load_public_key(api.get("fda", "/ledger/keys").json()[0]["public_key_pem"].encode())
        assert verify_seal(seal, key)

    def test_a_seal_is_attributed_to_who_asked(self, api: Api) -> None:
        seal = api.post("dm", "/ledger/seals").json()
        events = _events(api, after=seal["event_position"] - 1, limit=1)
        assert events[0]["type"].endswith("Ledger.Sealed")
        assert events[0]["actor"] == "dm"
        assert events[0]["data"]["audit"]["role"] == "data_manager"


class TestVerify:
    def test_an_untouched_log_is_ok(self, api: Api) -> None:
        _casebook(api)
        seal = api.post("fda", "/ledger/seals").json()
        report = api.get("fda", "/ledger/verify").json()
        assert report["ok"] is True
        assert report["problems"] == []
        assert report["sealed_through"] == seal["position"]
        assert report["events"] == report["last_position"]
        assert len(report["head"]) == 64

    def test_a_changed_event_is_reported(self, api: Api, api_settings: Settings) -> None:
        _casebook(api)
        api.post("fda", "/ledger/seals")
        # An attacker with database access, on a second connection.
        attacker = EcrfApplication(api_settings)
        try:
            table = attacker.table
            if table.engine == "sqlite":
                table.execute(f"DROP TRIGGER {table.table}_refuse_update", commit=True)
            else:
                table.execute(
                    f'DROP TRIGGER "{table.table}_refuse_change" ON {table.qualified_name}',
                    commit=True,
                )
            table.execute(
                f"UPDATE {table.qualified_name} SET state = ? WHERE {table.position_column} = ?",
                [b'{"audit":{},"hash":"00","prev_hash":"00"}', 3],
                commit=True,
            )
        finally:
            attacker.close()
        report = api.get("fda", "/ledger/verify").json()
        assert report["ok"] is False
        kinds = {(p["kind"], p["position"]) for p in report["problems"]}
        assert ("hash_mismatch", 3) in kinds


class TestExport:
    def test_the_export_verifies_offline(self, api: Api, tmp_path: Path) -> None:
        _casebook(api)
        api.post("fda", "/ledger/seals")
        response = api.get("fda", "/exports/ledger.jsonl")
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in response.content.splitlines()]
        assert lines[0]["kind"] == "header"
        assert lines[-1]["kind"] == "end"
        events = [line for line in lines if line["kind"] == "event"]
        assert [e["position"] for e in events] == [e["position"] for e in _events(api, limit=1000)]
        # The state is the exact stored text.
        stored = _events(api, limit=1)[0]
        assert orjson.loads(events[0]["state"]) == stored["data"]
        path = tmp_path / "ledger.jsonl"
        path.write_bytes(response.content)
        pem = api.get("fda", "/ledger/keys").json()[0]["public_key_pem"].encode()
        key = load_public_key(pem)
        report = verify_export(path, trusted_keys={key_id_of(key): key})
        assert report.ok, [str(p) for p in report.problems]
        assert report.sealed_through > 0


class TestMonitorExport:
    """A monitor's export: their sites' casebooks and the ledger stream, verifiable."""

    def _export(self, api: Api, tmp_path: Path) -> tuple[Path, list[dict[str, Any]], str]:
        _second_site(api)
        chh = _casebook(api)
        rjh = _register(api, "rjh_crc", "RJH", "R1")
        assert api.post("fda", "/ledger/seals").status_code == 201
        _register(api, "crc", "CHH", "C2")  # after the seal: unsealed
        _register(api, "rjh_crc", "RJH", "R2")
        response = api.get("cra", "/exports/ledger.jsonl")
        assert response.status_code == 200, response.text
        path = tmp_path / "monitor.jsonl"
        path.write_bytes(response.content)
        lines = [orjson.loads(line) for line in response.content.splitlines()]
        self.streams = {str(subject_stream(chh)), str(subject_stream("CHH-C2")), LEDGER_STREAM}
        self.others = {str(subject_stream(rjh)), str(subject_stream("RJH-R2"))}
        pem: str = api.get("cra", "/ledger/keys").json()[0]["public_key_pem"]
        return path, lines, pem

    def test_it_says_it_is_partial_and_holds_only_the_monitors_sites(
        self, api: Api, tmp_path: Path
    ) -> None:
        _, lines, _ = self._export(api, tmp_path)
        header = lines[0]
        assert header["kind"] == "header"
        assert header["scope"] == "partial"
        assert header["sites"] == ["CHH"]
        assert "partial" in header["note"]
        assert lines[-1]["kind"] == "end"
        assert lines[-1]["scope"] == "partial"
        events = [line for line in lines if line["kind"] == "event"]
        assert {e["stream"] for e in events} == self.streams
        # Nothing of another site, and no account records (password hashes) either.
        for event in events:
            assert "RJH" not in event["state"]
            assert "password_hash" not in event["state"]
        regulator = [
            orjson.loads(x) for x in api.get("fda", "/exports/ledger.jsonl").content.splitlines()
        ]
        assert self.others <= {x.get("stream") for x in regulator}

    def test_it_verifies_offline_and_says_what_was_not_checked(
        self, api: Api, tmp_path: Path
    ) -> None:
        path, _, pem = self._export(api, tmp_path)
        key = load_public_key(pem.encode())
        report = verify_export(path, trusted_keys={key_id_of(key): key})
        assert report.ok, [str(p) for p in report.problems]
        assert report.partial
        assert report.sealed_through > 0
        assert any(note.startswith("partial export") for note in report.notes)
        assert any(note.startswith("not checked: the running head") for note in report.notes)
        key_file = tmp_path / "key.pem"
        key_file.write_text(pem)
        result = CliRunner().invoke(
            cli, ["verify", "--file", str(path), "--public-key", str(key_file)]
        )
        assert result.exit_code == 0, result.output
        assert "PARTIAL export" in result.output
        assert "intact" in result.output

    def test_tampering_in_it_is_detected(self, api: Api, tmp_path: Path) -> None:
        path, lines, pem = self._export(api, tmp_path)
        key = load_public_key(pem.encode())
        event = next(x for x in lines if x["kind"] == "event" and '"age":56' in x["state"])
        event["state"] = event["state"].replace('"age":56', '"age":57')
        path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
        report = verify_export(path, trusted_keys={key_id_of(key): key})
        assert [(p.kind.value, p.position) for p in report.problems] == [
            ("hash_mismatch", event["position"])
        ]

    def test_the_full_export_is_unchanged_for_regulators_and_data_managers(self, api: Api) -> None:
        for user in ("fda", "dm"):
            lines = api.get(user, "/exports/ledger.jsonl").content.splitlines()
            header, end = orjson.loads(lines[0]), orjson.loads(lines[-1])
            assert set(header) == {"kind", "format", "exported_at", "keys"}
            assert "scope" not in end
            positions = [orjson.loads(x)["position"] for x in lines[1:-1]]
            assert positions == [e["position"] for e in _events(api, limit=1000)]


def test_the_server_seals_at_shutdown(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings)) as client:
        token = client.post("/auth/token", data={"username": "admin", "password": PASSWORD})
        assert token.status_code == 200
    application = EcrfApplication(api_settings)
    try:
        last = application.ledger.last_seal()
        assert last is not None
        # Everything but the seal's own events (ledger created, key added, sealed).
        assert last.seal.position == application.max_position() - 3
        assert last.seal.reason == "shutdown"
    finally:
        application.close()
