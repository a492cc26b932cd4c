"""SDTM datasets from casebook facts: pure mapping code (facts in, rows out; no I/O).

Domains: DM, EX, AE with SUPPAE, PC, PP, IS, LB, DS, and ADTTE (RFS, ADaM style).
Decisions (docs/exports.md has the full mapping table):

- Date-times are written in the study's time zone (``timezone`` in study.json): an
  instant entered with another offset (``Z``) is converted to local time with the local
  offset (ISO 8601), so the date as written is the local calendar day, the day the reports
  and ADTTE count with. Dates, and date-times without an offset (study time by rule), are
  written as entered.
- Study day (SDTM, no day 0): ``--DY = date - ref + 1`` on or after the reference start
  date and ``date - ref`` before it, with the reference RFSTDTC = the CAR-T infusion; the
  protocol's day 0 (infusion day) is SDTM day 1, so --DY = protocol day + 1 on and after
  it. Days use the date portion of the --DTC values as written, so anyone can recompute
  them from the dataset.
- USUBJID = STUDYID-SUBJID; --SPID = the eCRF entry id, tracing every record to its entry.
- ctDNA (MRD) and RCL results go to LB (standard domain, categorised by LBCAT) together
  with the routine laboratory panel, rather than a custom domain: both are laboratory
  tests on a blood specimen with a qualitative result and an optional quantity.
- ADA goes to IS; CAR-T levels to PC, their NCA parameters (`ecrf.clinical.nca`) to PP.
- SUPPAE carries the grading scale (ASTCT 2019 for CRS and ICANS, CTCAE v5.0 otherwise),
  the DLT flag (AEs named by a *signed* dlt_assessment with dlt true: the signed
  assessment is what counts, PROTOCOL.md), relationship to lymphodepletion and AESI.
- ADTTE: one RFS row per treated subject, the same rule as the RFS report (first imaging
  recurrence or death on/after the infusion day; else censored at the last adequate
  imaging without recurrence; months = days / 30.4375), dates as ISO text.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any

from ecrf.clinical.nca import LINEAR_UP_LOG_DOWN, Sample, nca, profile_points
from ecrf.clinical.values import number, parse_instant, study_zone
from ecrf.export.facts import Casebook, EntryFact

CHAR = "Char"
NUM = "Num"


@dataclass(frozen=True)
class Variable:
    """One SDTM variable: name (<= 8), label (<= 40), type (Char or Num)."""

    name: str
    label: str
    type: str = CHAR


@dataclass(frozen=True)
class Dataset:
    """One dataset: its variables in order and its rows (dicts keyed by variable name)."""

    name: str
    label: str
    variables: tuple[Variable, ...]
    rows: list[dict[str, Any]]

    def records(self) -> list[list[Any]]:
        """The rows as lists in variable order (absent values as None)."""
        return [[row.get(v.name) for v in self.variables] for row in self.rows]


@dataclass(frozen=True)
class SdtmPackage:
    """Every dataset of one export, keyed by lower-case name, and the zone its times are in."""

    datasets: dict[str, Dataset] = field(default_factory=dict)
    time_zone: str = "UTC"

    def get(self, name: str) -> Dataset | None:
        """A dataset by (case-insensitive) name."""
        return self.datasets.get(name.lower())


def _vars(*specs: tuple[str, str] | tuple[str, str, str]) -> tuple[Variable, ...]:
    return tuple(Variable(*spec) for spec in specs)


_ID = (
    ("STUDYID", "Study Identifier"),
    ("DOMAIN", "Domain Abbreviation"),
    ("USUBJID", "Unique Subject Identifier"),
)
_VISIT = (("VISITNUM", "Visit Number", NUM), ("VISIT", "Visit Name"))

DM_VARIABLES = _vars(
    *_ID,
    ("SUBJID", "Subject Identifier for the Study"),
    ("RFSTDTC", "Subject Reference Start Date/Time"),
    ("RFENDTC", "Subject Reference End Date/Time"),
    ("RFXSTDTC", "Date/Time of First Study Treatment"),
    ("RFXENDTC", "Date/Time of Last Study Treatment"),
    ("RFICDTC", "Date/Time of Informed Consent"),
    ("RFPENDTC", "Date/Time of End of Participation"),
    ("DTHDTC", "Date/Time of Death"),
    ("DTHFL", "Subject Death Flag"),
    ("SITEID", "Study Site Identifier"),
    ("AGE", "Age", NUM),
    ("AGEU", "Age Units"),
    ("SEX", "Sex"),
    ("RACE", "Race"),
    ("ETHNIC", "Ethnicity"),
    ("ARMCD", "Planned Arm Code"),
    ("ARM", "Description of Planned Arm"),
    ("ACTARMCD", "Actual Arm Code"),
    ("ACTARM", "Description of Actual Arm"),
    ("COUNTRY", "Country"),
    ("DMDTC", "Date/Time of Collection"),
    ("DMDY", "Study Day of Collection", NUM),
)
EX_VARIABLES = _vars(
    *_ID,
    ("EXSEQ", "Sequence Number", NUM),
    ("EXSPID", "Sponsor-Defined Identifier"),
    ("EXTRT", "Name of Treatment"),
    ("EXCAT", "Category of Treatment"),
    ("EXDOSE", "Dose", NUM),
    ("EXDOSU", "Dose Units"),
    ("EXDOSFRM", "Dose Form"),
    ("EXDOSFRQ", "Dosing Frequency per Interval"),
    ("EXROUTE", "Route of Administration"),
    ("EXLOT", "Lot Number"),
    ("EXADJ", "Reason for Dose Adjustment"),
    *_VISIT,
    ("EXSTDTC", "Start Date/Time of Treatment"),
    ("EXENDTC", "End Date/Time of Treatment"),
    ("EXSTDY", "Study Day of Start of Treatment", NUM),
    ("EXENDY", "Study Day of End of Treatment", NUM),
)
AE_VARIABLES = _vars(
    *_ID,
    ("AESEQ", "Sequence Number", NUM),
    ("AESPID", "Sponsor-Defined Identifier"),
    ("AETERM", "Reported Term for the Adverse Event"),
    ("AEDECOD", "Dictionary-Derived Term"),
    ("AESER", "Serious Event"),
    ("AEACN", "Action Taken with Study Treatment"),
    ("AEREL", "Causality"),
    ("AEOUT", "Outcome of Adverse Event"),
    ("AECONTRT", "Concomitant or Additional Trtmnt Given"),
    ("AETOXGR", "Standard Toxicity Grade"),
    ("AESDTH", "Results in Death"),
    ("AESLIFE", "Is Life Threatening"),
    ("AESHOSP", "Requires or Prolongs Hospitalization"),
    ("AESDISAB", "Persist or Signif Disability/Incapacity"),
    ("AESCONG", "Congenital Anomaly or Birth Defect"),
    ("AESMIE", "Other Medically Important Serious Event"),
    ("AESTDTC", "Start Date/Time of Adverse Event"),
    ("AEENDTC", "End Date/Time of Adverse Event"),
    ("AESTDY", "Study Day of Start of Adverse Event", NUM),
    ("AEENDY", "Study Day of End of Adverse Event", NUM),
    ("AEENRTPT", "End Relative to Reference Time Point"),
    ("AEENTPT", "End Reference Time Point"),
)
SUPP_VARIABLES = _vars(
    ("STUDYID", "Study Identifier"),
    ("RDOMAIN", "Related Domain Abbreviation"),
    ("USUBJID", "Unique Subject Identifier"),
    ("IDVAR", "Identifying Variable"),
    ("IDVARVAL", "Identifying Variable Value"),
    ("QNAM", "Qualifier Variable Name"),
    ("QLABEL", "Qualifier Variable Label"),
    ("QVAL", "Data Value"),
    ("QORIG", "Origin"),
    ("QEVAL", "Evaluator"),
)
PC_VARIABLES = _vars(
    *_ID,
    ("PCSEQ", "Sequence Number", NUM),
    ("PCSPID", "Sponsor-Defined Identifier"),
    ("PCTESTCD", "Pharmacokinetic Test Short Name"),
    ("PCTEST", "Pharmacokinetic Test Name"),
    ("PCORRES", "Result or Finding in Original Units"),
    ("PCORRESU", "Original Units"),
    ("PCSTRESC", "Character Result/Finding in Std Format"),
    ("PCSTRESN", "Numeric Result/Finding in Standard Units", NUM),
    ("PCSTRESU", "Standard Units"),
    ("PCSTAT", "Completion Status"),
    ("PCREASND", "Reason Test Not Done"),
    ("PCSPEC", "Specimen Material Type"),
    ("PCMETHOD", "Method of Test or Examination"),
    ("PCLLOQ", "Lower Limit of Quantitation", NUM),
    *_VISIT,
    ("PCDTC", "Date/Time of Specimen Collection"),
    ("PCDY", "Study Day of Specimen Collection", NUM),
    ("PCTPT", "Planned Time Point Name"),
    ("PCTPTNUM", "Planned Time Point Number", NUM),
    ("PCELTM", "Planned Elapsed Time from Time Point Ref"),
    ("PCTPTREF", "Time Point Reference"),
    ("PCRFTDTC", "Date/Time of Reference Time Point"),
)
PP_VARIABLES = _vars(
    *_ID,
    ("PPSEQ", "Sequence Number", NUM),
    ("PPTESTCD", "Parameter Short Name"),
    ("PPTEST", "Parameter Name"),
    ("PPCAT", "Parameter Category"),
    ("PPORRES", "Result or Finding in Original Units"),
    ("PPORRESU", "Original Units"),
    ("PPSTRESC", "Character Result/Finding in Std Format"),
    ("PPSTRESN", "Numeric Result/Finding in Standard Units", NUM),
    ("PPSTRESU", "Standard Units"),
    ("PPSPEC", "Specimen Material Type"),
    ("PPSTINT", "Planned Start of Assessment Interval"),
    ("PPENINT", "Planned End of Assessment Interval"),
    ("PPRFTDTC", "Date/Time of Reference Point"),
)
IS_VARIABLES = _vars(
    *_ID,
    ("ISSEQ", "Sequence Number", NUM),
    ("ISSPID", "Sponsor-Defined Identifier"),
    ("ISTESTCD", "Immunogenicity Test/Exam Short Name"),
    ("ISTEST", "Immunogenicity Test or Examination Name"),
    ("ISORRES", "Result or Finding in Original Units"),
    ("ISORRESU", "Original Units"),
    ("ISSTRESC", "Character Result/Finding in Std Format"),
    ("ISSTRESN", "Numeric Result/Finding in Standard Units", NUM),
    ("ISSTRESU", "Standard Units"),
    ("ISSPEC", "Specimen Material Type"),
    *_VISIT,
    ("ISDTC", "Date/Time of Collection"),
    ("ISDY", "Study Day of Collection", NUM),
)
LB_VARIABLES = _vars(
    *_ID,
    ("LBSEQ", "Sequence Number", NUM),
    ("LBSPID", "Sponsor-Defined Identifier"),
    ("LBTESTCD", "Lab Test or Examination Short Name"),
    ("LBTEST", "Lab Test or Examination Name"),
    ("LBCAT", "Category for Lab Test"),
    ("LBORRES", "Result or Finding in Original Units"),
    ("LBORRESU", "Original Units"),
    ("LBSTRESC", "Character Result/Finding in Std Format"),
    ("LBSTRESN", "Numeric Result/Finding in Standard Units", NUM),
    ("LBSTRESU", "Standard Units"),
    ("LBSPEC", "Specimen Type"),
    ("LBMETHOD", "Method of Test or Examination"),
    *_VISIT,
    ("LBDTC", "Date/Time of Specimen Collection"),
    ("LBDY", "Study Day of Specimen Collection", NUM),
)
DS_VARIABLES = _vars(
    *_ID,
    ("DSSEQ", "Sequence Number", NUM),
    ("DSSPID", "Sponsor-Defined Identifier"),
    ("DSTERM", "Reported Term for the Disposition Event"),
    ("DSDECOD", "Standardized Disposition Term"),
    ("DSCAT", "Category for Disposition Event"),
    *_VISIT,
    ("DSSTDTC", "Start Date/Time of Disposition Event"),
    ("DSSTDY", "Study Day of Start of Disposition Event", NUM),
)
ADTTE_VARIABLES = _vars(
    ("STUDYID", "Study Identifier"),
    ("USUBJID", "Unique Subject Identifier"),
    ("SUBJID", "Subject Identifier for the Study"),
    ("SITEID", "Study Site Identifier"),
    ("TRT01P", "Planned Treatment for Period 01"),
    ("TRT01A", "Actual Treatment for Period 01"),
    ("PARAMCD", "Parameter Code"),
    ("PARAM", "Parameter"),
    ("AVAL", "Analysis Value", NUM),
    ("AVALU", "Analysis Value Unit"),
    ("CNSR", "Censor", NUM),
    ("STARTDT", "Time-to-Event Origin Date (ISO 8601)"),
    ("ADT", "Analysis Date (ISO 8601)"),
    ("EVNTDESC", "Event or Censoring Description"),
    ("CNSDTDSC", "Censor Date Description"),
)

DATASET_LABELS = {
    "dm": "Demographics",
    "ex": "Exposure",
    "ae": "Adverse Events",
    "suppae": "Supplemental Qualifiers for AE",
    "pc": "Pharmacokinetics Concentrations",
    "pp": "Pharmacokinetics Parameters",
    "is": "Immunogenicity Specimen Assessments",
    "lb": "Laboratory Test Results",
    "ds": "Disposition",
    "adtte": "Time-to-Event Analysis Dataset (RFS)",
}
DOMAINS = tuple(DATASET_LABELS)

# Mapping specification: the annotated-CRF contract's codes to SDTM controlled terms.
TREATMENT = "ANTI-CEA CAR-T CELLS"
ASTCT_TERMS = frozenset(
    {"Cytokine release syndrome", "Immune effector cell-associated neurotoxicity syndrome"}
)
ASTCT_SCALE = "ASTCT 2019"
CTCAE_SCALE = "CTCAE v5.0"
AE_RELATIONSHIP = {
    "unrelated": "NOT RELATED",
    "unlikely": "UNLIKELY RELATED",
    "possible": "POSSIBLY RELATED",
    "probable": "PROBABLY RELATED",
    "definite": "RELATED",
}
# adverse_event v2 ``action_taken`` in CDISC AEACN terms (NCI codelist C66767).
AE_ACTION = {
    "not_applicable": "NOT APPLICABLE",
    "dose_not_changed": "DOSE NOT CHANGED",
    "dose_rate_reduced": "DOSE RATE REDUCED",
    "drug_interrupted": "DRUG INTERRUPTED",
    "drug_withdrawn": "DRUG WITHDRAWN",
    "unknown": "UNKNOWN",
}
AE_OUTCOME = {
    "recovered": "RECOVERED/RESOLVED",
    "recovering": "RECOVERING/RESOLVING",
    "not_recovered": "NOT RECOVERED/NOT RESOLVED",
    "recovered_with_sequelae": "RECOVERED/RESOLVED WITH SEQUELAE",
    "fatal": "FATAL",
    "unknown": "UNKNOWN",
}
SAE_CRITERIA = (
    ("AESDTH", "death"),
    ("AESLIFE", "life_threatening"),
    ("AESHOSP", "hospitalisation"),
    ("AESDISAB", "disability"),
    ("AESCONG", "congenital_anomaly"),
    ("AESMIE", "other_important"),
)
ETHNICITY = {"han": "NOT HISPANIC OR LATINO", "not_reported": "NOT REPORTED", "other": "UNKNOWN"}
DISPOSITION = {
    "completed": "COMPLETED",
    "death": "DEATH",
    "lost_to_follow_up": "LOST TO FOLLOW-UP",
    "other": "OTHER",
}
WITHDRAWAL = {
    "subject": "WITHDRAWAL BY SUBJECT",
    "investigator": "PHYSICIAN DECISION",
    "sponsor": "STUDY TERMINATED BY SPONSOR",
}
PK_TESTS = {
    "flow": ("CARTFLOW", "CAR-T Cells by Flow Cytometry", "FLOW CYTOMETRY"),
    "qpcr": ("CARTQPCR", "CAR Transgene Copies by qPCR", "QUANTITATIVE PCR"),
}
LAB_TESTS: tuple[tuple[str, str, str, str], ...] = (
    ("wbc_10e9_per_l", "WBC", "Leukocytes", "HEMATOLOGY"),
    ("anc_10e9_per_l", "NEUT", "Neutrophils", "HEMATOLOGY"),
    ("alc_10e9_per_l", "LYM", "Lymphocytes", "HEMATOLOGY"),
    ("hemoglobin_g_per_l", "HGB", "Hemoglobin", "HEMATOLOGY"),
    ("platelets_10e9_per_l", "PLAT", "Platelets", "HEMATOLOGY"),
    ("alt_u_per_l", "ALT", "Alanine Aminotransferase", "CHEMISTRY"),
    ("ast_u_per_l", "AST", "Aspartate Aminotransferase", "CHEMISTRY"),
    ("alp_u_per_l", "ALP", "Alkaline Phosphatase", "CHEMISTRY"),
    ("ggt_u_per_l", "GGT", "Gamma Glutamyl Transferase", "CHEMISTRY"),
    ("total_bilirubin_umol_per_l", "BILI", "Bilirubin", "CHEMISTRY"),
    ("albumin_g_per_l", "ALB", "Albumin", "CHEMISTRY"),
    ("creatinine_umol_per_l", "CREAT", "Creatinine", "CHEMISTRY"),
    ("sodium_mmol_per_l", "SODIUM", "Sodium", "CHEMISTRY"),
    ("potassium_mmol_per_l", "K", "Potassium", "CHEMISTRY"),
    ("ldh_u_per_l", "LDH", "Lactate Dehydrogenase", "CHEMISTRY"),
    ("crp_mg_per_l", "CRP", "C Reactive Protein", "CHEMISTRY"),
    ("ferritin_ug_per_l", "FERRITIN", "Ferritin", "CHEMISTRY"),
    ("il6_pg_per_ml", "IL6", "Interleukin 6", "CHEMISTRY"),
    ("fibrinogen_g_per_l", "FIBRINO", "Fibrinogen", "COAGULATION"),
    ("inr", "INR", "Prothrombin Intl. Normalized Ratio", "COAGULATION"),
    ("cea_ng_per_ml", "CEA", "Carcinoembryonic Antigen", "TUMOR MARKERS"),
    ("ca19_9_u_per_ml", "CA19_9", "Cancer Antigen 19-9", "TUMOR MARKERS"),
)
MRD_CATEGORY = "MINIMAL RESIDUAL DISEASE"
RCL_CATEGORY = "REPLICATION COMPETENT LENTIVIRUS"
UnitOf = Callable[[str, str], str | None]
"""Looks up a field's unit (``x-unit``) by form and field name."""


