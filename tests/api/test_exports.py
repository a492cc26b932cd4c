"""Standards exports through the API: ODM 1.3.2 (XSD-valid, round trip, full audit trail),
SDTM datasets checked by hand against a small trial, the cut each export states, and
refusals (roles, bad type, unknown dataset or format)."""

from __future__ import annotations

import copy
import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ecrf.export import odm_read
from ecrf.export.sdtm import DOMAINS
from ecrf.export.sdtm_files import read_xpt
from tests.api.conftest import PASSWORD, Api
from tests.export_support import expanded_changes, pointer_tokens, without_creation_time, xsd_errors

SUBJECT = "CHH-S001"
USUBJID = "CEA-CART-CRLM-01-CHH-S001"
MIGRATION_REASON = "adverse_event v2 released: record the action taken"
DATA_ACTIONS = ("entry_recorded", "entry_corrected")


@dataclass
class Trial:
    """The entry ids of the small trial, by what they are."""

    entries: dict[str, str] = field(default_factory=dict)


def example(api: Api, form: str, index: int = 0) -> dict[str, Any]:
    schema = api.get("crc", f"/forms/{form}/1").json()
    data: dict[str, Any] = copy.deepcopy(schema["examples"][index])
    return data


def enter(
    api: Api,
    form: str,
    visit: str,
    data: dict[str, Any],
    user: str = "crc",
    version: int | None = None,
) -> str:
    body: dict[str, Any] = {"form": form, "visit": visit, "data": data}
    if version is not None:
        body["version"] = version
    response = api.post(user, f"/subjects/{SUBJECT}/entries", body)
    assert response.status_code == 201, response.text
    entry_id: str = response.json()["entry_id"]
    return entry_id


def entry_url(entry_id: str) -> str:
    return f"/subjects/{SUBJECT}/entries/{entry_id}"


def correct(api: Api, entry_id: str, revision: int, reason: str, **changes: Any) -> None:
    body = {"changes": changes, "reason": reason, "expected_revision": revision}
    response = api.post("crc", f"{entry_url(entry_id)}/corrections", body)
    assert response.status_code == 200, response.text


def sign(api: Api, path: str, meaning: str = "authorship") -> None:
    body = {"username": "pi", "password": PASSWORD, "meaning": meaning}
    response = api.post("pi", f"{path}/signature", body)
    assert response.status_code == 201, response.text


