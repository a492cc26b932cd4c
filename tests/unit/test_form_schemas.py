"""The study definition and form schemas under forms/: structure, key fields, fixtures.

Every instance goes through both validators the project ships (python `jsonschema` and
`jsonschema-rs`); they must agree with each other and with the expected verdict.
Key fields are the annotated-CRF contract of PROTOCOL.md "Key fields".
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from jsonschema import Draft202012Validator

Json = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
FORMS_DIR = ROOT / "forms"
FIXTURES_DIR = ROOT / "tests" / "fixtures" / "forms"
ID_BASE = "https://ecrf.invalid/forms/"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

# PROTOCOL.md "Case report forms", in protocol order.
PROTOCOL_FORMS = (
    "informed_consent",
    "eligibility",
    "demographics",
    "surgery_history",
    "ctdna_result",
    "leukapheresis",
    "lymphodepletion",
    "cart_infusion",
    "vital_signs",
    "labs",
    "adverse_event",
    "crs_assessment",
    "icans_assessment",
    "pk_sample",
    "rcl_test",
    "ada_test",
    "imaging",
    "dlt_assessment",
    "concomitant_medication",
    "end_of_study",
)
LOG_FORMS = {"adverse_event", "concomitant_medication"}
VISIT_CODES = (
    "SCR",
    "LEUK",
    "LD",
    "D0",
    "D1",
    "D2",
    "D3",
    "D4",
    "D7",
    "D10",
    "D14",
    "D21",
    "D28",
    "M2",
    "M3",
    "M6",
    "M9",
    "M12",
    "M18",
    "M24",
    "EOS",
    "UNS",
    "LOG",
)


@dataclass(frozen=True)
class Key:
    """Expected shape of one key field."""

    type: str
    format: str | None = None
    enum: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    required: bool = True
    read_only: bool = False
    items: str | None = None


DATE = Key("string", format="date")
INSTANT = Key("string", format="date-time")
BOOL = Key("boolean")
INT = Key("integer")
NUM = Key("number")
OPT_NUM = Key("number", required=False)


def codes(*values: str) -> Key:
    return Key("string", enum=values)


def int_range(lo: int, hi: int, *, required: bool = True, read_only: bool = False) -> Key:
    return Key("integer", minimum=lo, maximum=hi, required=required, read_only=read_only)


# PROTOCOL.md "Key fields (the annotated-CRF contract)". Conditional fields are not required.
KEY_FIELDS: dict[str, dict[str, Key]] = {
    "informed_consent": {"consent_date": DATE, "icf_version": Key("string")},
    "demographics": {"sex": codes("F", "M"), "age": INT, "weight_kg": NUM, "height_cm": NUM},
    "surgery_history": {"resection_date": DATE, "r0": BOOL, "liver_lesions": INT},
    "eligibility": {
        "criteria_met": BOOL,
        "r0_resection_date": DATE,
        "ctdna_positive": BOOL,
        "cea_positive": BOOL,
        "ecog": int_range(0, 4),
        "age": INT,
    },
    "ctdna_result": {
        "sample_date": DATE,
        "result": codes("detected", "not_detected"),
        "mtm_per_ml": OPT_NUM,
    },
    "cart_infusion": {
        "infusion_datetime": INSTANT,
        "dose_level": codes("DL1", "DL2", "DL3"),
        "weight_kg": NUM,
        "total_car_t_cells": NUM,
    },
    "adverse_event": {
        "term": Key("string"),
        "onset_date": DATE,
        "resolution_date": Key("string", format="date", required=False),
        "ongoing": BOOL,
        "grade": int_range(1, 5),
        "serious": BOOL,
        "relationship": codes("unrelated", "unlikely", "possible", "probable", "definite"),
    },
    "crs_assessment": {
        "assessment_date": DATE,
        "fever": BOOL,
        "max_temperature_c": NUM,
        "hypotension": codes("none", "no_vasopressor", "one_vasopressor", "multiple_vasopressors"),
        "hypoxia": codes("none", "low_flow", "high_flow", "positive_pressure"),
        "antipyretic_or_anticytokine": BOOL,
        "investigator_grade": int_range(0, 5, required=False),
        "grade": int_range(0, 5, required=False, read_only=True),
    },
    "icans_assessment": {
        "assessment_date": DATE,
        "orientation_year": BOOL,
        "orientation_month": BOOL,
        "orientation_city": BOOL,
        "orientation_hospital": BOOL,
        "follows_command": BOOL,
        "writes_sentence": BOOL,
        "counts_back": BOOL,
        "names_objects": int_range(0, 3),
        "consciousness": codes(
            "alert",
            "awakens_spontaneously",
            "awakens_to_voice",
            "awakens_to_touch",
            "unarousable",
        ),
        "seizure": codes("none", "rapidly_resolving", "prolonged_or_repetitive"),
        "motor_weakness": BOOL,
        "cerebral_edema": codes("none", "focal", "diffuse"),
        "investigator_grade": int_range(0, 4, required=False),
        "ice_score": int_range(0, 10, required=False, read_only=True),
        "grade": int_range(0, 4, required=False, read_only=True),
    },
    "pk_sample": {
        "sample_datetime": INSTANT,
        "nominal_day": NUM,
        "flow_cells_per_ul": OPT_NUM,
        "flow_blq": BOOL,
        "qpcr_copies_per_ug": OPT_NUM,
        "qpcr_blq": BOOL,
    },
    "rcl_test": {"sample_date": DATE, "result": codes("positive", "negative")},
    "ada_test": {
        "sample_date": DATE,
        "result": codes("positive", "negative"),
        "titre": OPT_NUM,
    },
    "imaging": {
        "imaging_date": DATE,
        "modality": codes("CT", "MRI", "PET-CT"),
        "recurrence": BOOL,
        "sites": Key("array", required=False),
    },
    "dlt_assessment": {
        "evaluable": BOOL,
        "dlt": BOOL,
        "reason_not_evaluable": Key("string", required=False),
        "ae_entry_ids": Key("array", items="string"),
    },
    "end_of_study": {
        "end_date": DATE,
        "reason": codes("completed", "withdrawal", "death", "lost_to_follow_up", "other"),
        "death_date": Key("string", format="date", required=False),
    },
}

READ_ONLY_FIELDS = {
    "crs_assessment": {"grade"},
    "icans_assessment": {"ice_score", "grade"},
    "cart_infusion": {"cells_per_kg"},
}

AE_TERMS_REQUIRED = {
    "Cytokine release syndrome",
    "Immune effector cell-associated neurotoxicity syndrome",
    "Colitis",
    "Diarrhea",
    "Neutrophil count decreased",
    "Platelet count decreased",
    "Anemia",
    "Fever",
    "Hypotension",
    "Hypoxia",
    "Alanine aminotransferase increased",
    "Aspartate aminotransferase increased",
    "Blood bilirubin increased",
    "Febrile neutropenia",
    "Encephalopathy",
    "Seizure",
}

# ---------------------------------------------------------------------------------------
# Loading and validating


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def versions_on_disk(form: str) -> list[int]:
    """The released versions of a form: the numbers of its ``v<N>.json`` files."""
    found = (re.fullmatch(r"v([1-9][0-9]*)\.json", p.name) for p in (FORMS_DIR / form).iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def current_version(form: str) -> int:
    """The version new entries get (the study's ``current_version``)."""
    return int(study()["forms"][form]["current_version"])


@cache
def schema(form: str, version: int | None = None) -> Json:
    """A form's schema: the given version, else the study's current one."""
    number = version if version is not None else current_version(form)
    result: Json = load_json(FORMS_DIR / form / f"v{number}.json")
    return result


@cache
def study() -> Json:
    result: Json = load_json(FORMS_DIR / "study.json")
    return result


@cache
def study_schema() -> Json:
    result: Json = load_json(FORMS_DIR / "study.schema.json")
    return result


@cache
def py_validator(form: str, version: int | None = None) -> Draft202012Validator:
    doc = study_schema() if form == "study" else schema(form, version)
    return Draft202012Validator(doc, format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def rs_validator(form: str, version: int | None = None) -> Any:
    doc = study_schema() if form == "study" else schema(form, version)
    return jsonschema_rs.validator_for(doc, validate_formats=True)


def check_verdict(form: str, instance: Any, *, expected: bool, version: int | None = None) -> None:
    """Both validators agree with `expected`; the message lists python jsonschema's errors."""
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in py_validator(form, version).iter_errors(instance)
    ]
    py_valid = not errors
    rs_valid = bool(rs_validator(form, version).is_valid(instance))
    assert py_valid == rs_valid, (
        f"validators disagree: jsonschema={py_valid} jsonschema-rs={rs_valid}: {errors}"
    )
    assert py_valid == expected, f"expected valid={expected}; errors: {errors}"


def prop(form: str, field: str, version: int | None = None) -> Json:
    """The property's schema with a local `$ref` merged in (sibling keywords win)."""
    node: Json = schema(form, version)["properties"][field]
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/$defs/"), ref
    return {**schema(form, version)["$defs"][ref.removeprefix("#/$defs/")], **node}


def walk_properties(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, property name) in nested `properties` of a schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    yield path, name
                    yield from walk_properties(sub, f"{path}/{name}")
            elif key not in ("examples", "const", "enum", "default"):
                yield from walk_properties(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from walk_properties(item, path)


def date_fields(form: str, version: int | None = None) -> dict[str, str]:
    """Top-level properties with a date or date-time format, mapped to that format."""
    return {
        name: sub["format"]
        for name, sub in schema(form, version)["properties"].items()
        if sub.get("format") in ("date", "date-time")
    }


# Every released schema file, as (form, version): each goes through every check below.
SCHEMA_FILES = [(form, version) for form in PROTOCOL_FORMS for version in versions_on_disk(form)]
SCHEMA_IDS = [f"{form}/v{version}" for form, version in SCHEMA_FILES]
# Versions released after v1, and the one field each adds (a version only ever adds).
LATER_VERSIONS = {("adverse_event", 2): {"action_taken"}}
# A released version is never edited: its bytes are pinned once a later version exists.
RELEASED_SHA256 = {
    ("adverse_event", 1): "366f0a82588842cb3690f31f75e3d4505d950ed8dacc46df3668b982b1e756a7",
}


# ---------------------------------------------------------------------------------------
# Every schema is a well-formed JSON Schema 2020-12 document


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_form_schema_is_valid_2020_12(form: str, version: int) -> None:
    Draft202012Validator.check_schema(schema(form, version))
    assert jsonschema_rs.meta.is_valid(schema(form, version))


def test_study_schema_is_valid_2020_12() -> None:
    Draft202012Validator.check_schema(study_schema())
    assert jsonschema_rs.meta.is_valid(study_schema())
    assert study_schema()["$schema"] == DRAFT_2020_12
    assert study_schema()["$id"] == ID_BASE + "study.schema.json"


def test_forms_directory_holds_exactly_the_protocol_forms() -> None:
    on_disk = {p.name for p in FORMS_DIR.iterdir() if p.is_dir()}
    assert on_disk == set(PROTOCOL_FORMS)
    for form in PROTOCOL_FORMS:
        files = sorted(p.name for p in (FORMS_DIR / form).iterdir())
        later = sorted(v for f, v in LATER_VERSIONS if f == form)
        # Versions run v1, v2, ... without gaps; nothing else lives beside them.
        assert files == sorted(f"v{v}.json" for v in [1, *later]), form
        assert current_version(form) == max(versions_on_disk(form)), form


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_form_schema_header(form: str, version: int) -> None:
    doc = schema(form, version)
    assert doc["$schema"] == DRAFT_2020_12
    assert doc["$id"] == f"{ID_BASE}{form}/v{version}.json"
    assert doc["type"] == "object"
    assert doc["additionalProperties"] is False
    assert doc["title"].strip()
    assert doc["description"].strip()
    assert set(doc["required"]) <= set(doc["properties"])
    assert isinstance(doc["examples"], list)
    assert doc["examples"]


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_released_versions_are_never_edited(form: str, version: int) -> None:
    pinned = RELEASED_SHA256.get((form, version))
    if pinned is None:
        assert (form, version + 1) not in set(SCHEMA_FILES), "pin a superseded version"
        return
    digest = hashlib.sha256((FORMS_DIR / form / f"v{version}.json").read_bytes()).hexdigest()
    assert digest == pinned


@pytest.mark.parametrize(("form", "version"), sorted(LATER_VERSIONS))
def test_a_later_version_is_the_previous_one_plus_optional_fields(form: str, version: int) -> None:
    before, after = schema(form, version - 1), schema(form, version)
    added = LATER_VERSIONS[(form, version)]
    assert set(after["properties"]) - set(before["properties"]) == added
    assert {k: v for k, v in after["properties"].items() if k not in added} == before["properties"]
    assert not added & set(after["required"])
    for keyword in ("required", "allOf", "$defs", "type", "additionalProperties", "title"):
        assert after.get(keyword) == before.get(keyword), keyword
    for name in added:
        assert prop(form, name, version)["description"].strip()
    # Every entry valid under the previous version stays valid: migration needs no mapping.
    for example in before["examples"]:
        check_verdict(form, example, expected=True, version=version)


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_form_schema_refs_are_local(form: str, version: int) -> None:
    """No $ref may need the network: the .invalid host never resolves."""
    text = (FORMS_DIR / form / f"v{version}.json").read_text(encoding="utf-8")
    refs = re.findall(r'"\$ref":\s*"([^"]*)"', text)
    assert all(ref.startswith("#/") for ref in refs), refs


JSON_FILES = sorted(FORMS_DIR.glob("**/*.json")) + sorted(FIXTURES_DIR.glob("*.json"))


@pytest.mark.parametrize(
    "path", JSON_FILES, ids=[p.relative_to(ROOT).as_posix() for p in JSON_FILES]
)
def test_json_files_are_two_space_utf8(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_property_names_are_snake_case(form: str, version: int) -> None:
    bad = [
        f"{path}/{name}"
        for path, name in walk_properties(schema(form, version))
        if not SNAKE_CASE.match(name)
    ]
    assert not bad


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_date_and_instant_fields_carry_formats(form: str, version: int) -> None:
    for name in schema(form, version)["properties"]:
        sub = prop(form, name, version)
        if name.endswith("_date"):
            assert sub.get("format") == "date", name
        if name.endswith("_datetime"):
            assert sub.get("format") == "date-time", name


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_numeric_fields_state_their_unit(form: str, version: int) -> None:
    for name in schema(form, version)["properties"]:
        sub = prop(form, name, version)
        if sub.get("type") in ("number", "integer"):
            assert sub.get("x-unit"), f"{name} has no x-unit"
            assert "minimum" in sub or "exclusiveMinimum" in sub, f"{name} has no lower limit"
            assert "maximum" in sub or sub.get("readOnly"), f"{name} has no upper limit"


# ---------------------------------------------------------------------------------------
# Key fields (PROTOCOL.md)


# Every released version carries the key fields: clients may read any entry's version.
KEY_CASES = [
    (form, version, field, key)
    for form, fields in KEY_FIELDS.items()
    for version in versions_on_disk(form)
    for field, key in fields.items()
]


@pytest.mark.parametrize(
    ("form", "version", "field", "key"),
    KEY_CASES,
    ids=[f"{f}/v{v}.{n}" for f, v, n, _ in KEY_CASES],
)
def test_key_field(form: str, version: int, field: str, key: Key) -> None:
    assert field in schema(form, version)["properties"], f"{form} lacks key field {field}"
    sub = prop(form, field, version)
    assert sub.get("type") == key.type
    assert sub.get("format") == key.format
    if key.enum is not None:
        assert tuple(sub["enum"]) == key.enum
    if key.minimum is not None:
        assert sub["minimum"] == key.minimum
    if key.maximum is not None:
        assert sub["maximum"] == key.maximum
    if key.items is not None:
        assert sub["items"]["type"] == key.items
    assert (field in schema(form, version)["required"]) == key.required
    assert bool(sub.get("readOnly")) == key.read_only


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_read_only_fields_are_the_derived_ones(form: str, version: int) -> None:
    doc = schema(form, version)
    read_only = {name for name in doc["properties"] if prop(form, name, version).get("readOnly")}
    assert read_only == READ_ONLY_FIELDS.get(form, set())
    assert not read_only & set(doc["required"])
    for example in doc["examples"]:
        assert not read_only & set(example), "examples are client submissions"


def test_adverse_event_terms_are_ctcae_with_other_specify() -> None:
    terms = prop("adverse_event", "term")["enum"]
    assert len(terms) >= 40
    assert len(set(terms)) == len(terms)
    assert set(terms) >= AE_TERMS_REQUIRED
    assert terms[-1] == "Other, specify"


def test_adverse_event_action_taken_uses_cdisc_aeacn_codes() -> None:
    # CDISC controlled terminology, codelist C66767 "Action Taken with Study Treatment":
    # the codes that apply to one infusion, snake_case here, each decoded in the description.
    action = prop("adverse_event", "action_taken", 2)
    assert action["enum"] == [
        "not_applicable",
        "dose_not_changed",
        "dose_rate_reduced",
        "drug_interrupted",
        "drug_withdrawn",
        "unknown",
    ]
    for code in action["enum"]:
        assert code.replace("_", " ").upper() in action["description"], code
    assert "AEACN" in action["description"]
    assert "action_taken" not in schema("adverse_event", 1)["properties"]


def test_pk_lloq_matches_study_settings() -> None:
    methods = study()["settings"]["pk"]["methods"]
    assert prop("pk_sample", "flow_lloq_cells_per_ul")["default"] == methods["flow"]["lloq"]
    assert prop("pk_sample", "qpcr_lloq_copies_per_ug")["default"] == methods["qpcr"]["lloq"]
    for method in methods.values():
        assert method["value_field"] in schema("pk_sample")["properties"]
        assert prop("pk_sample", method["blq_field"])["type"] == "boolean"


def test_eligibility_carries_individual_criteria() -> None:
    props = schema("eligibility")["properties"]
    inclusion = [name for name in props if name.startswith("inc_")]
    exclusion = [name for name in props if name.startswith("exc_")]
    assert len(inclusion) >= 8
    assert len(exclusion) >= 8
    assert all(props[name]["type"] == "boolean" for name in inclusion + exclusion)


# ---------------------------------------------------------------------------------------
# study.json


STUDY_SETTINGS: Json = load_json(FORMS_DIR / "study.json")["settings"]


def test_study_validates_against_its_schema() -> None:
    check_verdict("study", study(), expected=True)


def visit_d0(**changes: Any) -> Json:
    return {
        "code": "D0",
        "label": "Day 0",
        "anchor": "infusion",
        "target_day": 0,
        "window_before": 0,
        "window_after": 0,
        "repeatable": False,
        "forms": ["vital_signs"],
        **changes,
    }


@pytest.mark.parametrize(
    ("description", "patch"),
    [
        ("unknown top-level key", {"sponsor_name": "x"}),
        ("dose level without dose", {"dose_levels": [{"dose_level": "DL1", "number": 1}]}),
        ("form id not snake_case", {"visits": [visit_d0(forms=["Vital-Signs"])]}),
        ("anchored visit without target day", {"visits": [visit_d0(target_day=None)]}),
        ("unanchored visit with a window", {"visits": [visit_d0(anchor=None, target_day=None)]}),
        ("negative window", {"visits": [visit_d0(window_before=-1)]}),
        ("unknown anchor", {"visits": [visit_d0(anchor="randomisation")]}),
        ("visit without forms", {"visits": [visit_d0(forms=[])]}),
        ("tolerance above 1", {"settings": {**STUDY_SETTINGS, "cell_dose_tolerance": 20}}),
        (
            "missing signature meaning",
            {"signature_meanings": {"authorship": {"label": "A", "statement": "S"}}},
        ),
    ],
)
def test_study_schema_rejects(description: str, patch: Json) -> None:
    check_verdict("study", {**study(), **patch}, expected=False)


def test_study_identity_and_sites() -> None:
    assert study()["study_id"] == "CEA-CART-CRLM-01"
    assert study()["sites"] == [
        {"site_id": "CHH", "name": "Department of Colorectal Surgery, Changhai Hospital, Shanghai"}
    ]


def test_dose_levels() -> None:
    levels = [(d["dose_level"], d["number"], d["dose_per_kg"]) for d in study()["dose_levels"]]
    assert levels == [("DL1", 1, 1_000_000), ("DL2", 2, 3_000_000), ("DL3", 3, 6_000_000)]
    assert prop("cart_infusion", "dose_level")["enum"] == [d[0] for d in levels]


# The chosen windows: (target day, days allowed before, days allowed after). SCR counts from
# consent, the rest from the infusion (day 0); months are 30-day months up to M9, then
# 365 days a year. None: no window (EOS, UNS, LOG).
WINDOWS: dict[str, tuple[int | None, int | None, int | None]] = {
    "SCR": (0, 0, 28),
    "LEUK": (-21, 14, 7),
    "LD": (-5, 2, 1),
    "D0": (0, 0, 0),
    "D1": (1, 0, 0),
    "D2": (2, 0, 0),
    "D3": (3, 0, 0),
    "D4": (4, 0, 0),
    "D7": (7, 1, 1),
    "D10": (10, 1, 1),
    "D14": (14, 2, 2),
    "D21": (21, 2, 2),
    "D28": (28, 2, 3),
    "M2": (60, 7, 7),
    "M3": (90, 7, 7),
    "M6": (180, 14, 14),
    "M9": (270, 14, 14),
    "M12": (365, 30, 30),
    "M18": (545, 30, 30),
    "M24": (730, 30, 30),
    "EOS": (None, None, None),
    "UNS": (None, None, None),
    "LOG": (None, None, None),
}


def test_visit_schedule() -> None:
    visits = study()["visits"]
    assert tuple(v["code"] for v in visits) == VISIT_CODES
    for v in visits:
        expected_anchor = {"SCR": "consent", "EOS": None, "UNS": None, "LOG": None}.get(
            v["code"], "infusion"
        )
        assert v["anchor"] == expected_anchor, v["code"]
        assert v["repeatable"] == (v["code"] in ("UNS", "LOG")), v["code"]
    windows = {v["code"]: (v["target_day"], v["window_before"], v["window_after"]) for v in visits}
    assert windows == WINDOWS


def test_infusion_windows_are_ordered_and_do_not_overlap() -> None:
    windows = [
        (v["code"], v["target_day"] - v["window_before"], v["target_day"] + v["window_after"])
        for v in study()["visits"]
        if v["anchor"] == "infusion"
    ]
    for (code_a, _, end_a), (code_b, start_b, _) in itertools.pairwise(windows):
        assert end_a < start_b, f"{code_a} overlaps {code_b}"
    assert all(start <= end for _, start, end in windows)


def test_visits_reference_existing_forms_and_every_form_is_used() -> None:
    catalogue = study()["forms"]
    assert list(catalogue) == list(PROTOCOL_FORMS)
    used: set[str] = set()
    for v in study()["visits"]:
        assert set(v["forms"]) <= set(catalogue), v["code"]
        used |= set(v["forms"])
    assert used == set(PROTOCOL_FORMS)


def test_log_forms_live_only_in_log_visit() -> None:
    catalogue = study()["forms"]
    assert {name for name, entry in catalogue.items() if entry["log"]} == LOG_FORMS
    for v in study()["visits"]:
        if v["code"] == "LOG":
            assert set(v["forms"]) == LOG_FORMS
        else:
            assert not LOG_FORMS & set(v["forms"]), v["code"]


@pytest.mark.parametrize("form", PROTOCOL_FORMS)
def test_form_catalogue_entry(form: str) -> None:
    entry = study()["forms"][form]
    assert entry["title"] == schema(form)["title"]
    assert (FORMS_DIR / form / f"v{entry['current_version']}.json").is_file()
    assert entry["date_field"] in date_fields(form)
    if entry["log"]:
        assert entry["window_check"] is False


def test_catalogue_date_fields_of_the_brief() -> None:
    forms = study()["forms"]
    assert forms["adverse_event"]["date_field"] == "onset_date"
    assert forms["cart_infusion"]["date_field"] == "infusion_datetime"
    assert forms["pk_sample"]["date_field"] == "sample_datetime"


def test_anchors_point_at_date_fields() -> None:
    anchors = study()["anchors"]
    for ref in anchors.values():
        assert ref["field"] in date_fields(ref["form"])
    assert anchors["infusion"] == {"form": "cart_infusion", "field": "infusion_datetime"}
    assert anchors["resection"] == {"form": "surgery_history", "field": "resection_date"}
    assert anchors["consent"] == {"form": "informed_consent", "field": "consent_date"}


def test_settings() -> None:
    settings = study()["settings"]
    assert settings["escalation"] == {
        "allow_deescalation": True,
        "mtd_requires": 6,
        "dlt_window_days": 28,
        "max_subjects": 18,
        "starting_dose_level": "DL1",
    }
    assert settings["pk"]["method"] == "linear-up/log-down"
    assert settings["pk"]["interval_days"] == [0, 28]
    assert settings["rfs"]["origin"] == "infusion"
    assert settings["rfs"]["horizon_months"] == 24
    assert settings["rfs"]["days_per_month"] == 30.4375
    assert settings["mrd"] == {"origin": "resection", "horizon_months": 24}
    assert settings["safety"] == {"teae_window_days": [0, 28]}
    assert settings["cell_dose_tolerance"] == 0.2
    assert settings["escalation"]["dlt_window_days"] == settings["safety"]["teae_window_days"][1]


def test_soft_check_date_order_references_date_fields() -> None:
    rules = study()["settings"]["soft_checks"]["date_order"]
    pairs = {
        ((r["earlier"]["form"], r["earlier"]["field"]), (r["later"]["form"], r["later"]["field"]))
        for r in rules
    }
    for rule in rules:
        for side in ("earlier", "later"):
            ref = rule[side]
            assert ref["field"] in date_fields(ref["form"]), ref
        assert rule["message"].strip()
    chain = [
        ("surgery_history", "resection_date"),
        ("informed_consent", "consent_date"),
        ("cart_infusion", "infusion_datetime"),
        ("adverse_event", "onset_date"),
        ("adverse_event", "resolution_date"),
    ]
    for earlier, later in itertools.pairwise(chain):
        assert (earlier, later) in pairs


def test_soft_check_other_rules_reference_existing_fields() -> None:
    checks = study()["settings"]["soft_checks"]
    for rule in checks["equal"]:
        kinds = {prop(r["form"], r["field"]).get("type") for r in rule["fields"]}
        assert len(kinds) == 1, rule
    for rule in checks["plausible_ranges"]:
        sub = prop(rule["form"], rule["field"])
        assert sub["type"] in ("number", "integer")
        if rule["minimum"] is not None:
            assert rule["minimum"] >= sub.get(
                "minimum", sub.get("exclusiveMinimum", rule["minimum"])
            )
        if rule["maximum"] is not None:
            assert rule["maximum"] <= sub["maximum"]
        if "minimum_field" in rule:
            assert prop(rule["form"], rule["minimum_field"])["type"] == "number"
            assert prop(rule["form"], rule["minimum_field"])["x-unit"] == sub["x-unit"]
    for rule in checks["grade_mismatch"]:
        assert prop(rule["form"], rule["derived"]).get("readOnly") is True
        assert rule["entered"] in schema(rule["form"])["properties"]


def test_signature_meanings() -> None:
    meanings = study()["signature_meanings"]
    assert set(meanings) == {"authorship", "review", "approval"}
    assert all(m["statement"].strip() for m in meanings.values())


# ---------------------------------------------------------------------------------------
# Instances: examples, fixtures and generated invalid variants through both validators


EXAMPLE_CASES = [
    (form, version, i)
    for form, version in SCHEMA_FILES
    for i in range(len(schema(form, version)["examples"]))
]


@pytest.mark.parametrize(
    ("form", "version", "index"),
    EXAMPLE_CASES,
    ids=[f"{f}/v{v}-{i}" for f, v, i in EXAMPLE_CASES],
)
def test_example_is_valid(form: str, version: int, index: int) -> None:
    check_verdict(form, schema(form, version)["examples"][index], expected=True, version=version)


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_examples_cover_every_client_field(form: str, version: int) -> None:
    doc = schema(form, version)
    writable = {n for n in doc["properties"] if not prop(form, n, version).get("readOnly")}
    seen = {name for example in doc["examples"] for name in example}
    assert writable - seen == set()


def stored(form: str) -> Json:
    """The first example as the server stores it: with its derived values."""
    derived: dict[str, Json] = {
        "crs_assessment": {"grade": 2},
        "icans_assessment": {"ice_score": 7, "grade": 1},
        "cart_infusion": {"cells_per_kg": 1_000_000},
    }
    return {**schema(form)["examples"][0], **derived.get(form, {})}


@pytest.mark.parametrize("form", sorted(READ_ONLY_FIELDS))
def test_stored_data_with_derived_values_is_valid(form: str) -> None:
    check_verdict(form, stored(form), expected=True)


def fixture_file(form: str, version: int) -> Path:
    """``<form>.json`` holds the cases of v1, ``<form>.v<N>.json`` those of a later version."""
    return FIXTURES_DIR / (f"{form}.json" if version == 1 else f"{form}.v{version}.json")


def load_fixtures(form: str, version: int = 1) -> Json:
    result: Json = load_json(fixture_file(form, version))
    return result


def apply(form: str, case: Json, version: int = 1) -> Json:
    instance: Json = copy.deepcopy(schema(form, version)["examples"][case.get("base", 0)])
    instance.update(copy.deepcopy(case.get("set", {})))
    for name in case.get("unset", []):
        assert name in instance, f"fixture unsets absent field {name}: {case['description']}"
        del instance[name]
    return instance


def fixture_cases(kind: str) -> list[tuple[str, int, Json]]:
    return [
        (form, version, case)
        for form, version in SCHEMA_FILES
        for case in load_fixtures(form, version)[kind]
    ]


def fixture_ids(cases: list[tuple[str, int, Json]]) -> list[str]:
    return [f"{f}/v{v}-{c['description']}" for f, v, c in cases]


VALID_FIXTURES = fixture_cases("valid")
INVALID_FIXTURES = fixture_cases("invalid")


@pytest.mark.parametrize(
    ("form", "version", "case"), VALID_FIXTURES, ids=fixture_ids(VALID_FIXTURES)
)
def test_valid_fixture(form: str, version: int, case: Json) -> None:
    check_verdict(form, apply(form, case, version), expected=True, version=version)


@pytest.mark.parametrize(
    ("form", "version", "case"), INVALID_FIXTURES, ids=fixture_ids(INVALID_FIXTURES)
)
def test_invalid_fixture(form: str, version: int, case: Json) -> None:
    check_verdict(form, apply(form, case, version), expected=False, version=version)


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_every_form_has_fixtures(form: str, version: int) -> None:
    fixtures = load_fixtures(form, version)
    assert set(fixtures) == {"valid", "invalid"}
    assert fixtures["valid"]
    assert fixtures["invalid"]


def test_no_fixture_file_without_its_schema() -> None:
    expected = {fixture_file(form, version).name for form, version in SCHEMA_FILES}
    assert {p.name for p in FIXTURES_DIR.glob("*.json")} == expected


WRONG_TYPE: dict[str, Any] = {
    "string": 12345,
    "boolean": "true",
    "integer": "1",
    "number": "12.5",
    "array": "a",
    "object": ["a"],
}
# Includes inputs on which the two libraries disagree without the schemas' patterns
# (RFC 3339 leap second, year 0000, lower-case t/z): the patterns make both reject them.
BAD_DATES: dict[str, tuple[str, ...]] = {
    "date": (
        "2024-02-30",
        "2023-02-29",
        "2024-1-05",
        "05/01/2024",
        "2024-01-05T00:00:00Z",
        "0000-01-01",
        "\uff12\uff10\uff12\uff14-01-05",
    ),
    "date-time": (
        "2024-02-30T10:00:00+08:00",
        "2024-03-01T10:00:00",
        "2024-03-01",
        "2024-03-01T25:00:00Z",
        "2024-03-01 10:00:00+08:00",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "2024-03-01t10:00:00z",
    ),
}
GOOD_DATES: dict[str, tuple[str, ...]] = {
    "date": ("2024-02-29", "1999-12-31", "2099-01-01"),
    "date-time": (
        "2024-02-29T23:59:59+08:00",
        "2024-03-01T02:00:00Z",
        "2024-03-01T10:00:00.125-05:00",
        "2024-03-01T10:00:00.123456789+00:00",
    ),
}


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_date_fields_share_one_canonical_pattern(form: str, version: int) -> None:
    dates = date_fields(form, version)
    for fmt in ("date", "date-time"):
        names = [name for name, f in dates.items() if f == fmt]
        assert len({prop(form, name, version).get("pattern") for name in names}) <= 1, fmt
    for name in dates:
        assert "pattern" in prop(form, name, version), name


DATE_EDGE_CASES = [
    (form, version, name, value)
    for form, version in SCHEMA_FILES
    for name, fmt in date_fields(form, version).items()
    if name in schema(form, version)["examples"][0]
    for value in GOOD_DATES[fmt]
]


@pytest.mark.parametrize(
    ("form", "version", "name", "value"),
    DATE_EDGE_CASES,
    ids=[f"{f}/v{v}-{n}-{value}" for f, v, n, value in DATE_EDGE_CASES],
)
def test_edge_dates_are_accepted(form: str, version: int, name: str, value: str) -> None:
    instance = {**schema(form, version)["examples"][0], name: value}
    check_verdict(form, instance, expected=True, version=version)


def generated_invalid(form: str, version: int) -> Iterator[tuple[str, Any]]:
    """Mutations of the first example, each of which must be rejected."""
    doc = schema(form, version)
    base = doc["examples"][0]
    for name in doc["required"]:
        yield f"missing {name}", {k: v for k, v in base.items() if k != name}
    yield "unknown property", {**base, "unknown_field": 1}
    yield "not an object", [base]
    for name in base:
        sub = prop(form, name, version)
        yield f"{name} wrong type", {**base, name: WRONG_TYPE[sub["type"]]}
        if "enum" in sub:
            yield f"{name} unknown code", {**base, name: "__not_a_code__"}
        for bad in BAD_DATES.get(sub.get("format", ""), ()):
            yield f"{name} bad {sub['format']} {bad}", {**base, name: bad}
        if "minimum" in sub:
            yield f"{name} below minimum", {**base, name: sub["minimum"] - 1}
        if "exclusiveMinimum" in sub:
            yield f"{name} at exclusive minimum", {**base, name: sub["exclusiveMinimum"]}
        if "maximum" in sub:
            yield f"{name} above maximum", {**base, name: sub["maximum"] + 1}
        if sub.get("type") == "string" and "maxLength" in sub:
            yield f"{name} too long", {**base, name: "x" * (sub["maxLength"] + 1)}
        if sub.get("type") == "integer":
            yield f"{name} fractional", {**base, name: 1.5}


GENERATED = [
    (form, version, label, instance)
    for form, version in SCHEMA_FILES
    for label, instance in generated_invalid(form, version)
]


@pytest.mark.parametrize(
    ("form", "version", "label", "instance"),
    GENERATED,
    ids=[f"{f}/v{v}-{label}" for f, v, label, _ in GENERATED],
)
def test_generated_invalid(form: str, version: int, label: str, instance: Any) -> None:
    check_verdict(form, instance, expected=False, version=version)


@pytest.mark.parametrize(("form", "version"), SCHEMA_FILES, ids=SCHEMA_IDS)
def test_generated_invalid_covers_every_kind(form: str, version: int) -> None:
    labels = [label for f, v, label, _ in GENERATED if (f, v) == (form, version)]
    for kind in ("missing ", "unknown property", "wrong type", "bad date"):
        assert any(kind in label for label in labels), f"{form} v{version}: no '{kind}' case"