# Dates and study days -------------------------------------------------------------------


def study_day(day: date | None, reference: date | None) -> int | None:
    """SDTM study day: no day 0; the reference date is day 1, the day before is day -1."""
    if day is None or reference is None:
        return None
    delta = (day - reference).days
    return delta + 1 if delta >= 0 else delta


def dtc_date(value: Any) -> date | None:
    """The date portion of an ISO 8601 date or date-time value, as written."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def local_dtc(value: Any, zone: tzinfo) -> str | None:
    """A --DTC value in study time: an instant with another offset is converted to ``zone``.

    The result is ISO 8601 with the local offset, so its date portion is the local day. A
    date, a date-time without offset (study time by rule) or one already at the local
    offset is returned as written (keeping its precision); so is text that is no ISO value.
    """
    text = _text(value)
    if text is None or "T" not in text:
        return text
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is None:
        return text
    local = moment.astimezone(zone)
    return text if local.utcoffset() == moment.utcoffset() else local.isoformat()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _yes_no(value: Any) -> str | None:
    if value is True:
        return "Y"
    if value is False:
        return "N"
    return None


def _result(value: float) -> str:
    """A numeric result as text: integers without a decimal point, others as given."""
    return str(int(value)) if value.is_integer() else repr(value)


# The subject-level frame ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What every domain of one subject needs: ids, infusion (RFSTDTC), time zone."""

    studyid: str
    usubjid: str
    infusion: EntryFact | None
    rfstdtc: str | None
    reference_date: date | None
    zone: tzinfo

    def dtc(self, value: Any) -> str | None:
        """A date or date-time field as a --DTC value in study time (``local_dtc``)."""
        return local_dtc(value, self.zone)

    def day(self, value: Any) -> int | None:
        """SDTM study day of a date or date-time field (its local date)."""
        return study_day(dtc_date(self.dtc(value)), self.reference_date)