def build_trial(api: Api) -> Trial:
    """One subject: consent, demographics, infusion, AEs (entered on adverse_event v1, one
    corrected, one voided, one migrated to v2), PK samples, imaging, ctDNA, ADA, RCL, a
    signed DLT assessment and monitoring."""
    trial = Trial()
    e = trial.entries
    response = api.post("crc", "/subjects", {"site": "CHH", "screening_number": "S001"})
    assert response.status_code == 201, response.text
    e["consent"] = enter(api, "informed_consent", "SCR", example(api, "informed_consent"))
    e["eligibility"] = enter(api, "eligibility", "SCR", example(api, "eligibility"))
    e["demographics"] = enter(api, "demographics", "SCR", example(api, "demographics"))
    e["surgery"] = enter(api, "surgery_history", "SCR", example(api, "surgery_history"))
    e["ctdna"] = enter(api, "ctdna_result", "SCR", example(api, "ctdna_result"))
    enrolled = api.post("crc", f"/subjects/{SUBJECT}/enrolment", {})
    assert enrolled.status_code == 201, enrolled.text
    e["ld"] = enter(api, "lymphodepletion", "LD", example(api, "lymphodepletion"))
    e["infusion"] = enter(api, "cart_infusion", "D0", example(api, "cart_infusion"))
    e["pk0"] = enter(api, "pk_sample", "D0", example(api, "pk_sample", 1))
    pk7 = {
        "sample_datetime": "2023-05-02T08:00:00+08:00",
        "nominal_day": 7,
        "flow_cells_per_ul": 20.5,
        "flow_blq": False,
        "qpcr_copies_per_ug": 42000,
        "qpcr_blq": False,
    }
    e["pk7"] = enter(api, "pk_sample", "D7", pk7)
    e["pk10"] = enter(api, "pk_sample", "D10", example(api, "pk_sample", 0))
    # Entered before adverse_event v2 was released (new entries now get v2).
    e["crs"] = enter(api, "adverse_event", "LOG", example(api, "adverse_event", 0), version=1)
    e["neutropenia"] = enter(
        api, "adverse_event", "LOG", example(api, "adverse_event", 1), version=1
    )
    e["proctalgia"] = enter(api, "adverse_event", "LOG", example(api, "adverse_event", 2))
    voided = api.post(
        "crc",
        f"{entry_url(e['proctalgia'])}/void",
        {"reason": "Entered for the wrong subject", "expected_revision": 1},
    )
    assert voided.status_code == 200, voided.text
    # A scalar and a nested field corrected together, then an object added whole.
    correct(
        api,
        e["crs"],
        1,
        "Re-graded after ICU review",
        grade=3,
        sae_criteria={"life_threatening": True},
    )
    criteria = {
        "death": False,
        "life_threatening": False,
        "hospitalisation": False,
        "disability": False,
        "congenital_anomaly": False,
        "other_important": True,
    }
    correct(
        api,
        e["neutropenia"],
        1,
        "Medically important: upgraded to SAE",
        serious=True,
        sae_criteria=criteria,
    )
    migrated = api.post(
        "dm",
        f"{entry_url(e['neutropenia'])}/migrate",
        {"to_version": 2, "reason": MIGRATION_REASON},
    )
    assert migrated.status_code == 200, migrated.text
    ada = {"sample_date": "2023-05-09", "result": "negative"}
    e["ada14"] = enter(api, "ada_test", "D14", ada)
    e["ada_m3"] = enter(api, "ada_test", "M3", example(api, "ada_test", 1))
    dlt = {
        "assessment_date": "2023-05-24",
        "evaluable": True,
        "dlt": True,
        "ae_entry_ids": [e["crs"]],
        "dlt_categories": ["crs_grade_3_over_72h"],
        "last_day_observed": 29,
    }
    e["dlt"] = enter(api, "dlt_assessment", "D28", dlt, user="pi")
    sign(api, entry_url(e["dlt"]))
    e["imaging_m3"] = enter(api, "imaging", "M3", example(api, "imaging", 0))
    recurrence = {
        "imaging_date": "2023-10-20",
        "modality": "MRI",
        "adequate": True,
        "recurrence": True,
        "sites": ["liver"],
    }
    e["imaging_m6"] = enter(api, "imaging", "M6", recurrence)
    e["rcl"] = enter(api, "rcl_test", "M3", example(api, "rcl_test", 0))
    # Monitoring: SDV, a query answered and closed, a lock, a casebook signature.
    assert (
        api.post("cra", f"{entry_url(e['demographics'])}/sdv", {"revision": 1}).status_code == 200
    )
    opened = api.post(
        "cra", f"{entry_url(e['neutropenia'])}/queries", {"path": "/grade", "text": "Nadir ANC?"}
    )
    assert opened.status_code == 201, opened.text
    query = opened.json()["query_id"]
    assert api.post("crc", f"/queries/{query}/answer", {"text": "ANC 0.3"}).status_code == 200
    assert api.post("dm", f"/queries/{query}/close", {"text": "Thanks"}).status_code == 200
    locked = api.post("dm", f"{entry_url(e['demographics'])}/lock", {"reason": "Clean"})
    assert locked.status_code == 200, locked.text
    sign(api, f"/subjects/{SUBJECT}", "approval")
    return trial


@pytest.fixture
def trial(api: Api) -> Trial:
    """The small trial, built through the API."""
    return build_trial(api)


def odm(api: Api, kind: str = "snapshot", user: str = "dm", **params: str) -> Any:
    response = api.get(user, "/exports/odm.xml", params={"type": kind, **params})
    assert response.status_code == 200, response.text
    assert xsd_errors(response.content) == []  # every export the tests take is valid ODM
    return response


def dataset(api: Api, name: str, **params: str) -> list[dict[str, str]]:
    response = api.get("fda", f"/exports/sdtm/{name}.csv", params=params)
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def is_migration(record: dict[str, Any]) -> bool:
    return bool(record["action"] == "entry_migrated")


