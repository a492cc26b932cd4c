"""The pure export mappings: ODM items and values, the ODM metadata against the XSD, and
SDTM rows from hand-built casebook facts (no database)."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from ecrf.export.cut import Account, LogCut, SiteAtCut
from ecrf.export.facts import Casebook, EntryFact
from ecrf.export.odm import (
    StudyMetadata,
    XmlWriter,
    leaf_changes,
    root_attributes,
    write_admin,
    write_study,
)
from ecrf.export.odm_items import (
    BOOLEAN,
    DATE,
    DATETIME,
    FLOAT,
    INTEGER,
    TEXT,
    form_spec,
    json_value,
    leaves,
    odm_value,
)
from ecrf.export.sdtm import (
    AE_ACTION,
    adtte_rows,
    ae_rows,
    dm_rows,
    ds_rows,
    dtc_date,
    elapsed,
    ex_rows,
    local_dtc,
    pc_rows,
    schema_units,
    sdtm_package,
    study_day,
    suppae_rows,
)
from ecrf.export.sdtm_files import (
    ascii_text,
    csv_bytes,
    read_xpt,
    truncated,
    variable_metadata,
    write_package,
    xpt_label,
)
from ecrf.forms import FormRegistry
from projections.facts import EntryFact as ReportFact
from projections.facts import SubjectFacts
from projections.safety import teae_report
from projections.timeline import timeline_report
from tests.export_support import xsd_errors

INFUSED = "2023-04-25T09:40:00+08:00"


@pytest.fixture(scope="module")
def forms() -> FormRegistry:
    return FormRegistry()


SIGNED_AT = datetime(2023, 6, 1, 9, 0, tzinfo=UTC)


def facts(subject_id: str = "CHH-S001", **forms: list[dict[str, Any]]) -> Casebook:
    """A casebook with entries given per form (visit LOG for logs, SCR otherwise)."""
    entries = []
    for form, items in forms.items():
        for n, data in enumerate(items, start=1):
            visit = "LOG" if form == "adverse_event" else data.pop("_visit", "SCR")
            signed = bool(data.pop("_signed", False))
            signed_at = data.pop("_signed_at", SIGNED_AT if signed else None)
            entries.append(EntryFact(f"{form}-{n}", form, 1, visit, data, signed_at))
    return Casebook(subject_id, "CHH", entries=tuple(entries))


# Study day ------------------------------------------------------------------------------------


class TestStudyDay:
    @pytest.mark.parametrize(
        ("day", "expected"),
        [
            (date(2023, 4, 25), 1),  # the infusion day (protocol day 0)
            (date(2023, 4, 26), 2),
            (date(2023, 4, 24), -1),  # there is no day 0
            (date(2023, 3, 20), -36),
            (date(2023, 5, 23), 29),  # protocol day 28
        ],
    )
    def test_no_day_zero(self, day: date, expected: int) -> None:
        assert study_day(day, date(2023, 4, 25)) == expected

    def test_missing_dates_have_no_day(self) -> None:
        assert study_day(None, date(2023, 4, 25)) is None
        assert study_day(date(2023, 4, 25), None) is None

    def test_the_date_portion_is_read_as_written(self) -> None:
        assert dtc_date(INFUSED) == date(2023, 4, 25)
        assert dtc_date("2023-04-25") == date(2023, 4, 25)
        assert dtc_date("not a date") is None
        assert dtc_date(None) is None


SHANGHAI = ZoneInfo("Asia/Shanghai")


class TestLocalTime:
    @pytest.mark.parametrize(
        ("value", "written"),
        [
            # 17:00 UTC on 24 April is 01:00 on 25 April in Shanghai.
            ("2023-04-24T17:00:00Z", "2023-04-25T01:00:00+08:00"),
            ("2023-04-24T17:00:00+00:00", "2023-04-25T01:00:00+08:00"),
            ("2023-04-25T03:30:00+09:30", "2023-04-25T02:00:00+08:00"),
            ("2023-04-24T15:59:59.5Z", "2023-04-24T23:59:59.500000+08:00"),
            # Already local, zoneless (study time by rule) or a date: as written.
            (INFUSED, INFUSED),
            ("2023-04-25T09:40+08:00", "2023-04-25T09:40+08:00"),
            ("2023-04-25T09:40:00", "2023-04-25T09:40:00"),
            ("2023-04-25", "2023-04-25"),
            ("not a dateTtime", "not a dateTtime"),
            ("", None),
            (None, None),
        ],
    )
    def test_instants_are_written_in_study_time(self, value: Any, written: str | None) -> None:
        assert local_dtc(value, SHANGHAI) == written


def xpt_cut(position: int) -> LogCut:
    return LogCut(position, "ab" * 32, "", None, None, (), (), ())


# ODM items and values ------------------------------------------------------------------------


class TestOdmItems:
    def test_leaf_items_with_types_units_and_codes(self, forms: FormRegistry) -> None:
        spec = form_spec(forms.get("adverse_event", 1))
        items = {i.name: i for i in spec.items}
        assert spec.oid == "F.adverse_event.v1"
        assert spec.group_oid == "IG.adverse_event.v1"
        assert items["grade"].data_type == INTEGER
        assert items["grade"].mandatory is True
        assert items["onset_date"].data_type == DATE
        assert items["serious"].data_type == BOOLEAN
        death = items["sae_criteria.death"]
        assert (death.oid, death.pointer, death.data_type) == (
            "I.adverse_event.v1.sae_criteria.death",
            "/sae_criteria/death",
            BOOLEAN,
        )
        assert "sae_criteria" not in items  # split into its leaves
        relationship = items["relationship"]  # an enum behind a $ref
        assert relationship.codes == ("unrelated", "unlikely", "possible", "probable", "definite")
        assert relationship.codelist_oid == "CL.adverse_event.v1.relationship"

    def test_arrays_are_json_text_and_units_come_from_x_unit(self, forms: FormRegistry) -> None:
        items = {i.name: i for i in form_spec(forms.get("cart_infusion", 1)).items}
        assert (items["premedication"].data_type, items["premedication"].json_text) == (TEXT, True)
        assert items["premedication"].codes == ()
        assert items["infusion_datetime"].data_type == DATETIME
        assert (items["weight_kg"].data_type, items["weight_kg"].unit) == (FLOAT, "kg")

    def test_every_form_has_items_with_unique_oids(self, forms: FormRegistry) -> None:
        oids = [i.oid for f in forms for i in form_spec(f).items]
        assert len(oids) == len(set(oids)) > 250

    @pytest.mark.parametrize(
        ("value", "data_type", "text"),
        [
            (True, BOOLEAN, "true"),
            (False, BOOLEAN, "false"),
            (3, INTEGER, "3"),
            (62.0, FLOAT, "62.0"),
            (61000, FLOAT, "61000"),
            (1e-07, FLOAT, "0.0000001"),  # xs:decimal has no exponent
            (1.5e16, FLOAT, "15000000000000000.0"),
            (-0.25, FLOAT, "-0.25"),
            ("2023-04-25", DATE, "2023-04-25"),
            ("Other, specify", TEXT, "Other, specify"),
        ],
    )
    def test_values_round_trip(self, value: Any, data_type: str, text: str) -> None:
        assert odm_value(value) == text
        back = json_value(text, data_type)
        assert back == value
        assert type(back) is type(value)

    def test_json_text_and_nulls(self) -> None:
        assert odm_value(["liver", "lung"]) == '["liver","lung"]'
        assert json_value('["liver","lung"]', TEXT, json_text=True) == ["liver", "lung"]
        assert odm_value(None) is None
        assert json_value(None, TEXT) is None

    def test_characters_xml_cannot_carry_are_replaced(self) -> None:
        assert odm_value("a\x01b\x0bc") == "a\ufffdb\ufffdc"
        assert odm_value("tab\tnewline\n") == "tab\tnewline\n"

    def test_leaves_split_objects_not_arrays(self) -> None:
        data = {"a": 1, "b": {"c": True, "d": {"e": "x"}}, "f": [1, 2]}
        assert list(leaves(data)) == [
            (("a",), 1),
            (("b", "c"), True),
            (("b", "d", "e"), "x"),
            (("f",), [1, 2]),
        ]

    def test_a_whole_object_change_becomes_its_leaves(self) -> None:
        changes: list[dict[str, Any]] = [
            {"path": "/grade", "old": 2, "new": 3},
            {"path": "/sae_criteria", "old": None, "new": {"death": False, "other": True}},
            {"path": "/sae_criteria~1x/y", "old": True, "new": False},
        ]
        assert list(leaf_changes(changes)) == [
            (("grade",), 2, 3),
            (("sae_criteria", "death"), None, False),
            (("sae_criteria", "other"), None, True),
            (("sae_criteria/x", "y"), True, False),
        ]


# ODM metadata against the XSD ----------------------------------------------------------------


def empty_cut() -> LogCut:
    at = datetime(2023, 3, 1, tzinfo=UTC)
    return LogCut(
        position=0,
        head="0" * 64,
        event_hash="",
        at=None,
        as_of=None,
        subjects=(),
        accounts=(Account("pi", "Ivan Petrov", ["investigator"], ["CHH", "GONE"]),),
        sites=(SiteAtCut("CHH", "Changhai", at),),
    )


def metadata_document(forms: FormRegistry) -> bytes:
    metadata = StudyMetadata(forms)
    writer = XmlWriter()
    writer.declaration()
    cut = empty_cut()
    writer.start("ODM", root_attributes(forms.study, cut, "snapshot", datetime.now(UTC)))
    write_study(writer, metadata)
    write_admin(writer, metadata, cut)
    writer.end("ODM")
    return writer.take()


class TestOdmMetadata:
    def test_the_study_definition_is_valid_odm(self, forms: FormRegistry) -> None:
        document = metadata_document(forms)
        assert xsd_errors(document) == []
        text = document.decode()
        assert text.count("<StudyEventDef ") == len(forms.visits())
        assert text.count("<FormDef ") == len(list(forms))
        assert '<LocationRef LocationOID="LOC.CHH"/>' in text
        assert "LOC.GONE" not in text  # a grant to an unknown site references nothing

    def test_the_schema_is_really_enforced(self, forms: FormRegistry) -> None:
        broken = metadata_document(forms).replace(b'Repeating="No"', b'Repeating="Maybe"', 1)
        assert xsd_errors(broken)

    def test_the_metadata_version_follows_the_forms(self, forms: FormRegistry) -> None:
        assert StudyMetadata(forms).mdv_oid == StudyMetadata(FormRegistry()).mdv_oid

    def test_the_writer_refuses_to_misnest(self) -> None:
        writer = XmlWriter()
        writer.start("A")
        with pytest.raises(ValueError, match="closing B"):
            writer.end("B")


# SDTM rows ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(forms: FormRegistry) -> dict[str, Any]:
    return forms.study


def infusion(**extra: Any) -> dict[str, Any]:
    return {"infusion_datetime": INFUSED, "dose_level": "DL2", "cells_per_kg": 3e6, **extra}


class TestSdtmRows:
    def test_dm_arms(self, study: dict[str, Any]) -> None:
        enrolled = Casebook("CHH-1", "CHH", dose_level="DL2")
        treated = Casebook(
            "CHH-2", "CHH", dose_level="DL2", entries=facts(cart_infusion=[infusion()]).entries
        )
        failed = facts("CHH-3", eligibility=[{"criteria_met": False}])
        waiting = facts("CHH-4", informed_consent=[{"consent_date": "2023-03-20"}])
        rows = {r["SUBJID"]: r for r in dm_rows(study, [enrolled, treated, failed, waiting])}
        assert (rows["CHH-1"]["ARMCD"], rows["CHH-1"]["ACTARMCD"]) == ("DL2", "NOTTRT")
        assert (rows["CHH-2"]["ARMCD"], rows["CHH-2"]["ACTARMCD"]) == ("DL2", "DL2")
        assert rows["CHH-2"]["ARM"] == "ANTI-CEA CAR-T CELLS 3\u00d710^6 CAR-T(+) cells/kg"
        assert (rows["CHH-3"]["ARMCD"], rows["CHH-3"]["ACTARM"]) == ("SCRNFAIL", "Screen Failure")
        assert rows["CHH-4"]["ARMCD"] == "NOTASSGN"
        assert rows["CHH-4"]["RFSTDTC"] is None

    def test_dm_death(self, study: dict[str, Any]) -> None:
        casebook = facts(end_of_study=[{"end_date": "2024-01-02", "reason": "death"}])
        row = dm_rows(study, [casebook])[0]
        assert (row["DTHDTC"], row["DTHFL"], row["RFPENDTC"]) == ("2024-01-02", "Y", "2024-01-02")

    def test_ae_other_specify_and_sequence(self, study: dict[str, Any]) -> None:
        casebook = facts(
            cart_infusion=[infusion()],
            adverse_event=[
                {"term": "Fever", "onset_date": "2023-04-27", "grade": 1, "ongoing": False},
                {
                    "term": "Other, specify",
                    "term_other": "Proctalgia",
                    "onset_date": "2023-04-26",
                    "grade": 2,
                    "ongoing": True,
                },
            ],
        )
        rows = ae_rows(study, [casebook])
        assert [(r["AESEQ"], r["AETERM"], r["AESTDY"]) for r in rows] == [
            (1, "Proctalgia", 2),
            (2, "Fever", 3),
        ]
        assert rows[0]["AEENRTPT"] == "ONGOING"

    def test_action_taken_is_aeacn_and_left_empty_before_v2(
        self, study: dict[str, Any], forms: FormRegistry
    ) -> None:
        actions = forms.get("adverse_event", 2).schema["properties"]["action_taken"]["enum"]
        assert set(actions) == set(AE_ACTION)  # every answer the form allows has a term
        casebook = facts(
            adverse_event=[
                {"term": "Fever", "onset_date": "2023-04-26", "action_taken": "not_applicable"},
                {"term": "Chills", "onset_date": "2023-04-25", "action_taken": "drug_interrupted"},
                {"term": "Nausea", "onset_date": "2023-04-27"},  # entered on v1
            ]
        )
        rows = {r["AETERM"]: r["AEACN"] for r in ae_rows(study, [casebook])}
        assert rows == {"Fever": "NOT APPLICABLE", "Chills": "DRUG INTERRUPTED", "Nausea": None}

    def test_only_a_signed_dlt_assessment_flags_a_dlt(self, study: dict[str, Any]) -> None:
        def supp(signed: bool) -> set[str]:
            casebook = facts(
                adverse_event=[{"term": "Colitis", "onset_date": "2023-05-01", "grade": 3}],
                dlt_assessment=[
                    {"dlt": True, "ae_entry_ids": ["adverse_event-1"], "_signed": signed}
                ],
            )
            ae = ae_rows(study, [casebook])
            return {r["QNAM"] for r in suppae_rows(study, [casebook], ae)}

        assert supp(True) == {"AETOXSCL", "AEDLT"}
        assert supp(False) == {"AETOXSCL"}

    def test_the_assessment_signed_last_decides_the_dlt_flag(self, study: dict[str, Any]) -> None:
        later = datetime(2023, 6, 20, 9, 0, tzinfo=UTC)

        def flagged(signed_first: bool, signed_last: bool) -> bool:
            casebook = facts(
                adverse_event=[{"term": "Colitis", "onset_date": "2023-05-01", "grade": 3}],
                dlt_assessment=[
                    # Recorded first but signed last: the signing order decides, as in the
                    # DLT report and the escalation.
                    {
                        "dlt": signed_last,
                        "ae_entry_ids": ["adverse_event-1"],
                        "_signed": True,
                        "_signed_at": later,
                    },
                    {"dlt": signed_first, "ae_entry_ids": ["adverse_event-1"], "_signed": True},
                ],
            )
            ae = ae_rows(study, [casebook])
            return "AEDLT" in {r["QNAM"] for r in suppae_rows(study, [casebook], ae)}

        assert flagged(signed_first=True, signed_last=False) is False  # re-assessed: no DLT
        assert flagged(signed_first=False, signed_last=True) is True

    def test_pc_not_done_and_elapsed_times(self, study: dict[str, Any]) -> None:
        sample = {
            "sample_datetime": "2023-04-25T10:40:00+08:00",
            "nominal_day": 0.0417,
            "flow_blq": False,
            "flow_not_done": True,
            "flow_not_done_reason": "Clotted",
            "qpcr_copies_per_ug": 1200,
            "qpcr_blq": False,
            "_visit": "D0",
        }
        casebook = facts(cart_infusion=[infusion()], pk_sample=[sample])
        units = schema_units({f.form: f.schema for f in FormRegistry()})
        rows = {r["PCTESTCD"]: r for r in pc_rows(study, [casebook], units)}
        assert (rows["CARTFLOW"]["PCSTAT"], rows["CARTFLOW"]["PCREASND"]) == ("NOT DONE", "Clotted")
        assert rows["CARTFLOW"].get("PCORRES") is None
        qpcr = rows["CARTQPCR"]
        assert (qpcr["PCSTRESN"], qpcr["PCELTM"], qpcr["PCTPT"], qpcr["PCLLOQ"]) == (
            1200.0,
            "PT1H",
            "DAY 0.0417",
            50.0,
        )
        assert (qpcr["VISITNUM"], qpcr["VISIT"]) == (4.0, "Day 0 (CAR-T infusion)")
        assert elapsed(28) == "P28D"
        assert elapsed(None) is None

    def test_ex_lymphodepletion_by_agent(self, study: dict[str, Any]) -> None:
        ld = {
            "start_date": "2023-04-20",
            "end_date": "2023-04-22",
            "regimen": "cy_only",
            "cyclophosphamide_mg_per_m2_day": 500,
            "_visit": "LD",
        }
        rows = ex_rows(study, [facts(cart_infusion=[infusion()], lymphodepletion=[ld])])
        assert [(r["EXSEQ"], r["EXTRT"], r["EXSTDY"], r["EXENDY"]) for r in rows] == [
            (1, "CYCLOPHOSPHAMIDE", -5, -3),
            (2, "ANTI-CEA CAR-T CELLS", 1, 1),
        ]
        assert rows[1]["EXDOSE"] == 3e6

    @pytest.mark.parametrize(
        ("reason", "by", "decod"),
        [
            ("completed", None, "COMPLETED"),
            ("withdrawal", "subject", "WITHDRAWAL BY SUBJECT"),
            ("withdrawal", "investigator", "PHYSICIAN DECISION"),
            ("lost_to_follow_up", None, "LOST TO FOLLOW-UP"),
            ("death", None, "DEATH"),
        ],
    )
    def test_ds_end_of_study(
        self, study: dict[str, Any], reason: str, by: str | None, decod: str
    ) -> None:
        end: dict[str, Any] = {"end_date": "2024-01-02", "reason": reason, "_visit": "EOS"}
        if by:
            end["withdrawal_by"] = by
        row = ds_rows(study, [facts(end_of_study=[end])])[0]
        assert (row["DSDECOD"], row["DSCAT"], row["VISIT"]) == (
            decod,
            "DISPOSITION EVENT",
            "End of study",
        )

    def test_adtte_events_and_censoring(self, study: dict[str, Any]) -> None:
        scan = {"imaging_date": "2023-07-21", "recurrence": False, "adequate": True}
        inadequate = {"imaging_date": "2023-08-21", "recurrence": False, "adequate": False}
        before = {"imaging_date": "2023-04-01", "recurrence": True}
        censored = facts("CHH-1", cart_infusion=[infusion()], imaging=[before, scan, inadequate])
        dead = facts(
            "CHH-2",
            cart_infusion=[infusion()],
            imaging=[{"imaging_date": "2023-09-01", "recurrence": True}],
            end_of_study=[{"end_date": "2023-09-01", "reason": "death"}],
        )
        nothing = facts("CHH-3", cart_infusion=[infusion()])
        untreated = facts("CHH-4")
        rows = {r["SUBJID"]: r for r in adtte_rows(study, [censored, dead, nothing, untreated])}
        assert set(rows) == {"CHH-1", "CHH-2", "CHH-3"}
        assert (rows["CHH-1"]["CNSR"], rows["CHH-1"]["ADT"]) == (1, "2023-07-21")
        assert math.isclose(rows["CHH-1"]["AVAL"], 87 / 30.4375)
        # Recurrence and death on the same day: called a recurrence.
        assert (rows["CHH-2"]["CNSR"], rows["CHH-2"]["EVNTDESC"]) == (0, "RECURRENCE (IMAGING)")
        assert (rows["CHH-3"]["AVAL"], rows["CHH-3"]["CNSDTDSC"]) == (
            0.0,
            "INFUSION (NO ASSESSMENT)",
        )

    def test_an_instant_in_utc_near_midnight_agrees_with_the_reports(
        self, study: dict[str, Any]
    ) -> None:
        # 17:00 UTC on 24 April is 01:00 on 25 April in Shanghai: day 0 is 25 April.
        infused = {
            "infusion_datetime": "2023-04-24T17:00:00Z",
            "infusion_end_datetime": "2023-04-24T17:20:00Z",
            "dose_level": "DL1",
            "cells_per_kg": 1e6,
        }
        before = {"term": "Nausea", "onset_date": "2023-04-24", "grade": 1, "ongoing": True}
        after = {"term": "Fever", "onset_date": "2023-04-25", "grade": 1, "ongoing": True}
        casebook = facts(cart_infusion=[infused], adverse_event=[before, after])
        subject = SubjectFacts(
            "CHH-S001",
            "CHH",
            None,
            None,
            tuple(
                ReportFact(e.entry_id, e.form, e.visit, 1, e.data, False, n)
                for n, e in enumerate(casebook.entries)
            ),
        )
        protocol_day = {
            ("infusion" if r["category"] == "infusion" else r["what"].split()[2]): r["study_day"]
            for r in timeline_report(subject, study).rows
        }
        assert protocol_day == {"Nausea": -1, "Fever": 0, "infusion": 0}
        assert teae_report([subject], study).rows[0]["teae_count"] == 1  # Fever, on day 0
        dm = dm_rows(study, [casebook])[0]
        assert (dm["RFSTDTC"], dm["RFXSTDTC"], dm["RFXENDTC"]) == (
            "2023-04-25T01:00:00+08:00",
            "2023-04-25T01:00:00+08:00",
            "2023-04-25T01:20:00+08:00",
        )
        (ex,) = ex_rows(study, [casebook])
        assert (ex["EXSTDTC"], ex["EXSTDY"], ex["EXENDY"]) == ("2023-04-25T01:00:00+08:00", 1, 1)
        ae = {r["AETERM"]: r["AESTDY"] for r in ae_rows(study, [casebook])}
        # SDTM day = protocol day + 1 from the infusion day on, the same day before it.
        assert ae == {"Nausea": protocol_day["Nausea"], "Fever": protocol_day["Fever"] + 1}
        (adtte,) = adtte_rows(study, [casebook])
        assert adtte["STARTDT"] == dm["RFSTDTC"][:10] == "2023-04-25"

    def test_every_dataset_has_its_variables(self, study: dict[str, Any]) -> None:
        package = sdtm_package(study, [facts(cart_infusion=[infusion()])])
        for dataset in package.datasets.values():
            names = [v.name for v in dataset.variables]
            assert len(names) == len(set(names))
            assert all(len(n) <= 8 and n.isupper() for n in names), dataset.name
            assert all(len(v.label) <= 40 for v in dataset.variables), dataset.name
            for row in dataset.rows:
                assert set(row) <= set(names), dataset.name


# SDTM files ---------------------------------------------------------------------------------


class TestSdtmFiles:
    def test_ascii_for_xport(self) -> None:
        assert ascii_text("1\u00d710^6 \u00b5L, caf\u00e9 \u2265 3") == "1x10^6 uL, cafe >= 3"
        assert ascii_text("肝转移") == "???"

    def test_csv_numbers_and_blanks(self, study: dict[str, Any]) -> None:
        package = sdtm_package(study, [facts(cart_infusion=[infusion()])])
        rows = list(csv.DictReader(io.StringIO(csv_bytes(package.datasets["ex"]).decode())))
        assert (rows[0]["EXDOSE"], rows[0]["EXSEQ"], rows[0]["EXLOT"]) == ("3000000", "1", "")

    def test_lengths_and_truncation(self, study: dict[str, Any], tmp_path: Path) -> None:
        long_term = "x" * 250
        casebook = facts(
            adverse_event=[
                {"term": "Other, specify", "term_other": long_term, "onset_date": "2023-05-01"}
            ]
        )
        package = sdtm_package(study, [casebook])
        ae = package.datasets["ae"]
        lengths = {v["name"]: v["length"] for v in variable_metadata(ae)}
        assert (lengths["AETERM"], lengths["AESEQ"], lengths["AEENDTC"]) == (200, 8, 1)
        assert truncated(ae) == ["AETERM", "AEDECOD"]
        cut = empty_cut()
        written = write_package(package, cut, tmp_path, formats=("xpt",))
        assert {p.name for p in written} == {f"{n}.xpt" for n in package.datasets} | {
            "metadata.json"
        }
        frame, meta = read_xpt(tmp_path / "ae.xpt")
        assert frame.loc[0, "AETERM"] == "x" * 200
        assert meta["file_label"] == "ledger 0 head 000000000000"
        document = orjson.loads((tmp_path / "metadata.json").read_bytes())
        assert document["xpt_file_label"] == meta["file_label"]
        assert (document["ledger"]["position"], document["ledger"]["head"]) == (0, "0" * 64)
        assert document["time_zone"] == "Asia/Shanghai"

    @pytest.mark.parametrize("position", [1, 123_456_789, 10**14, 10**20])
    def test_the_xpt_label_states_position_and_head_within_40_characters(
        self, position: int
    ) -> None:
        label = xpt_label(xpt_cut(position))
        assert len(label) <= 40
        assert label.startswith(f"ledger {position} head ")
        head = label.rsplit(" ", 1)[1]
        assert head
        assert ("ab" * 32).startswith(head)
        if position < 10**15:
            assert len(head) == 12