def reference(study: Mapping[str, Any], casebook: Casebook) -> Reference:
    """The subject's identifiers and reference start (the first live infusion, local time)."""
    studyid = str(study["study_id"])
    zone = study_zone(study)
    infusion = casebook.first("cart_infusion")
    rfstdtc = local_dtc(infusion.data.get("infusion_datetime"), zone) if infusion else None
    return Reference(
        studyid=studyid,
        usubjid=f"{studyid}-{casebook.subject_id}",
        infusion=infusion,
        rfstdtc=rfstdtc,
        reference_date=dtc_date(rfstdtc),
        zone=zone,
    )


class Visits:
    """Visit numbers (schedule order) and names from the study definition."""

    def __init__(self, study: Mapping[str, Any]) -> None:
        self._visits = {
            str(v["code"]): (float(order), str(v.get("label") or v["code"]))
            for order, v in enumerate(study.get("visits", []), start=1)
        }

    def fields(self, code: str) -> dict[str, Any]:
        """VISITNUM and VISIT of a visit code (log forms have none)."""
        if code == "LOG" or code not in self._visits:
            return {"VISITNUM": None, "VISIT": None}
        order, label = self._visits[code]
        return {"VISITNUM": order, "VISIT": label}


def _sequenced(
    rows: list[dict[str, Any]], seq: str, key: Callable[[dict[str, Any]], Any]
) -> list[dict[str, Any]]:
    """Sort rows by subject then ``key`` and number --SEQ from 1 within each subject."""
    rows.sort(key=lambda r: (r["USUBJID"], key(r)))
    counters: dict[str, int] = defaultdict(int)
    for row in rows:
        counters[row["USUBJID"]] += 1
        row[seq] = counters[row["USUBJID"]]
    return rows