def migrated_leaves(api: Api, record: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every leaf of an entry's data just after its migration, as (pointer, value)."""
    then = api.get("dm", entry_url(record["entry_id"]), params={"as_of": record["at"]}).json()
    return expanded_changes(
        [{"path": f"/{key}", "old": None, "new": value} for key, value in then["data"].items()]
    )


def casebook(api: Api) -> dict[str, Any]:
    body: dict[str, Any] = api.get("dm", f"/subjects/{SUBJECT}").json()
    return body


def position(api: Api) -> int:
    application = api.client.app.state.application  # type: ignore[attr-defined]
    return int(application.max_position())


# ODM -------------------------------------------------------------------------------------


class TestOdm:
    def test_both_types_are_valid_odm_1_3_2(self, api: Api, trial: Trial) -> None:
        for kind in ("snapshot", "transactional"):
            document = odm(api, kind).content
            assert xsd_errors(document) == [], kind

    def test_the_snapshot_round_trips_the_live_entries(self, api: Api, trial: Trial) -> None:
        document = odm(api).content
        live = {e["entry_id"]: e["data"] for e in casebook(api)["entries"] if not e["voided"]}
        assert odm_read.snapshot_entries(document) == {SUBJECT: live}
        assert trial.entries["proctalgia"] not in live

    def test_replaying_the_transactions_gives_the_snapshot(self, api: Api, trial: Trial) -> None:
        snapshot = odm_read.snapshot_entries(odm(api).content)
        assert odm_read.replay(odm(api, "transactional").content) == snapshot

    def test_every_audit_trail_record_is_in_the_transactional_file(
        self, api: Api, trial: Trial
    ) -> None:
        trail = api.get("dm", f"/subjects/{SUBJECT}/audit").json()
        audits = list(odm_read.audit_entries(odm(api, "transactional").content))
        # A migration re-inserts every value under the new version: its leaves, as data.
        migrated = {r["position"]: migrated_leaves(api, r) for r in trail if is_migration(r)}
        # One AuditRecord per event, except data events: one per changed leaf (and one
        # more for a migration: the old version's form is removed, audited).
        expected = sum(
            len(expanded_changes(r["changes"]))
            if r["action"] in DATA_ACTIONS
            else 1 + len(migrated[r["position"]])
            if is_migration(r)
            else 1
            for r in trail
        )
        assert migrated
        assert len(audits) == expected
        assert sorted({a.source for a in audits}) == sorted(r["position"] for r in trail)
        by_position = {r["position"]: r for r in trail}
        for audit in audits:
            record = by_position[audit.source]
            assert audit.user == f"USR.{record['user']}"
            assert audit.location == f"LOC.{record['site']}"
            assert audit.reason == record["reason"]
            assert datetime.fromisoformat(audit.at) == datetime.fromisoformat(record["at"])
        # The item-level records carry exactly the changed leaves and their new values.
        items = Counter(
            (a.source, a.item_oid.split(".", 3)[3], orjson.dumps(a.value))
            for a in audits
            if a.level == "ItemData" and a.item_oid
        )
        changes = Counter(
            (r["position"], ".".join(pointer_tokens(path)), orjson.dumps(new))
            for r in trail
            if r["action"] in DATA_ACTIONS or is_migration(r)
            for path, new in (
                migrated[r["position"]] if is_migration(r) else expanded_changes(r["changes"])
            )
        )
        assert items == changes

    def test_a_migration_removes_the_old_form_and_inserts_the_new_one(
        self, api: Api, trial: Trial
    ) -> None:
        entry_id = trial.entries["neutropenia"]
        audits = list(odm_read.audit_entries(odm(api, "transactional").content))
        moved = [a for a in audits if a.entry_id == entry_id and a.reason == MIGRATION_REASON]
        assert [(a.level, a.transaction) for a in moved if a.level == "FormData"] == [
            ("FormData", "Remove")
        ]
        inserted = {a.item_oid or "" for a in moved if a.level == "ItemData"}
        assert all(a.transaction == "Insert" and a.user == "USR.dm" for a in moved[1:])
        assert len(inserted) == len(moved) - 1
        assert "I.adverse_event.v2.grade" in inserted
        assert "I.adverse_event.v2.sae_criteria.other_important" in inserted
        assert all(oid.startswith("I.adverse_event.v2.") for oid in inserted)
        text = odm(api, "transactional").text
        assert '<FlagValue CodeListOID="CL.ECRF.ACTION">entry_migrated</FlagValue>' in text
        assert "migrated from adverse_event v1 to v2" in text
        # The snapshot holds the entry under the version it now has.
        snapshot = odm(api).text
        assert f'FormOID="F.adverse_event.v2" FormRepeatKey="{entry_id}"' in snapshot
        crs = trial.entries["crs"]
        assert f'FormOID="F.adverse_event.v1" FormRepeatKey="{crs}"' in snapshot

    def test_corrections_voids_and_signatures_are_transactions(
        self, api: Api, trial: Trial
    ) -> None:
        audits = list(odm_read.audit_entries(odm(api, "transactional").content))
        crs = [a for a in audits if a.entry_id == trial.entries["crs"] and a.level == "ItemData"]
        updated = {
            (a.item_oid, a.transaction, a.value, a.reason) for a in crs if a.transaction == "Update"
        }
        reason = "Re-graded after ICU review"
        assert updated == {
            ("I.adverse_event.v1.grade", "Update", 3, reason),
            ("I.adverse_event.v1.sae_criteria.life_threatening", "Update", True, reason),
        }
        neutropenia = [
            a.item_oid
            for a in audits
            if a.entry_id == trial.entries["neutropenia"] and a.transaction == "Insert" and a.reason
        ]
        assert "I.adverse_event.v1.sae_criteria.other_important" in neutropenia
        void = [
            a for a in audits if a.entry_id == trial.entries["proctalgia"] and a.level == "FormData"
        ]
        assert [(v.transaction, v.reason) for v in void] == [
            ("Remove", "Entered for the wrong subject")
        ]
        text = odm(api, "transactional").text
        assert 'SignatureOID="SD.authorship"' in text
        assert 'SignatureOID="SD.approval"' in text
        assert 'EditPoint="Monitoring"' in text
        assert 'EditPoint="DataManagement"' in text

    def test_metadata_admin_data_and_signatures(self, api: Api, trial: Trial) -> None:
        text = odm(api).text
        for fragment in (
            '<StudyEventDef OID="SE.D0" Name="Day 0 (CAR-T infusion)" Repeating="No" '
            'Type="Scheduled">',
            '<StudyEventDef OID="SE.LOG" Name="Logs (not visit-bound)" Repeating="Yes" '
            'Type="Common">',
            '<ItemDef OID="I.cart_infusion.v1.infusion_datetime" Name="infusion_datetime" '
            'DataType="datetime">',
            '<ItemDef OID="I.adverse_event.v1.grade" Name="grade" DataType="integer">',
            '<MeasurementUnitRef MeasurementUnitOID="MU.kg"/>',
            '<CodeList OID="CL.demographics.v1.sex" Name="sex" DataType="text">',
            '<Alias Context="JSONPointer" Name="/sae_criteria/death"/>',
            '<User OID="USR.pi" UserType="Investigator"><LoginName>pi</LoginName>',
            '<LocationRef LocationOID="LOC.CHH"/>',
            '<Location OID="LOC.CHH" Name="Department of Colorectal Surgery',
            '<SignatureDef OID="SD.approval" Methodology="Electronic"><Meaning>Approval</Meaning>',
            '<SiteRef LocationOID="LOC.CHH"/>',
        ):
            assert fragment in text, fragment
        # The snapshot keeps the signatures that still hold: the DLT assessment's and the
        # casebook's (nothing changed after either).
        assert text.count("<Signature>") == 2

    def test_arrays_are_json_text(self, api: Api, trial: Trial) -> None:
        text = odm(api).text
        assert """ItemOID="I.imaging.v1.sites" Value='["liver"]'""" in text
        entries = odm_read.snapshot_entries(odm(api).content)[SUBJECT]
        assert entries[trial.entries["infusion"]]["premedication"] == [
            "paracetamol",
            "antihistamine",
        ]

    def test_the_export_states_its_cut(self, api: Api, trial: Trial) -> None:
        response = odm(api)
        end = position(api)
        assert response.headers["x-ecrf-ledger-position"] == str(end)
        head = response.headers["x-ecrf-ledger-head"]
        assert len(head) == 64
        text = response.text
        assert f"ledger position {end}, running head {head}" in text
        assert f'FileOID="CEA-CART-CRLM-01.snapshot.{end}.{head[:12]}"' in text
        # The same head as the ledger's verification computes over the same log.
        assert api.get("fda", "/ledger/verify").json()["head"] == head

    def test_an_as_of_export_equals_the_one_taken_then(self, api: Api, trial: Trial) -> None:
        before = {kind: odm(api, kind) for kind in ("snapshot", "transactional")}
        as_of = before["snapshot"].headers["x-ecrf-as-of"]
        correct(api, trial.entries["neutropenia"], 2, "Typo", grade=3)
        enter(api, "vital_signs", "UNS", example(api, "vital_signs"))
        for kind, then in before.items():
            again = odm(api, kind, as_of=as_of)
            assert again.headers["x-ecrf-ledger-position"] == then.headers["x-ecrf-ledger-position"]
            assert without_creation_time(again.content) == without_creation_time(then.content)
        assert (
            odm(api).headers["x-ecrf-ledger-position"]
            != before["snapshot"].headers["x-ecrf-ledger-position"]
        )

    def test_an_as_of_before_the_study_is_an_empty_valid_export(self, api: Api) -> None:
        document = odm(api, "transactional", as_of="2000-01-01T00:00:00Z")
        assert document.headers["x-ecrf-ledger-position"] == "0"
        assert xsd_errors(document.content) == []
        assert "<SubjectData" not in document.text

    def test_unusual_text_survives_the_round_trip(self, api: Api) -> None:
        assert (
            api.post("crc", "/subjects", {"site": "CHH", "screening_number": "S001"}).status_code
            == 201
        )
        data = example(api, "imaging", 0)
        data["findings"] = 'Line one\r\nline "two" <b>&amp;</b> 肝转移 \t tab'
        entry = enter(api, "imaging", "SCR", data)
        document = odm(api).content
        assert xsd_errors(document) == []
        assert odm_read.snapshot_entries(document)[SUBJECT][entry]["findings"] == data["findings"]


# SDTM ------------------------------------------------------------------------------------


def only(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


class TestSdtm:
    def test_dm_by_hand(self, api: Api, trial: Trial) -> None:
        dm = dataset(api, "dm")
        assert list(dm[0]) == [
            "STUDYID", "DOMAIN", "USUBJID", "SUBJID", "RFSTDTC", "RFENDTC", "RFXSTDTC",
            "RFXENDTC", "RFICDTC", "RFPENDTC", "DTHDTC", "DTHFL", "SITEID", "AGE", "AGEU",
            "SEX", "RACE", "ETHNIC", "ARMCD", "ARM", "ACTARMCD", "ACTARM", "COUNTRY",
            "DMDTC", "DMDY",
        ]  # fmt: skip
        row = only(dm, USUBJID=USUBJID)
        assert row["RFSTDTC"] == "2023-04-25T09:40:00+08:00"
        assert row["RFXENDTC"] == "2023-04-25T09:58:00+08:00"
        assert row["RFICDTC"] == "2023-03-20"
        assert (row["AGE"], row["AGEU"], row["SEX"], row["RACE"]) == ("56", "YEARS", "F", "ASIAN")
        assert (row["ARMCD"], row["ACTARMCD"]) == ("DL1", "DL1")
        # Consent on 20 March, infusion on 25 April: 36 days before, and no day 0.
        assert row["DMDY"] == "-36"

    def test_ae_excludes_the_voided_event_and_shows_the_correction(
        self, api: Api, trial: Trial
    ) -> None:
        ae = dataset(api, "ae")
        assert [r["AESPID"] for r in ae] == [trial.entries["crs"], trial.entries["neutropenia"]]
        crs = only(ae, AESPID=trial.entries["crs"])
        assert (crs["AESEQ"], crs["AETERM"], crs["AETOXGR"]) == (
            "1",
            "Cytokine release syndrome",
            "3",
        )
        # Onset 26 April is the day after the infusion: SDTM day 2 (protocol day 1).
        assert (crs["AESTDTC"], crs["AESTDY"], crs["AEENDY"]) == ("2023-04-26", "2", "5")
        assert (crs["AESER"], crs["AESHOSP"], crs["AESLIFE"], crs["AEREL"]) == (
            "Y",
            "Y",
            "Y",
            "RELATED",
        )
        neutropenia = only(ae, AESPID=trial.entries["neutropenia"])
        assert (neutropenia["AESER"], neutropenia["AESMIE"]) == ("Y", "Y")
        assert (neutropenia["AEENRTPT"], neutropenia["AEENDTC"]) == ("ONGOING", "")

    def test_suppae_grading_scale_and_dlt_flag(self, api: Api, trial: Trial) -> None:
        supp = dataset(api, "suppae")
        assert list(supp[0]) == [
            "STUDYID", "RDOMAIN", "USUBJID", "IDVAR", "IDVARVAL", "QNAM", "QLABEL", "QVAL",
            "QORIG", "QEVAL",
        ]  # fmt: skip
        values = {(r["IDVARVAL"], r["QNAM"]): r["QVAL"] for r in supp}
        assert values[("1", "AETOXSCL")] == "ASTCT 2019"
        assert values[("2", "AETOXSCL")] == "CTCAE v5.0"
        assert values[("1", "AEDLT")] == "Y"  # named by the signed DLT assessment
        assert ("2", "AEDLT") not in values
        assert values[("2", "AERELLD")] == "PROBABLY RELATED"

    def test_pc_and_pp_by_hand(self, api: Api, trial: Trial) -> None:
        pc = dataset(api, "pc")
        assert len(pc) == 6  # three samples, two methods each
        blq = only(pc, PCSPID=trial.entries["pk0"], PCTESTCD="CARTQPCR")
        assert (blq["PCORRES"], blq["PCSTRESN"], blq["PCTPT"], blq["PCDY"]) == (
            "BLQ",
            "",
            "PRE-INFUSION",
            "1",
        )
        peak = only(pc, PCSPID=trial.entries["pk10"], PCTESTCD="CARTQPCR")
        assert (peak["PCSTRESN"], peak["PCORRESU"], peak["PCELTM"], peak["PCDY"]) == (
            "61000", "{copies}/ug", "P10D", "11",
        )  # fmt: skip
        assert peak["PCLLOQ"] == "50"
        pp = {(r["PPCAT"], r["PPTESTCD"]): r for r in dataset(api, "pp")}
        # Days from 09:40 on 25 April: 2 May 08:00 is 6 d 22 h 20 min after it,
        # 5 May 08:10 is 9 d 22 h 30 min after it.
        t7, t10 = 6 + (22 + 20 / 60) / 24, 9 + 22.5 / 24
        auc = 0.5 * t7 * 42000 + 0.5 * (42000 + 61000) * (t10 - t7)  # linear: only rising
        assert float(pp[("CARTQPCR", "CMAX")]["PPSTRESN"]) == 61000
        assert math.isclose(float(pp[("CARTQPCR", "TMAX")]["PPSTRESN"]), t10)
        assert math.isclose(float(pp[("CARTQPCR", "AUCLST")]["PPSTRESN"]), auc)
        interval = pp[("CARTQPCR", "AUCINT")]
        assert math.isclose(float(interval["PPSTRESN"]), auc)  # nothing after Tlast
        assert (interval["PPSTINT"], interval["PPENINT"]) == ("P0D", "P28D")
        assert float(pp[("CARTFLOW", "CMAX")]["PPSTRESN"]) == 38.6

    def test_lb_is_ds_and_ex_by_hand(self, api: Api, trial: Trial) -> None:
        lb = dataset(api, "lb")
        ctdna = only(lb, LBTESTCD="CTDNA")
        # Sampled 14 March, 42 days before the infusion.
        assert (ctdna["LBORRES"], ctdna["LBCAT"], ctdna["LBDY"]) == (
            "DETECTED", "MINIMAL RESIDUAL DISEASE", "-42",
        )  # fmt: skip
        assert only(lb, LBTESTCD="CTDNAMTM")["LBSTRESN"] == "2.37"
        rcl = only(lb, LBTESTCD="RCL")
        assert (rcl["LBORRES"], rcl["LBDY"]) == ("NEGATIVE", "91")  # 24 July = day 90 + 1
        assert only(lb, LBTESTCD="VSVGDNA")["LBSTRESN"] == "0"
        is_ = dataset(api, "is")
        assert only(is_, ISTESTCD="ADA", ISDTC="2023-05-09")["ISDY"] == "15"
        assert only(is_, ISTESTCD="ADATITER")["ISSTRESN"] == "160"
        assert only(is_, ISTESTCD="ADANAB")["ISORRES"] == "NEGATIVE"
        ds = only(dataset(api, "ds"), DSDECOD="INFORMED CONSENT OBTAINED")
        assert (ds["DSSTDTC"], ds["DSSTDY"]) == ("2023-03-20", "-36")
        ex = {r["EXTRT"]: r for r in dataset(api, "ex")}
        assert (ex["ANTI-CEA CAR-T CELLS"]["EXDOSE"], ex["ANTI-CEA CAR-T CELLS"]["EXSTDY"]) == (
            "1000000",
            "1",
        )
        assert (ex["FLUDARABINE"]["EXDOSE"], ex["FLUDARABINE"]["EXSTDY"]) == ("30", "-5")
        assert ex["CYCLOPHOSPHAMIDE"]["EXDOSE"] == "500"

    def test_adtte_rfs_by_hand(self, api: Api, trial: Trial) -> None:
        row = only(dataset(api, "adtte"), USUBJID=USUBJID)
        # Infusion 25 April, recurrence on MRI 20 October 2023: 178 days.
        assert math.isclose(float(row["AVAL"]), 178 / 30.4375)
        assert (row["CNSR"], row["EVNTDESC"], row["STARTDT"], row["ADT"]) == (
            "0", "RECURRENCE (IMAGING)", "2023-04-25", "2023-10-20",
        )  # fmt: skip
        assert (row["TRT01P"], row["TRT01A"]) == ("DL1", "DL1")

    def test_xpt_round_trips_with_labels(self, api: Api, trial: Trial, tmp_path: Path) -> None:
        metadata = api.get("fda", "/exports/sdtm/metadata.json").json()
        described = {d["name"]: d for d in metadata["datasets"]}
        assert set(described) == {d.upper() for d in DOMAINS}
        for name in ("dm", "ae", "pc"):
            response = api.get("dm", f"/exports/sdtm/{name}.xpt")
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-sas-xport"
            path = tmp_path / f"{name}.xpt"
            path.write_bytes(response.content)
            frame, meta = read_xpt(path)
            variables = described[name.upper()]["variables"]
            assert list(frame.columns) == [v["name"] for v in variables]
            assert meta["table_name"] == name.upper()
            assert meta["column_labels"] == {v["name"]: v["label"] for v in variables}
            assert len(frame) == described[name.upper()]["records"]
        frame, _ = read_xpt(tmp_path / "dm.xpt")
        assert frame.loc[0, "ARM"] == "ANTI-CEA CAR-T CELLS 1x10^6 CAR-T(+) cells/kg"
        assert frame.loc[0, "DMDY"] == -36
        lengths = {v["name"]: v for v in described["DM"]["variables"]}
        assert lengths["USUBJID"] == {
            "name": "USUBJID", "label": "Unique Subject Identifier", "type": "Char", "length": 25,
        }  # fmt: skip
        assert lengths["AGE"]["type"] == "Num"
        assert metadata["ledger"]["position"] == position(api)

    def test_every_download_states_its_cut(self, api: Api, trial: Trial) -> None:
        metadata = api.get("fda", "/exports/sdtm/metadata.json").json()
        ledger = metadata["ledger"]
        label = f"ledger {ledger['position']} head {ledger['head'][:12]}"
        assert metadata["xpt_file_label"] == label
        for name in DOMAINS:
            for kind in ("csv", "xpt"):
                response = api.get("fda", f"/exports/sdtm/{name}.{kind}")
                assert response.status_code == 200, response.text
                stated = (
                    response.headers["x-ecrf-ledger-position"],
                    response.headers["x-ecrf-ledger-head"],
                    response.headers["x-ecrf-as-of"],
                )
                assert stated == (str(ledger["position"]), ledger["head"], ledger["as_of"])
            # The XPT file carries its cut inside: the label names position and head.
            assert response.content[:80].startswith(b"HEADER RECORD*******LIBRARY HEADER")
            assert label.encode() in response.content[:1000], name
        # A CSV's cut, kept from its headers, gives the same metadata later on.
        correct(api, trial.entries["neutropenia"], 2, "Typo", grade=3)
        params = {"as_of": ledger["as_of"]}
        again = api.get("fda", "/exports/sdtm/metadata.json", params=params).json()
        assert (again["ledger"]["position"], again["ledger"]["head"]) == (
            ledger["position"],
            ledger["head"],
        )
        assert again["xpt_file_label"] == label

    def test_an_as_of_dataset_equals_the_one_taken_then(self, api: Api, trial: Trial) -> None:
        then = api.get("fda", "/exports/sdtm/ae.csv")
        as_of = then.headers["x-ecrf-as-of"]
        correct(api, trial.entries["neutropenia"], 2, "Typo", grade=3)
        now = api.get("fda", "/exports/sdtm/ae.csv")
        assert now.text != then.text
        again = api.get("fda", "/exports/sdtm/ae.csv", params={"as_of": as_of})
        assert again.text == then.text
        assert again.headers["x-ecrf-ledger-head"] == then.headers["x-ecrf-ledger-head"]


# Refusals ---------------------------------------------------------------------------------


class TestRefusals:
    @pytest.mark.parametrize("user", ["crc", "pi", "cra", "src", "admin"])
    def test_only_data_managers_and_regulators_export(self, api: Api, user: str) -> None:
        for path in ("/exports/odm.xml", "/exports/sdtm/dm.csv", "/exports/sdtm/metadata.json"):
            assert api.get(user, path).status_code == 403, path

    def test_anonymous_is_401(self, api: Api) -> None:
        assert api.client.get("/exports/odm.xml").status_code == 401
        assert api.client.get("/exports/sdtm/dm.csv").status_code == 401

    @pytest.mark.parametrize(
        ("path", "status"),
        [
            ("/exports/odm.xml?type=full", 422),
            ("/exports/odm.xml?type=", 422),
            ("/exports/odm.xml?as_of=yesterday", 422),
            ("/exports/sdtm/zz.csv", 404),
            ("/exports/sdtm/dm.sas7bdat", 404),
            ("/exports/sdtm/dm.csv.gz", 404),
            ("/exports/sdtm/dm", 404),
            ("/exports/sdtm/'%3B%20DROP%20TABLE.csv", 404),
            ("/exports/sdtm/dm.csv?as_of=2023-13-45", 422),
        ],
    )
    def test_bad_requests_are_clear_4xx(self, api: Api, path: str, status: int) -> None:
        response = api.get("dm", path)
        assert response.status_code == status, response.text
        assert response.json()["detail"]

    def test_exports_write_nothing(self, api: Api) -> None:
        before = position(api)
        odm(api, "transactional")
        dataset(api, "dm")
        assert position(api) == before


# Study time --------------------------------------------------------------------------------


def test_a_utc_infusion_near_midnight_agrees_with_the_reports(api: Api) -> None:
    """17:00 UTC on 24 April is 01:00 on 25 April in Shanghai: day 0 is 25 April everywhere."""
    subject = "CHH-Z01"
    response = api.post("crc", "/subjects", {"site": "CHH", "screening_number": "Z01"})
    assert response.status_code == 201, response.text

    def add(form: str, visit: str, data: dict[str, Any]) -> None:
        body = {"form": form, "visit": visit, "data": data}
        added = api.post("crc", f"/subjects/{subject}/entries", body)
        assert added.status_code == 201, added.text

    add(
        "cart_infusion",
        "D0",
        {
            "infusion_datetime": "2023-04-24T17:00:00Z",
            "infusion_end_datetime": "2023-04-24T17:20:00Z",
            "dose_level": "DL1",
            "weight_kg": 62.0,
            "total_car_t_cells": 62_000_000,
        },
    )
    for term, onset in (("Nausea", "2023-04-24"), ("Fever", "2023-04-25")):
        ae = {"term": term, "onset_date": onset, "ongoing": True, "grade": 1, "serious": False}
        add("adverse_event", "LOG", {**ae, "relationship": "possible"})
    scan = {"imaging_date": "2023-07-24", "modality": "CT", "adequate": True, "recurrence": False}
    add("imaging", "M3", scan)

    timeline = api.get("fda", f"/subjects/{subject}/timeline").json()
    protocol_day = {
        ("infusion" if r["category"] == "infusion" else r["what"].split()[2]): r["study_day"]
        for r in timeline["rows"]
        if r["category"] in ("infusion", "adverse_event")
    }
    assert timeline["infusion_date"] == "2023-04-25"
    assert protocol_day == {"infusion": 0, "Nausea": -1, "Fever": 0}
    (teae,) = api.get("fda", "/reports/safety/teae").json()["rows"]
    assert teae["teae_count"] == 1  # the fever, on day 0
    (rfs,) = api.get("fda", "/reports/efficacy/rfs").json()["rows"]

    (dm,) = dataset(api, "dm")
    assert (dm["RFSTDTC"], dm["RFXSTDTC"], dm["RFXENDTC"]) == (
        "2023-04-25T01:00:00+08:00",
        "2023-04-25T01:00:00+08:00",
        "2023-04-25T01:20:00+08:00",
    )
    (ex,) = dataset(api, "ex")
    assert (ex["EXSTDTC"], ex["EXSTDY"]) == ("2023-04-25T01:00:00+08:00", "1")
    ae_days = {r["AETERM"]: int(r["AESTDY"]) for r in dataset(api, "ae")}
    # SDTM day = protocol day + 1 from the infusion day on (no day 0), equal before it.
    assert ae_days == {"Nausea": protocol_day["Nausea"], "Fever": protocol_day["Fever"] + 1}
    (adtte,) = dataset(api, "adtte")
    assert adtte["STARTDT"] == dm["RFSTDTC"][:10] == rfs["infusion_date"] == "2023-04-25"
    assert math.isclose(float(adtte["AVAL"]), rfs["time_months"])
