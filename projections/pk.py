"""PkProfiles: CAR-T cellular kinetics per subject and assay, by non-compartmental analysis.

Times are days (fractional) from ``infusion_datetime`` to ``sample_datetime``. The study
settings (``settings.pk``) name, per method, the value and BLQ fields, the unit and the
LLOQ; the NCA method and interval come from there too (``ecrf.clinical.nca`` does the
arithmetic, PKNCA rules). Definitions where PROTOCOL.md is silent:

- A sample flagged BLQ enters as 0; so does a value below its LLOQ, the one the lab
  reported on the sample (``lloq_field``) or else the method's (it is not quantifiable by
  definition, and would otherwise decide Tlast). A sample with neither a value nor a BLQ
  flag for the method (not done) is left out.
- Samples at or before the infusion instant are pre-dose: together they are one point
  (day 0, value 0), as PROTOCOL says a pre-dose sample counts as 0 at day 0.
- Two samples at the same instant are one time point with their mean value.
- ``profile`` lists exactly the points given to the NCA. A treated subject with no sample
  for the method has no row; one whose samples are all BLQ has a row with null results.
- Summary per dose level: ``n`` subjects with a Cmax; geometric mean and geometric CV%
  (``100*sqrt(exp(s^2)-1)``) of Cmax and AUC0-28, null when undefined (n < 2 for the CV,
  or a value <= 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecrf.clinical.nca import (
    LINEAR_UP_LOG_DOWN,
    Sample,
    geometric_cv_percent,
    geometric_mean,
    nca,
    profile_points,
)
from ecrf.clinical.values import number, parse_instant, study_zone
from projections.facts import (
    Infusion,
    ReportTable,
    SubjectFacts,
    dose_level_of,
    dose_levels,
    infusion_of,
)

PK_COLUMNS = (
    "subject_id",
    "dose_level",
    "method",
    "unit",
    "cmax",
    "tmax",
    "tlast",
    "auc_last",
    "auc_0_28",
    "profile",
)
PK_LEVEL_COLUMNS = (
    "dose_level",
    "n",
    "cmax_geomean",
    "cmax_geocv",
    "auc_0_28_geomean",
    "auc_0_28_geocv",
)


# The forms behind the PK tables: each subject's infusion and PK samples;
# their live entries are kept by `projections.clinical_facts`.
FORMS = frozenset({"cart_infusion", "pk_sample"})


def pk_settings(study: Mapping[str, Any]) -> Mapping[str, Any]:
    """The study's ``settings.pk`` block."""
    settings: Mapping[str, Any] = study.get("settings", {}).get("pk", {})
    return settings


def pk_methods(study: Mapping[str, Any]) -> tuple[str, ...]:
    """The assay methods the study defines (``flow``, ``qpcr``)."""
    return tuple(pk_settings(study).get("methods", {}))


def profile(
    samples: Sequence[Mapping[str, Any]],
    infusion: Infusion,
    method: Mapping[str, Any],
    study: Mapping[str, Any],
) -> list[tuple[float, float]]:
    """(day from infusion, level) points of one method, BLQ as 0, pre-dose as (0, 0)."""
    zone = study_zone(study)
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
        infusion.at,
        number(method.get("lloq")),
    )


def pk_report(
    subjects: Sequence[SubjectFacts], study: Mapping[str, Any], method: str
) -> ReportTable:
    """NCA per treated subject for one method; summary per dose level."""
    settings = pk_settings(study)
    methods = settings.get("methods", {})
    if method not in methods:
        raise ValueError(f"unknown PK method {method!r} (expected one of {', '.join(methods)})")
    chosen = methods[method]
    low, high = settings.get("interval_days", [0, 28])
    nca_method = str(settings.get("method", LINEAR_UP_LOG_DOWN))
    zone = study_zone(study)
    rows: list[dict[str, Any]] = []
    for subject in subjects:
        infusion = infusion_of(subject, zone)
        if infusion is None:
            continue
        points = profile([e.data for e in subject.live("pk_sample")], infusion, chosen, study)
        if not points:
            continue
        result = nca(
            [t for t, _ in points],
            [c for _, c in points],
            method=nca_method,
            interval=(float(low), float(high)),
        )
        rows.append(
            {
                "subject_id": subject.subject_id,
                "dose_level": dose_level_of(subject, zone),
                "method": method,
                "unit": chosen.get("unit"),
                "cmax": result.cmax,
                "tmax": result.tmax,
                "tlast": result.tlast,
                "auc_last": result.auc_last,
                "auc_0_28": result.auc_interval,
                "profile": [[t, c] for t, c in points],
            }
        )
    summary = []
    for level in dose_levels(study, [r["dose_level"] for r in rows]):
        cmax = [r["cmax"] for r in rows if r["dose_level"] == level and r["cmax"] is not None]
        auc = [
            r["auc_0_28"] for r in rows if r["dose_level"] == level and r["auc_0_28"] is not None
        ]
        summary.append(
            {
                "dose_level": level,
                "n": len(cmax),
                "cmax_geomean": geometric_mean(cmax),
                "cmax_geocv": geometric_cv_percent(cmax),
                "auc_0_28_geomean": geometric_mean(auc),
                "auc_0_28_geocv": geometric_cv_percent(auc),
            }
        )
    return ReportTable(
        PK_COLUMNS,
        rows,
        {"method": method, "unit": chosen.get("unit"), "dose_levels": summary},
        {"dose_levels": PK_LEVEL_COLUMNS},
    )