def _sort_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# DM ------------------------------------------------------------------------------------------


def _dose_labels(study: Mapping[str, Any]) -> dict[str, str]:
    unit = str(study.get("dose_unit") or "")
    labels = {}
    for level in study.get("dose_levels", []):
        label = level.get("label") or f"{level.get('dose_per_kg')} {unit}".strip()
        labels[str(level["dose_level"])] = f"{TREATMENT} {label}"
    return labels


def _country(study: Mapping[str, Any], site: str) -> str | None:
    for known in study.get("sites", []):
        if known.get("site_id") == site and known.get("country"):
            return str(known["country"])
    return _text(study.get("country"))


def _death_date(casebook: Casebook) -> str | None:
    for entry in casebook.live("end_of_study"):
        if _text(entry.data.get("death_date")):
            return str(entry.data["death_date"])
        if entry.data.get("reason") == "death" and _text(entry.data.get("end_date")):
            return str(entry.data["end_date"])
    return None


def dm_rows(study: Mapping[str, Any], casebooks: Sequence[Casebook]) -> list[dict[str, Any]]:
    """DM: one row per subject; arms are dose levels (planned = enrolled, actual = infused)."""
    labels = _dose_labels(study)
    rows = []
    for casebook in casebooks:
        ref = reference(study, casebook)
        demographics = casebook.first("demographics")
        demo: Mapping[str, Any] = demographics.data if demographics else {}
        consent = casebook.first("informed_consent")
        end = casebook.first("end_of_study")
        eligibility = casebook.live("eligibility")
        screen_failed = bool(eligibility) and eligibility[-1].data.get("criteria_met") is False
        infused = _text(ref.infusion.data.get("dose_level")) if ref.infusion else None
        end_dtc = None
        if ref.infusion is not None:
            end_dtc = ref.dtc(ref.infusion.data.get("infusion_end_datetime")) or ref.rfstdtc
        if casebook.dose_level:
            armcd: str = casebook.dose_level
        else:
            armcd = "SCRNFAIL" if screen_failed else "NOTASSGN"
        if infused:
            actarmcd = infused
        elif armcd in ("SCRNFAIL", "NOTASSGN"):
            actarmcd = armcd
        else:
            actarmcd = "NOTTRT"
        death = _death_date(casebook)
        rows.append(
            {
                "STUDYID": ref.studyid,
                "DOMAIN": "DM",
                "USUBJID": ref.usubjid,
                "SUBJID": casebook.subject_id,
                "RFSTDTC": ref.rfstdtc,
                "RFENDTC": end_dtc,
                "RFXSTDTC": ref.rfstdtc,
                "RFXENDTC": end_dtc,
                "RFICDTC": ref.dtc(consent.data.get("consent_date")) if consent else None,
                "RFPENDTC": ref.dtc(end.data.get("end_date")) if end else None,
                "DTHDTC": ref.dtc(death),
                "DTHFL": "Y" if death else None,
                "SITEID": casebook.site,
                "AGE": number(demo.get("age")),
                "AGEU": "YEARS" if number(demo.get("age")) is not None else None,
                "SEX": _text(demo.get("sex")),
                "RACE": _text(demo.get("race")),
                "ETHNIC": ETHNICITY.get(str(demo.get("ethnic_group"))),
                "ARMCD": armcd,
                "ARM": _arm(armcd, labels),
                "ACTARMCD": actarmcd,
                "ACTARM": _arm(actarmcd, labels),
                "COUNTRY": _country(study, casebook.site),
                "DMDTC": ref.dtc(demo.get("collection_date")),
                "DMDY": ref.day(demo.get("collection_date")),
            }
        )
    rows.sort(key=lambda r: str(r["USUBJID"]))
    return rows


def _arm(code: str, labels: Mapping[str, str]) -> str:
    special = {
        "SCRNFAIL": "Screen Failure",
        "NOTASSGN": "Not Assigned",
        "NOTTRT": "Not Treated",
    }
    return labels.get(code) or special.get(code, code)


# EX ------------------------------------------------------------------------------------------


