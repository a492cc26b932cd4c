"""Response models of the report endpoints (documentation of their JSON bodies).

The routes return rendered responses (JSON, CSV or PNG); these models describe the JSON
form in the OpenAPI document. Every report has ``position`` (the log position it reflects),
``as_of`` (the instant asked for, if any) and ``rows``; some add a ``summary``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class ReportBase(BaseModel):
    """What every report says about itself."""

    position: int
    as_of: datetime | None = None


class TimelineRow(BaseModel):
    """One dated event of a subject's course."""

    date: str
    study_day: int | None
    category: str
    what: str
    form: str | None
    visit: str | None
    entry_id: str | None


class TimelineReport(ReportBase):
    """A subject's clinical timeline (day 0 = infusion)."""

    subject_id: str
    site: str
    dose_level: str | None
    infusion_date: str | None
    rows: list[TimelineRow]


class TeaeRow(BaseModel):
    """TEAEs of one treated subject in days 0-28."""

    subject_id: str
    dose_level: str | None
    teae_count: int
    worst_grade: int
    serious_count: int


class TeaeLevel(BaseModel):
    """TEAE incidence at one dose level."""

    dose_level: str
    treated: int
    with_teae: int
    grade_3_plus: int
    by_worst_grade: dict[str, int]


class TeaeTerm(BaseModel):
    """One AE term at one dose level."""

    dose_level: str | None
    term: str
    subjects: int
    events: int
    serious_events: int
    worst_grade: int
    grade_3_plus: int


class TeaeSummary(BaseModel):
    """TEAE summaries by dose level and by term."""

    dose_levels: list[TeaeLevel]
    terms: list[TeaeTerm]


class TeaeReport(ReportBase):
    """Treatment-emergent adverse events, days 0-28."""

    rows: list[TeaeRow]
    summary: TeaeSummary


class CrsIcansRow(BaseModel):
    """CRS and ICANS of one treated subject (grade 0 and nulls when none)."""

    subject_id: str
    dose_level: str | None
    crs_worst_grade: int
    crs_onset_day: int | None
    crs_duration_days: int | None
    icans_worst_grade: int
    icans_onset_day: int | None
    icans_duration_days: int | None


class CrsIcansReport(ReportBase):
    """CRS and ICANS, days 0-28."""

    rows: list[CrsIcansRow]


class DltRow(BaseModel):
    """Signed DLT assessments at one dose level."""

    dose_level: str
    treated: int
    assessed: int
    evaluable: int
    dlt: int
    subjects_with_dlt: list[str]


class DltReport(ReportBase):
    """Dose-limiting toxicities by dose level."""

    rows: list[DltRow]


class RclAdaRow(BaseModel):
    """One RCL or ADA test result."""

    subject_id: str
    dose_level: str | None
    test: str
    visit: str
    sample_date: str | None
    study_day: int | None
    result: str | None
    titre: float | None
    neutralizing: bool | None
    entry_id: str


class RclAdaReport(ReportBase):
    """RCL and ADA results."""

    rows: list[RclAdaRow]


class PkRow(BaseModel):
    """NCA of one subject's profile by one method."""

    subject_id: str
    dose_level: str | None
    method: str
    unit: str | None
    cmax: float | None
    tmax: float | None
    tlast: float | None
    auc_last: float | None
    auc_0_28: float | None
    profile: list[list[float]]


class PkLevel(BaseModel):
    """Geometric summaries of Cmax and AUC0-28 at one dose level."""

    dose_level: str
    n: int
    cmax_geomean: float | None
    cmax_geocv: float | None
    auc_0_28_geomean: float | None
    auc_0_28_geocv: float | None


class PkSummary(BaseModel):
    """PK summaries by dose level."""

    method: str
    unit: str | None
    dose_levels: list[PkLevel]


class PkReport(ReportBase):
    """Cellular kinetics by NCA."""

    rows: list[PkRow]
    summary: PkSummary


class MrdRow(BaseModel):
    """ctDNA course and recurrence of one subject."""

    subject_id: str
    dose_level: str | None
    resection_date: str | None
    ctdna_course: list[list[str]]
    clearance_date: str | None
    molecular_relapse_date: str | None
    lead_time_days: int | None
    imaging_recurrence_date: str | None
    recurrence_within_24m_of_resection: bool | None


class MrdReport(ReportBase):
    """ctDNA MRD and recurrence."""

    rows: list[MrdRow]


class RfsRow(BaseModel):
    """RFS time and event of one treated subject."""

    subject_id: str
    dose_level: str | None
    time_months: float
    event: int
    event_type: str | None
    infusion_date: str
    end_date: str


class CurvePointPublic(BaseModel):
    """The KM estimate from one time on."""

    time: float
    survival: float | None
    lower: float | None
    upper: float | None
    at_risk: int


class Estimate(BaseModel):
    """An estimate with its 95% confidence interval."""

    estimate: float | None
    lower: float | None
    upper: float | None


class RfsSummary(BaseModel):
    """The KM curve and the estimate at the horizon."""

    horizon_months: float
    followed_to_horizon: bool
    curve: list[CurvePointPublic]
    rfs_24m: Estimate
    median_months: float | None = None


class RfsReport(ReportBase):
    """Recurrence-free survival from infusion."""

    rows: list[RfsRow]
    summary: RfsSummary


class ProjectionStatus(BaseModel):
    """How far one read model has followed the log."""

    name: str
    position: int
    lag: int