def ex_rows(study: Mapping[str, Any], casebooks: Sequence[Casebook]) -> list[dict[str, Any]]:
    """EX: the CAR-T infusion, and the lymphodepleting chemotherapy by agent."""
    visits = Visits(study)
    unit = str(study.get("dose_unit") or "cells/kg")
    rows: list[dict[str, Any]] = []
    for casebook in casebooks:
        ref = reference(study, casebook)

        for entry in casebook.live("cart_infusion"):
            data = entry.data
            dose = number(data.get("cells_per_kg"))
            cells, weight = number(data.get("total_car_t_cells")), number(data.get("weight_kg"))
            if dose is None and cells is not None and weight:
                dose = cells / weight
            start = ref.dtc(data.get("infusion_datetime"))
            _ex_row(
                rows,
                ref,
                visits,
                entry,
                EXTRT=TREATMENT,
                EXCAT="STUDY TREATMENT",
                EXDOSE=dose,
                EXDOSU=unit,
                EXDOSFRM="SUSPENSION",
                EXDOSFRQ="ONCE",
                EXROUTE="INTRAVENOUS",
                EXLOT=_text(data.get("product_lot")),
                EXADJ=_text(data.get("incomplete_reason")),
                EXSTDTC=start,
                EXENDTC=ref.dtc(data.get("infusion_end_datetime")) or start,
            )
        for entry in casebook.live("lymphodepletion"):
            data = entry.data
            agents = []
            if data.get("regimen") in ("flu_cy", "other") and "fludarabine_mg_per_m2_day" in data:
                agents.append(("FLUDARABINE", data.get("fludarabine_mg_per_m2_day")))
            if "cyclophosphamide_mg_per_m2_day" in data:
                agents.append(("CYCLOPHOSPHAMIDE", data.get("cyclophosphamide_mg_per_m2_day")))
            if not agents:
                agents.append(
                    (str(data.get("regimen_other") or data.get("regimen", "")).upper(), None)
                )
            for name, dose in agents:
                _ex_row(
                    rows,
                    ref,
                    visits,
                    entry,
                    EXTRT=name,
                    EXCAT="LYMPHODEPLETING CHEMOTHERAPY",
                    EXDOSE=number(dose),
                    EXDOSU="mg/m2" if number(dose) is not None else None,
                    EXDOSFRM="INJECTION",
                    EXDOSFRQ="QD",
                    EXROUTE="INTRAVENOUS",
                    EXADJ=_text(data.get("deviation_details")),
                    EXSTDTC=ref.dtc(data.get("start_date")),
                    EXENDTC=ref.dtc(data.get("end_date")),
                )
    return _sequenced(rows, "EXSEQ", lambda r: (_sort_text(r["EXSTDTC"]), r["EXTRT"]))


def _ex_row(
    rows: list[dict[str, Any]], ref: Reference, visits: Visits, entry: EntryFact, **values: Any
) -> None:
    start, end = values.get("EXSTDTC"), values.get("EXENDTC")
    rows.append(
        {
            "STUDYID": ref.studyid,
            "DOMAIN": "EX",
            "USUBJID": ref.usubjid,
            "EXSPID": entry.entry_id,
            **visits.fields(entry.visit),
            **values,
            "EXSTDY": ref.day(start),
            "EXENDY": ref.day(end),
        }
    )


# AE and SUPPAE -----------------------------------------------------------------------------


def ae_term(data: Mapping[str, Any]) -> str:
    """The reported term, with the free text of "Other, specify"."""
    term = str(data.get("term", ""))
    other = _text(data.get("term_other"))
    return other if term == "Other, specify" and other else term


def dlt_entry_ids(casebook: Casebook) -> set[str]:
    """AE entries named as DLTs by the subject's DLT assessment, when it records a DLT.

    The assessment that counts is the one signed last (as in the DLT report and the
    escalation): a later signed re-assessment replaces an earlier one.
    """
    signed = [
        (entry.signed_at, order, entry)
        for order, entry in enumerate(casebook.live("dlt_assessment"))
        if entry.signed_at is not None
    ]
    if not signed:
        return set()
    _, _, latest = max(signed, key=lambda item: item[:2])
    if latest.data.get("dlt") is not True:
        return set()
    return {str(i) for i in latest.data.get("ae_entry_ids", [])}


def ae_rows(study: Mapping[str, Any], casebooks: Sequence[Casebook]) -> list[dict[str, Any]]:
    """AE: one row per live adverse_event entry."""
    rows: list[dict[str, Any]] = []
    for casebook in casebooks:
        ref = reference(study, casebook)
        for entry in casebook.live("adverse_event"):
            data = entry.data
            grade = data.get("grade")
            criteria = (
                data.get("sae_criteria") if isinstance(data.get("sae_criteria"), dict) else None
            )
            row: dict[str, Any] = {
                "STUDYID": ref.studyid,
                "DOMAIN": "AE",
                "USUBJID": ref.usubjid,
                "AESPID": entry.entry_id,
                "AETERM": ae_term(data),
                "AEDECOD": ae_term(data),
                "AESER": _yes_no(data.get("serious")),
                # Not asked before adverse_event v2: left empty, not guessed.
                "AEACN": AE_ACTION.get(str(data.get("action_taken"))),
                "AEREL": AE_RELATIONSHIP.get(str(data.get("relationship"))),
                "AEOUT": AE_OUTCOME.get(str(data.get("outcome"))),
                "AECONTRT": _yes_no(data.get("treatment_given")),
                "AETOXGR": str(grade) if isinstance(grade, int) else None,
                "AESTDTC": ref.dtc(data.get("onset_date")),
                "AEENDTC": ref.dtc(data.get("resolution_date")),
                "AESTDY": ref.day(data.get("onset_date")),
                "AEENDY": ref.day(data.get("resolution_date")),
                "AEENRTPT": "ONGOING" if data.get("ongoing") is True else None,
                "AEENTPT": "END OF STUDY" if data.get("ongoing") is True else None,
            }
            for variable, key in SAE_CRITERIA:
                row[variable] = _yes_no(criteria.get(key)) if criteria else None
            rows.append(row)
    return _sequenced(rows, "AESEQ", lambda r: (_sort_text(r["AESTDTC"]), r["AETERM"], r["AESPID"]))


def suppae_rows(
    study: Mapping[str, Any], casebooks: Sequence[Casebook], ae: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """SUPPAE: grading scale, DLT flag, relationship to lymphodepletion, AESI, per AESEQ."""
    studyid = str(study["study_id"])
    by_entry = {casebook.subject_id: casebook for casebook in casebooks}
    rows: list[dict[str, Any]] = []
    for record in ae:
        subject_id = str(record["USUBJID"])[len(studyid) + 1 :]
        casebook = by_entry.get(subject_id)
        if casebook is None:
            continue
        entry = next((e for e in casebook.entries if e.entry_id == record["AESPID"]), None)
        if entry is None:
            continue

        term = str(entry.data.get("term", ""))
        if entry.data.get("grade") is not None:
            scale = ASTCT_SCALE if term in ASTCT_TERMS else CTCAE_SCALE
            _qualifier(
                rows, studyid, record, "AETOXSCL", "Toxicity Grading Scale", scale, "ASSIGNED"
            )
        if entry.entry_id in dlt_entry_ids(casebook):
            _qualifier(rows, studyid, record, "AEDLT", "Dose-Limiting Toxicity", "Y", "CRF")
        lymphodepletion = AE_RELATIONSHIP.get(str(entry.data.get("relationship_lymphodepletion")))
        _qualifier(
            rows, studyid, record, "AERELLD", "Causality to Lymphodepletion", lymphodepletion, "CRF"
        )
        _qualifier(
            rows,
            studyid,
            record,
            "AESI",
            "Adverse Event of Special Interest",
            _yes_no(entry.data.get("special_interest")),
            "CRF",
        )
    return rows


def _qualifier(
    rows: list[dict[str, Any]],
    studyid: str,
    record: Mapping[str, Any],
    qnam: str,
    qlabel: str,
    qval: str | None,
    qorig: str,
) -> None:
    if qval is None:
        return
    rows.append(
        {
            "STUDYID": studyid,
            "RDOMAIN": "AE",
            "USUBJID": record["USUBJID"],
            "IDVAR": "AESEQ",
            "IDVARVAL": str(record["AESEQ"]),
            "QNAM": qnam,
            "QLABEL": qlabel,
            "QVAL": qval,
            "QORIG": qorig,
            "QEVAL": "INVESTIGATOR" if qorig == "CRF" else None,
        }
    )


# PC and PP ---------------------------------------------------------------------------------


def _pk_settings(study: Mapping[str, Any]) -> Mapping[str, Any]:
    settings: Mapping[str, Any] = study.get("settings", {}).get("pk", {})
    return settings


def _pk_test(method: str) -> tuple[str, str, str]:
    return PK_TESTS.get(method, (method.upper()[:8], f"CAR-T level ({method})", method.upper()))


def elapsed(nominal_day: Any) -> str | None:
    """Planned elapsed time from infusion as an ISO 8601 duration (days, else hours)."""
    day = number(nominal_day)
    if day is None:
        return None
    if day.is_integer():
        return f"P{int(day)}D"
    return f"PT{round(day * 24)}H"


def pc_rows(
    study: Mapping[str, Any], casebooks: Sequence[Casebook], unit_of: UnitOf
) -> list[dict[str, Any]]:
    """PC: one row per PK sample and assay method (value, BLQ, or not done)."""
    visits = Visits(study)
    methods: Mapping[str, Mapping[str, Any]] = _pk_settings(study).get("methods", {})
    rows: list[dict[str, Any]] = []
    for casebook in casebooks:
        ref = reference(study, casebook)
        for entry in casebook.live("pk_sample"):
            data = entry.data
            for method, spec in methods.items():
                value_field, blq_field = str(spec["value_field"]), str(spec["blq_field"])
                prefix = value_field.split("_", 1)[0]
                testcd, test, technique = _pk_test(method)
                value = number(data.get(value_field))
                blq = data.get(blq_field) is True
                not_done = data.get(f"{prefix}_not_done") is True
                if value is None and not blq and not not_done:
                    continue
                unit = unit_of("pk_sample", value_field)
                # The entry's own LLOQ (a lab reporting another one) before the study's.
                lloq = _lloq_field(data, prefix)
                lloq = lloq if lloq is not None else number(spec.get("lloq"))
                row: dict[str, Any] = {
                    "STUDYID": ref.studyid,
                    "DOMAIN": "PC",
                    "USUBJID": ref.usubjid,
                    "PCSPID": entry.entry_id,
                    "PCTESTCD": testcd,
                    "PCTEST": test,
                    "PCSPEC": "BLOOD",
                    "PCMETHOD": technique,
                    "PCLLOQ": lloq,
                    **visits.fields(entry.visit),
                    "PCDTC": ref.dtc(data.get("sample_datetime")),
                    "PCDY": ref.day(data.get("sample_datetime")),
                    "PCTPTNUM": number(data.get("nominal_day")),
                    "PCTPTREF": "CAR-T INFUSION",
                    "PCRFTDTC": ref.rfstdtc,
                }
                if data.get("pre_infusion") is True:
                    row["PCTPT"] = "PRE-INFUSION"
                else:
                    nominal = number(data.get("nominal_day"))
                    row["PCTPT"] = f"DAY {nominal:g}" if nominal is not None else None
                    row["PCELTM"] = elapsed(nominal)
                if not_done:
                    row["PCSTAT"] = "NOT DONE"
                    row["PCREASND"] = _text(data.get(f"{prefix}_not_done_reason"))
                elif blq:
                    row.update(PCORRES="BLQ", PCSTRESC="BLQ", PCORRESU=unit, PCSTRESU=unit)
                elif value is not None:
                    text = _result(value)
                    row.update(
                        PCORRES=text,
                        PCORRESU=unit,
                        PCSTRESC=text,
                        PCSTRESN=value,
                        PCSTRESU=unit,
                    )
                rows.append(row)
    return _sequenced(rows, "PCSEQ", lambda r: (_sort_text(r["PCDTC"]), r["PCTESTCD"]))


def _lloq_field(data: Mapping[str, Any], prefix: str) -> float | None:
    for key, value in data.items():
        if key.startswith(f"{prefix}_lloq"):
            return number(value)
    return None


def pk_profile(
    samples: Iterable[Mapping[str, Any]],
    infusion_at: datetime,
    method: Mapping[str, Any],
    zone: tzinfo,
) -> list[tuple[float, float]]:
    """(day from infusion, level) points for NCA: BLQ and values below LLOQ as 0,
    pre-dose samples as (0, 0), samples at one instant averaged (as the PK report)."""
    return profile_points(
        (
            Sample(
                moment,
                number(data.get(method["value_field"])),
                data.get(method["blq_field"]) is True,
                number(data.get(method.get("lloq_field", ""))),
            )
            for data in samples
            if (moment := parse_instant(data.get("sample_datetime"), zone)) is not None
        ),
        infusion_at,
        number(method.get("lloq")),
    )


def pp_rows(
    study: Mapping[str, Any], casebooks: Sequence[Casebook], unit_of: UnitOf
) -> list[dict[str, Any]]:
    """PP: Cmax, Tmax, Tlast, AUClast and AUC over the protocol interval, per method."""
    settings = _pk_settings(study)
    methods: Mapping[str, Mapping[str, Any]] = settings.get("methods", {})
    low, high = (float(v) for v in settings.get("interval_days", [0, 28]))
    nca_method = str(settings.get("method", LINEAR_UP_LOG_DOWN))
    zone = study_zone(study)
    rows: list[dict[str, Any]] = []
    for casebook in casebooks:
        ref = reference(study, casebook)
        if ref.infusion is None:
            continue
        infusion_at = parse_instant(ref.infusion.data.get("infusion_datetime"), zone)
        if infusion_at is None:
            continue
        samples = [e.data for e in casebook.live("pk_sample")]
        for method, spec in methods.items():
            points = pk_profile(samples, infusion_at, spec, zone)
            if not points:
                continue
            result = nca(
                [t for t, _ in points],
                [c for _, c in points],
                method=nca_method,
                interval=(low, high),
            )
            unit = unit_of("pk_sample", str(spec["value_field"])) or ""
            testcd = _pk_test(method)[0]
            parameters: list[tuple[str, str, float | None, str, bool]] = [
                ("CMAX", "Max Conc", result.cmax, unit, False),
                ("TMAX", "Time of CMAX", result.tmax, "d", False),
                ("TLST", "Time of Last Nonzero Conc", result.tlast, "d", False),
                ("AUCLST", "AUC to Last Nonzero Conc", result.auc_last, f"{unit}*d", False),
                ("AUCINT", "AUC from T1 to T2", result.auc_interval, f"{unit}*d", True),
            ]
            for code, name, value, parameter_unit, interval in parameters:
                if value is None or not math.isfinite(value):
                    continue
                rows.append(
                    {
                        "STUDYID": ref.studyid,
                        "DOMAIN": "PP",
                        "USUBJID": ref.usubjid,
                        "PPTESTCD": code,
                        "PPTEST": name,
                        "PPCAT": testcd,
                        "PPORRES": _result(value),
                        "PPORRESU": parameter_unit,
                        "PPSTRESC": _result(value),
                        "PPSTRESN": value,
                        "PPSTRESU": parameter_unit,
                        "PPSPEC": "BLOOD",
                        "PPSTINT": f"P{low:g}D" if interval else None,
                        "PPENINT": f"P{high:g}D" if interval else None,
                        "PPRFTDTC": ref.rfstdtc,
                    }
                )
    order = {code: n for n, code in enumerate(("CMAX", "TMAX", "TLST", "AUCLST", "AUCINT"))}
    return _sequenced(rows, "PPSEQ", lambda r: (r["PPCAT"], order.get(r["PPTESTCD"], 99)))


# IS and LB ---------------------------------------------------------------------------------


@dataclass
class _Findings:
    """Rows of one findings domain for one subject (--TESTCD, --ORRES, ... prefixed)."""

    domain: str
    ref: Reference
    visits: Visits
    rows: list[dict[str, Any]]

    def add(self, entry: EntryFact, date_field: str, **values: Any) -> None:
        """One result of ``entry``, dated by its ``date_field``."""
        when = self.ref.dtc(entry.data.get(date_field))
        d = self.domain
        self.rows.append(
            {
                "STUDYID": self.ref.studyid,
                "DOMAIN": d,
                "USUBJID": self.ref.usubjid,
                f"{d}SPID": entry.entry_id,
                **{f"{d}{k}": v for k, v in values.items()},
                **self.visits.fields(entry.visit),
                f"{d}DTC": when,
                f"{d}DY": self.ref.day(when),
            }
        )


def _measured(value: float, unit: str | None) -> dict[str, Any]:
    text = _result(value)
    return {"ORRES": text, "ORRESU": unit, "STRESC": text, "STRESN": value, "STRESU": unit}


def _stated(text: str) -> dict[str, Any]:
    return {"ORRES": text, "STRESC": text}


def _qualitative(value: Any) -> str | None:
    return str(value).replace("_", " ").upper() if _text(value) else None


def is_rows(study: Mapping[str, Any], casebooks: Sequence[Casebook]) -> list[dict[str, Any]]:
    """IS: ADA result, titre and neutralising activity per ada_test entry."""
    visits = Visits(study)
    rows: list[dict[str, Any]] = []
    for casebook in casebooks:
        found = _Findings("IS", reference(study, casebook), visits, rows)
        for entry in casebook.live("ada_test"):
            data = entry.data
            result = _qualitative(data.get("result"))
            if result:
                found.add(
                    entry, "sample_date", TESTCD="ADA", TEST="Anti-Drug Antibody",
                    SPEC="SERUM", **_stated(result),
                )  # fmt: skip
            titre = number(data.get("titre"))
            if titre is not None:
                found.add(
                    entry, "sample_date", TESTCD="ADATITER", TEST="Anti-Drug Antibody Titer",
                    SPEC="SERUM", **_measured(titre, "titer"),
                )  # fmt: skip
            neutralising = data.get("neutralizing")
            if isinstance(neutralising, bool):
                found.add(
                    entry, "sample_date", TESTCD="ADANAB", TEST="Neutralizing Anti-Drug Antibody",
                    SPEC="SERUM", **_stated("POSITIVE" if neutralising else "NEGATIVE"),
                )  # fmt: skip
    return _sequenced(rows, "ISSEQ", lambda r: (_sort_text(r["ISDTC"]), r["ISTESTCD"]))


def lb_rows(
    study: Mapping[str, Any], casebooks: Sequence[Casebook], unit_of: UnitOf
) -> list[dict[str, Any]]:
    """LB: routine labs, ctDNA (MRD) and RCL results."""
    visits = Visits(study)
    rows: list[dict[str, Any]] = []
    for casebook in casebooks:
        found = _Findings("LB", reference(study, casebook), visits, rows)
        for entry in casebook.live("labs"):
            for field_name, testcd, test, category in LAB_TESTS:
                value = number(entry.data.get(field_name))
                if value is None:
                    continue
                unit = unit_of("labs", field_name)
                found.add(
                    entry, "collection_date", TESTCD=testcd, TEST=test, CAT=category,
                    SPEC="BLOOD", **_measured(value, None if unit == "{INR}" else unit),
                )  # fmt: skip
            pregnancy = entry.data.get("pregnancy_test")
            if pregnancy in ("negative", "positive"):
                found.add(
                    entry, "collection_date", TESTCD="HCG", TEST="Choriogonadotropin Beta",
                    CAT="PREGNANCY TEST", **_stated(str(pregnancy).upper()),
                )  # fmt: skip
        for entry in casebook.live("ctdna_result"):
            data = entry.data
            method = _qualitative(data.get("assay_type"))
            ctdna = {"CAT": MRD_CATEGORY, "SPEC": "PLASMA", "METHOD": method}
            result = _qualitative(data.get("result"))
            if result:
                found.add(
                    entry, "sample_date", TESTCD="CTDNA", TEST="Circulating Tumor DNA",
                    **ctdna, **_stated(result),
                )  # fmt: skip
            quantity = number(data.get("mtm_per_ml"))
            if quantity is not None:
                unit = unit_of("ctdna_result", "mtm_per_ml")
                found.add(
                    entry, "sample_date", TESTCD="CTDNAMTM", TEST="ctDNA Mean Tumor Molecules",
                    **ctdna, **_measured(quantity, unit),
                )  # fmt: skip
        for entry in casebook.live("rcl_test"):
            data = entry.data
            method = _qualitative(data.get("method"))
            rcl = {"CAT": RCL_CATEGORY, "SPEC": "BLOOD", "METHOD": method}
            result = _qualitative(data.get("result"))
            if result:
                found.add(
                    entry, "sample_date", TESTCD="RCL", TEST="Replication Competent Lentivirus",
                    **rcl, **_stated(result),
                )  # fmt: skip
            copies = number(data.get("vsvg_copies_per_ug"))
            if copies is not None:
                unit = unit_of("rcl_test", "vsvg_copies_per_ug")
                found.add(
                    entry, "sample_date", TESTCD="VSVGDNA", TEST="VSV-G DNA",
                    **rcl, **_measured(copies, unit),
                )  # fmt: skip
    return _sequenced(rows, "LBSEQ", lambda r: (_sort_text(r["LBDTC"]), r["LBCAT"], r["LBTESTCD"]))


# DS ------------------------------------------------------------------------------------------


def ds_rows(study: Mapping[str, Any], casebooks: Sequence[Casebook]) -> list[dict[str, Any]]:
    """DS: informed consent, screen failure, and the end-of-study disposition."""
    visits = Visits(study)
    rows: list[dict[str, Any]] = []
    for casebook in casebooks:
        ref = reference(study, casebook)

        for entry in casebook.live("informed_consent"):
            decod = "INFORMED CONSENT OBTAINED"
            _ds_row(
                rows,
                ref,
                visits,
                entry,
                decod,
                decod,
                "PROTOCOL MILESTONE",
                entry.data.get("consent_date"),
            )
        for entry in casebook.live("eligibility"):
            if entry.data.get("criteria_met") is False:
                term = _text(entry.data.get("screen_failure_reason")) or "SCREEN FAILURE"
                _ds_row(
                    rows,
                    ref,
                    visits,
                    entry,
                    term,
                    "SCREEN FAILURE",
                    "DISPOSITION EVENT",
                    entry.data.get("assessment_date"),
                )
        for entry in casebook.live("end_of_study"):
            reason = str(entry.data.get("reason", ""))
            if reason == "withdrawal":
                decod = (
                    WITHDRAWAL.get(str(entry.data.get("withdrawal_by"))) or WITHDRAWAL["subject"]
                )
            else:
                decod = DISPOSITION.get(reason, reason.upper())
            other = _text(entry.data.get("reason_other")) if reason == "other" else None
            _ds_row(
                rows,
                ref,
                visits,
                entry,
                other or decod,
                decod,
                "DISPOSITION EVENT",
                entry.data.get("end_date"),
            )
    return _sequenced(rows, "DSSEQ", lambda r: (_sort_text(r["DSSTDTC"]), r["DSCAT"]))


def _ds_row(
    rows: list[dict[str, Any]],
    ref: Reference,
    visits: Visits,
    entry: EntryFact,
    term: str,
    decod: str,
    category: str,
    when: Any,
) -> None:
    rows.append(
        {
            "STUDYID": ref.studyid,
            "DOMAIN": "DS",
            "USUBJID": ref.usubjid,
            "DSSPID": entry.entry_id,
            "DSTERM": term,
            "DSDECOD": decod,
            "DSCAT": category,
            **visits.fields(entry.visit),
            "DSSTDTC": ref.dtc(when),
            "DSSTDY": ref.day(when),
        }
    )


# ADTTE (RFS) ----------------------------------------------------------------------------------


def adtte_rows(study: Mapping[str, Any], casebooks: Sequence[Casebook]) -> list[dict[str, Any]]:
    """ADTTE: recurrence-free survival per treated subject (the RFS report's rule)."""
    settings = study.get("settings", {}).get("rfs", {})
    days_per_month = float(settings.get("days_per_month", 30.4375))
    rows = []
    for casebook in casebooks:
        ref = reference(study, casebook)
        if ref.infusion is None:
            continue
        origin = ref.reference_date
        if origin is None:
            continue
        recurrences, clear = [], []
        for entry in casebook.live("imaging"):
            day = dtc_date(entry.data.get("imaging_date"))
            if day is None or day < origin:
                continue
            if entry.data.get("recurrence") is True:
                recurrences.append(day)
            elif entry.data.get("adequate") is not False:
                clear.append(day)
        events = [(d, "RECURRENCE (IMAGING)") for d in recurrences]
        death = dtc_date(_death_date(casebook))
        if death is not None and death >= origin:
            events.append((death, "DEATH"))
        if events:
            end, description = min(events, key=lambda e: (e[0], e[1] != "RECURRENCE (IMAGING)"))
            censor, censor_text = 0, None
        else:
            end = max(clear, default=origin)
            description = None
            censor = 1
            censor_text = (
                "LAST ADEQUATE IMAGING WITHOUT RECURRENCE" if clear else "INFUSION (NO ASSESSMENT)"
            )
        rows.append(
            {
                "STUDYID": ref.studyid,
                "USUBJID": ref.usubjid,
                "SUBJID": casebook.subject_id,
                "SITEID": casebook.site,
                "TRT01P": casebook.dose_level,
                "TRT01A": _text(ref.infusion.data.get("dose_level")),
                "PARAMCD": "RFS",
                "PARAM": "Recurrence-Free Survival (Months)",
                "AVAL": (end - origin).days / days_per_month,
                "AVALU": "MONTHS",
                "CNSR": censor,
                "STARTDT": origin.isoformat(),
                "ADT": end.isoformat(),
                "EVNTDESC": description,
                "CNSDTDSC": censor_text,
            }
        )
    rows.sort(key=lambda r: str(r["USUBJID"]))
    return rows


# The package ---------------------------------------------------------------------------------


def schema_units(forms: Mapping[str, Mapping[str, Any]]) -> UnitOf:
    """A unit lookup over form schemas (``{form: schema}``): the field's ``x-unit``."""

    def unit_of(form: str, field_name: str) -> str | None:
        prop = forms.get(form, {}).get("properties", {}).get(field_name, {})
        unit = prop.get("x-unit") if isinstance(prop, dict) else None
        return unit if isinstance(unit, str) else None

    return unit_of


def sdtm_package(
    study: Mapping[str, Any],
    casebooks: Sequence[Casebook],
    unit_of: UnitOf | None = None,
) -> SdtmPackage:
    """Every dataset, computed from the casebooks' live entries."""
    units = unit_of or (lambda form, field_name: None)
    ae = ae_rows(study, casebooks)
    tables: dict[str, tuple[tuple[Variable, ...], list[dict[str, Any]]]] = {
        "dm": (DM_VARIABLES, dm_rows(study, casebooks)),
        "ex": (EX_VARIABLES, ex_rows(study, casebooks)),
        "ae": (AE_VARIABLES, ae),
        "suppae": (SUPP_VARIABLES, suppae_rows(study, casebooks, ae)),
        "pc": (PC_VARIABLES, pc_rows(study, casebooks, units)),
        "pp": (PP_VARIABLES, pp_rows(study, casebooks, units)),
        "is": (IS_VARIABLES, is_rows(study, casebooks)),
        "lb": (LB_VARIABLES, lb_rows(study, casebooks, units)),
        "ds": (DS_VARIABLES, ds_rows(study, casebooks)),
        "adtte": (ADTTE_VARIABLES, adtte_rows(study, casebooks)),
    }
    return SdtmPackage(
        {
            name: Dataset(name.upper(), DATASET_LABELS[name], variables, rows)
            for name, (variables, rows) in tables.items()
        },
        time_zone=str(study_zone(study)),
    )
