"""Simulated patients of the demo trial: seeded clinical courses, written as form data.

Everything here is pure: a patient's random generator goes in, plain values and form
data (dicts that pass the schemas under ``forms/``) come out. Nothing is stored here;
`ecrf.demo.trial` enters the data through the application as site staff would.

The model is a plausible phase I anti-CEA CAR-T course, not a prediction: lymphodepletion
cytopenias in nearly everyone; cytokine release syndrome (CRS) and, after it, ICANS more
often and more severe at higher doses; on-target off-tumour colitis (CEA is expressed by
normal colonic mucosa); expansion that peaks in the second week, higher with dose and
with CRS; ctDNA that clears more often at higher doses and may come back before imaging
shows a recurrence. Study days count from the infusion (day 0), as in the protocol.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

FormData = dict[str, Any]

# Per dose number (1 = lowest); a study with more levels reuses the last value.
DLT_RISK = (0.08, 0.2, 0.35)
CRS_RISK = (0.35, 0.55, 0.75)
ICANS_RISK = (0.06, 0.14, 0.28)
DIARRHOEA_RISK = (0.15, 0.25, 0.4)
CLEARANCE_CHANCE = (0.3, 0.5, 0.65)
QPCR_PEAK = (6_000.0, 20_000.0, 50_000.0)  # copies/µg gDNA, geometric mean
FLOW_PEAK = (4.0, 12.0, 35.0)  # CAR+ cells/µL, geometric mean
FLOW_LLOQ = 1.0
QPCR_LLOQ = 50.0

DLT_KINDS = (
    ("crs_grade_3_over_72h", 0.3),
    ("crs_grade_4", 0.1),
    ("icans_grade_3_or_more", 0.25),
    ("non_haematological_grade_3_over_7_days", 0.2),
    ("neutropenia_grade_4_unrecovered_day_28", 0.15),
)

CRS_TERM = "Cytokine release syndrome"
ICANS_TERM = "Immune effector cell-associated neurotoxicity syndrome"

# The schedule's visits after day 0 with their target day and the jitter the demo uses
# (inside each visit's window in forms/study.json).
FOLLOW_UP = (
    ("D1", 1, 0),
    ("D2", 2, 0),
    ("D3", 3, 0),
    ("D4", 4, 0),
    ("D7", 7, 1),
    ("D10", 10, 1),
    ("D14", 14, 1),
    ("D21", 21, 1),
    ("D28", 28, 2),
    ("M2", 60, 5),
    ("M3", 90, 5),
    ("M6", 180, 10),
    ("M9", 270, 10),
    ("M12", 365, 20),
    ("M18", 545, 20),
    ("M24", 737, 5),  # past 24 months, so a completer is still at risk at 2 years
)
# Visits (of forms/study.json) at which the model places ctDNA samples and imaging.
CTDNA_VISITS = ("D28", "M2", "M3", "M6", "M9", "M12", "M18", "M24")
IMAGING_VISITS = ("M3", "M6", "M9", "M12", "M18", "M24")


def risk(table: Sequence[float], dose_number: int) -> float:
    """A per-dose value for dose number ``dose_number`` (1-based)."""
    return table[min(max(dose_number, 1), len(table)) - 1]


def _weighted(rng: random.Random, choices: Sequence[tuple[str, float]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _iso(day: date) -> str:
    return day.isoformat()


# Baseline (drawn at screening) ---------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """Who the patient is at screening, and the dates of screening."""

    number: int
    sex: str
    age: int
    weight_kg: float
    height_cm: float
    consent: date
    resection: date
    chemotherapy_end: date
    primary_site: str
    liver_lesions: int
    largest_lesion_mm: int
    ras_status: str
    ctdna_mtm: float
    childbearing: bool
    haematology: dict[str, float]

    @property
    def enrolment(self) -> date:
        """The day the patient is enrolled, once eligibility is confirmed."""
        return self.consent + timedelta(days=13)

    @property
    def eligibility_day(self) -> date:
        """The day the investigator confirms eligibility."""
        return self.consent + timedelta(days=12)

    @property
    def bsa_m2(self) -> float:
        """Body surface area (Mosteller)."""
        return round(math.sqrt(self.height_cm * self.weight_kg / 3600), 2)


def draw_baseline(rng: random.Random, number: int, consent: date) -> Baseline:
    """A plausible patient with CRLM, R0-resected and ctDNA positive afterwards."""
    sex = rng.choice(("F", "M", "M"))
    age = rng.randint(36, 72)
    height = round(rng.gauss(158 if sex == "F" else 170, 6), 1)
    weight = round(rng.gauss(57 if sex == "F" else 68, 8), 1)
    resection = consent - timedelta(days=rng.randint(110, 200))
    return Baseline(
        number=number,
        sex=sex,
        age=age,
        weight_kg=min(max(weight, 42.0), 110.0),
        height_cm=min(max(height, 145.0), 190.0),
        consent=consent,
        resection=resection,
        chemotherapy_end=consent - timedelta(days=rng.randint(24, 45)),
        primary_site=rng.choice(
            ("sigmoid_colon", "sigmoid_colon", "rectum", "left_colon", "right_colon")
        ),
        liver_lesions=rng.choice((1, 1, 2, 2, 3, 4)),
        largest_lesion_mm=rng.randint(12, 48),
        ras_status=rng.choice(("mutant", "wild_type", "wild_type")),
        ctdna_mtm=round(math.exp(rng.uniform(math.log(0.3), math.log(20.0))), 2),
        childbearing=sex == "F" and age < 50,
        haematology={
            "anc": rng.uniform(2.5, 6.0),
            "alc": rng.uniform(1.0, 2.4),
            "platelets": rng.uniform(160, 320),
            "hemoglobin": rng.uniform(112, 135) if sex == "F" else rng.uniform(125, 150),
            "alt": rng.uniform(12, 35),
            "cea": rng.uniform(1.5, 6.5),
        },
    )


# The course after enrolment -----------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """CRS or ICANS: the grade on each day from onset; resolved the day after the last."""

    onset_day: int
    grades: tuple[int, ...]

    @property
    def worst(self) -> int:
        """The worst grade of the episode."""
        return max(self.grades)

    @property
    def resolution_day(self) -> int:
        """The first day without the syndrome."""
        return self.onset_day + len(self.grades)

    def grade_on(self, day: int) -> int:
        """The grade on a study day (0 outside the episode)."""
        index = day - self.onset_day
        return self.grades[index] if 0 <= index < len(self.grades) else 0


@dataclass(frozen=True)
class AdverseEvent:
    """One adverse event: its onset, how its worst grade rose, and when it resolved."""

    key: str
    term: str
    onset_day: int
    grades: tuple[tuple[int, int], ...]  # (study day, worst grade so far), rising
    resolution_day: int | None
    relationship: str
    relationship_lymphodepletion: str | None = None
    special_interest: bool = False
    treated: bool = False

    @property
    def worst(self) -> int:
        """The worst grade reached."""
        return max(grade for _, grade in self.grades)

    def grade_on(self, day: int) -> int:
        """The worst grade known on a study day."""
        known = [grade for when, grade in self.grades if when <= day]
        return max(known) if known else 0


@dataclass(frozen=True)
class Kinetics:
    """CAR-T expansion and persistence: log-linear rise to the peak, then two-phase decay."""

    flow_peak: float
    qpcr_peak: float
    tmax: float

    def level(self, method: str, day: float) -> float:
        """The expected level of one method at a time after infusion (days)."""
        peak = self.flow_peak if method == "flow" else self.qpcr_peak
        first = 1 / 24
        early = peak * (0.01 if method == "flow" else 0.03)
        if day <= 0:
            return 0.0
        if day < self.tmax:
            fraction = max(day - first, 0.0) / (self.tmax - first)
            return float(early * (peak / early) ** fraction)
        slow = math.log(2) / (40.0 if method == "flow" else 70.0)
        fast = math.log(2) / 3.5
        after = day - self.tmax
        return peak * (0.85 * math.exp(-fast * after) + 0.15 * math.exp(-slow * after))


@dataclass(frozen=True)
class Efficacy:
    """The disease course: ctDNA clearance and relapse, imaging recurrence, end of study."""

    clearance_visit: str | None
    relapse_visit: str | None
    recurrence_visit: str | None
    recurrence_sites: tuple[str, ...]
    death_after_recurrence_days: int | None
    lost_after_visit: str | None
    growth_per_day: float


@dataclass(frozen=True)
class CrsDay:
    """What made one day's CRS grade, so vitals and the assessment agree."""

    grade: int
    temperature: float
    hypotension: str
    hypoxia: str
    oxygen_flow: float | None
    vasopressors: tuple[str, ...]


@dataclass
class Course:
    """Everything that will happen to an enrolled patient, by study day."""

    dose_level: str
    dose_number: int
    dose_per_kg: float
    infused: bool
    leukapheresis_day: int
    infusion_time: time
    visit_days: dict[str, int]
    crs: Episode | None
    icans: Episode | None
    crs_days: dict[int, CrsDay]
    adverse_events: list[AdverseEvent]
    dlt_kind: str | None
    dlt_event_key: str | None
    kinetics: Kinetics
    efficacy: Efficacy
    dosing_weight: float
    end_day: int
    end_reason: str

    @property
    def visits(self) -> list[tuple[str, int]]:
        """Visits (code, study day) the patient attends, in order."""
        return sorted(self.visit_days.items(), key=lambda item: item[1])


def _crs_episode(rng: random.Random, dlt_kind: str | None, dose_number: int) -> Episode | None:
    onset = rng.choice((0, 1, 1, 1, 2, 2, 3))
    if dlt_kind == "crs_grade_4":
        return Episode(onset, (1, 2, 4, 4, 3, 2, 1))
    if dlt_kind == "crs_grade_3_over_72h":
        return Episode(onset, (1, 2, 3, 3, 3, 3, 2, 1))
    if rng.random() >= risk(CRS_RISK, dose_number):
        return None
    worst = _weighted(rng, (("1", 0.6), ("2", 0.35), ("3", 0.05)))
    if worst == "1":
        return Episode(onset, (1,) * rng.randint(1, 3))
    if worst == "2":
        return Episode(onset, (1, *(2,) * rng.randint(1, 3), 1))
    return Episode(onset, (1, 2, 3, 3, 2, 1))  # grade 3 for 48 h: not a DLT


def _icans_episode(
    rng: random.Random, dlt_kind: str | None, dose_number: int, crs: Episode | None
) -> Episode | None:
    start = (crs.onset_day if crs else 3) + rng.randint(2, 4)
    if dlt_kind == "icans_grade_3_or_more":
        return Episode(start, (1, 2, 3, 3, 2, 1))
    if crs is None or rng.random() >= risk(ICANS_RISK, dose_number):
        return None
    if rng.random() < 0.7:
        return Episode(start, (1,) * rng.randint(1, 2))
    return Episode(start, (1, 2, 2, 1))


def _crs_day(rng: random.Random, grade: int) -> CrsDay:
    if grade == 0:
        return CrsDay(0, round(rng.uniform(36.4, 37.4), 1), "none", "none", None, ())
    temperature = round(rng.uniform(38.2, 39.0 + 0.3 * grade), 1)
    if grade == 1:
        return CrsDay(1, temperature, "none", "none", None, ())
    if grade == 2:
        if rng.random() < 0.5:
            return CrsDay(2, temperature, "no_vasopressor", "none", None, ())
        return CrsDay(2, temperature, "none", "low_flow", float(rng.randint(2, 5)), ())
    if grade == 3:
        if rng.random() < 0.5:
            return CrsDay(3, temperature, "one_vasopressor", "low_flow", 3.0, ("norepinephrine",))
        return CrsDay(3, temperature, "no_vasopressor", "high_flow", float(rng.randint(10, 40)), ())
    return CrsDay(
        4,
        temperature,
        "multiple_vasopressors",
        "high_flow",
        40.0,
        ("norepinephrine", "epinephrine"),
    )


def _visit_days(rng: random.Random, leukapheresis_offset: int) -> dict[str, int]:
    days = {"LEUK": -leukapheresis_offset, "LD": -5, "D0": 0}
    for code, target, jitter in FOLLOW_UP:
        # The end of the DLT window and the last visit are never early.
        low = 0 if code in ("D28", "M24") else -jitter
        days[code] = target + rng.randint(low, jitter)
    return days


def _adverse_events(
    rng: random.Random,
    dose_number: int,
    dlt_kind: str | None,
    crs: Episode | None,
    icans: Episode | None,
) -> list[AdverseEvent]:
    events: list[AdverseEvent] = []
    if crs is not None:
        rises = _rises(crs)
        events.append(
            AdverseEvent(
                "crs",
                CRS_TERM,
                crs.onset_day,
                rises,
                crs.resolution_day,
                "definite",
                "unrelated",
                special_interest=True,
                treated=crs.worst >= 2,
            )
        )
    if icans is not None:
        events.append(
            AdverseEvent(
                "icans",
                ICANS_TERM,
                icans.onset_day,
                _rises(icans),
                icans.resolution_day,
                "probable",
                "unrelated",
                special_interest=True,
                treated=icans.worst >= 2,
            )
        )
    # Lymphodepletion makes everyone neutropenic; a DLT is grade 4 past day 28.
    onset = rng.randint(0, 2)
    if dlt_kind == "neutropenia_grade_4_unrecovered_day_28":
        neutropenia = AdverseEvent(
            "neutropenia",
            "Neutrophil count decreased",
            onset,
            ((onset, 3), (onset + 2, 4)),
            rng.randint(38, 52),
            "probable",
            "probable",
        )
    else:
        grade_four = rng.random() < 0.55
        grades = ((onset, 3), (onset + 2, 4)) if grade_four else ((onset, 3),)
        neutropenia = AdverseEvent(
            "neutropenia",
            "Neutrophil count decreased",
            onset,
            grades,
            rng.randint(10, 20),
            "possible",
            "probable",
        )
    events.append(neutropenia)
    events.append(
        AdverseEvent(
            "lymphopenia",
            "Lymphocyte count decreased",
            0,
            ((0, 4),),
            rng.randint(14, 26),
            "possible",
            "definite",
        )
    )
    if rng.random() < 0.6:
        start = rng.randint(4, 8)
        platelets = int(_weighted(rng, (("1", 0.4), ("2", 0.4), ("3", 0.2))))
        events.append(
            AdverseEvent(
                "thrombocytopenia",
                "Platelet count decreased",
                start,
                ((start, platelets),),
                start + rng.randint(6, 14),
                "possible",
                "probable",
            )
        )
    if rng.random() < 0.5:
        start = rng.randint(3, 8)
        events.append(
            AdverseEvent(
                "anaemia", "Anemia", start, ((start, 2),), start + rng.randint(8, 20), "possible"
            )
        )
    if dlt_kind == "non_haematological_grade_3_over_7_days":
        start = rng.randint(7, 10)
        events.append(
            AdverseEvent(
                "colitis",
                "Colitis",
                start,
                ((start, 2), (start + 1, 3)),
                start + rng.randint(16, 20),
                "probable",
                special_interest=True,
                treated=True,
            )
        )
    elif rng.random() < risk(DIARRHOEA_RISK, dose_number):
        start = rng.randint(6, 12)
        grade = 1 if rng.random() < 0.6 else 2
        events.append(
            AdverseEvent(
                "diarrhoea",
                "Diarrhea",
                start,
                ((start, grade),),
                start + rng.randint(2, 6),
                "possible",
                special_interest=True,
            )
        )
    for key, term, chance, relationship in (
        ("fatigue", "Fatigue", 0.5, "possible"),
        ("nausea", "Nausea", 0.3, "unlikely"),
        ("hypoalbuminaemia", "Hypoalbuminemia", 0.25 if crs else 0.05, "possible"),
        ("alt", "Alanine aminotransferase increased", 0.2, "possible"),
        ("headache", "Headache", 0.2, "unlikely"),
    ):
        if rng.random() < chance:
            start = rng.randint(1, 10)
            grade = 2 if key in ("hypoalbuminaemia", "alt") and rng.random() < 0.3 else 1
            events.append(
                AdverseEvent(
                    key, term, start, ((start, grade),), start + rng.randint(2, 12), relationship
                )
            )
    if rng.random() < 0.3:
        # A later infection: an AE, but outside the 28-day TEAE window.
        start = rng.randint(45, 150)
        events.append(
            AdverseEvent(
                "infection",
                "Upper respiratory infection",
                start,
                ((start, rng.choice((1, 2))),),
                start + rng.randint(5, 12),
                "unlikely",
            )
        )
    return events


def _rises(episode: Episode) -> tuple[tuple[int, int], ...]:
    rises: list[tuple[int, int]] = []
    worst = 0
    for offset, grade in enumerate(episode.grades):
        if grade > worst:
            worst = grade
            rises.append((episode.onset_day + offset, grade))
    return tuple(rises)


def _efficacy(rng: random.Random, dose_number: int, visit_days: Mapping[str, int]) -> Efficacy:
    cleared = rng.random() < risk(CLEARANCE_CHANCE, dose_number)
    clearance = relapse = recurrence = None
    if cleared:
        clearance = _weighted(rng, (("D28", 0.4), ("M2", 0.35), ("M3", 0.25)))
        if rng.random() < 0.35:
            relapse = _weighted(rng, (("M6", 0.3), ("M9", 0.3), ("M12", 0.25), ("M18", 0.15)))
            lead = rng.randint(45, 150)
            due = visit_days[relapse] + lead
            recurrence = next((v for v in IMAGING_VISITS if visit_days[v] >= due), None)
    elif rng.random() < 0.8:
        recurrence = _weighted(
            rng, (("M3", 0.2), ("M6", 0.3), ("M9", 0.25), ("M12", 0.15), ("M18", 0.1))
        )
    sites: tuple[str, ...] = ()
    death_after = None
    if recurrence is not None:
        first = _weighted(rng, (("liver", 0.6), ("lung", 0.25), ("peritoneum", 0.15)))
        sites = (first, "lymph_nodes") if rng.random() < 0.2 else (first,)
        # An early recurrence carries the worse prognosis.
        if rng.random() < (0.6 if recurrence in ("M3", "M6") else 0.35):
            death_after = rng.randint(90, 360)
    lost = "M9" if recurrence is None and rng.random() < 0.05 else None
    return Efficacy(
        clearance_visit=clearance,
        relapse_visit=relapse,
        recurrence_visit=recurrence,
        recurrence_sites=sites,
        death_after_recurrence_days=death_after,
        lost_after_visit=lost,
        growth_per_day=rng.uniform(0.006, 0.014),
    )


def draw_course(
    rng: random.Random,
    baseline: Baseline,
    dose_level: str,
    dose_number: int,
    dose_per_kg: float,
    *,
    infused: bool = True,
) -> Course:
    """The patient's course from enrolment at a dose level (``infused`` False: never dosed)."""
    leukapheresis_offset = 21 + rng.randint(0, 3)
    visit_days = _visit_days(rng, leukapheresis_offset)
    dlt_kind = None
    if infused and rng.random() < risk(DLT_RISK, dose_number):
        dlt_kind = _weighted(rng, DLT_KINDS)
    crs = _crs_episode(rng, dlt_kind, dose_number)
    icans = _icans_episode(rng, dlt_kind, dose_number, crs)
    crs_days: dict[int, CrsDay] = {}
    for day in range(0, 29):
        crs_days[day] = _crs_day(rng, crs.grade_on(day) if crs else 0)
    events = _adverse_events(rng, dose_number, dlt_kind, crs, icans)
    severity = max((crs.worst if crs else 0), (icans.worst if icans else 0))
    boost = math.exp(rng.gauss(0, 0.55)) * (1 + 0.35 * severity)
    kinetics = Kinetics(
        flow_peak=risk(FLOW_PEAK, dose_number) * boost * math.exp(rng.gauss(0, 0.2)),
        qpcr_peak=risk(QPCR_PEAK, dose_number) * boost * math.exp(rng.gauss(0, 0.2)),
        tmax=float(rng.choice((7, 10, 10, 14)) if dose_number < 3 else rng.choice((7, 7, 10, 14))),
    )
    efficacy = _efficacy(rng, dose_number, visit_days)
    dlt_event = {
        "crs_grade_4": "crs",
        "crs_grade_3_over_72h": "crs",
        "icans_grade_3_or_more": "icans",
        "non_haematological_grade_3_over_7_days": "colitis",
        "neutropenia_grade_4_unrecovered_day_28": "neutropenia",
    }.get(dlt_kind or "")
    course = Course(
        dose_level=dose_level,
        dose_number=dose_number,
        dose_per_kg=dose_per_kg,
        infused=infused,
        leukapheresis_day=-leukapheresis_offset,
        infusion_time=time(9, 30 + rng.randint(0, 25)),
        visit_days=visit_days,
        crs=crs,
        icans=icans,
        crs_days=crs_days,
        adverse_events=events,
        dlt_kind=dlt_kind,
        dlt_event_key=dlt_event,
        kinetics=kinetics,
        efficacy=efficacy,
        dosing_weight=round(baseline.weight_kg - rng.uniform(0, 2.0), 1),
        end_day=0,
        end_reason="completed",
    )
    _settle_end(course, rng)
    return course


def _settle_end(course: Course, rng: random.Random) -> None:
    """Cut the schedule where the patient leaves and set the end of study."""
    days = course.visit_days
    if not course.infused:
        # Product not released: the patient leaves after leukapheresis.
        course.visit_days = {"LEUK": days["LEUK"]}
        course.end_day = days["LEUK"] + 16
        course.end_reason = "other"
        course.adverse_events = []
        return
    efficacy = course.efficacy
    last = "M24"
    if efficacy.recurrence_visit is not None:
        last = efficacy.recurrence_visit
        if efficacy.death_after_recurrence_days is not None:
            course.end_day = days[last] + efficacy.death_after_recurrence_days
            course.end_reason = "death"
        else:
            course.end_day = days[last] + rng.randint(10, 20)
            course.end_reason = "other"
    elif efficacy.lost_after_visit is not None:
        last = efficacy.lost_after_visit
        course.end_day = days["M12"]
        course.end_reason = "lost_to_follow_up"
    else:
        course.end_day = days["M24"]
    cut = days[last]
    course.visit_days = {code: day for code, day in days.items() if day <= cut}
    course.adverse_events = [ae for ae in course.adverse_events if ae.onset_day <= cut]


# Form data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabState:
    """What a day's laboratory values are built around."""

    anc: float
    alc: float
    platelets: float
    hemoglobin: float
    alt_factor: float
    crs_grade: int
    cea: float


@dataclass
class ScreeningChart:
    """How to write a patient's forms before enrolment (no course is known yet)."""

    baseline: Baseline
    zone: tzinfo
    rng: random.Random

    def screening_form(self, form: str) -> FormData | None:
        """The data of one screening form; None for a form the model does not write."""
        writers: dict[str, Callable[[], FormData]] = {
            "informed_consent": self.informed_consent,
            "demographics": self.demographics,
            "surgery_history": self.surgery_history,
            "ctdna_result": self.screening_ctdna,
            "vital_signs": self.screening_vitals,
            "labs": self.screening_labs,
            "imaging": self.screening_imaging,
            "rcl_test": self.screening_rcl,
            "ada_test": self.screening_ada,
            "eligibility": self.eligibility,
        }
        writer = writers.get(form)
        return writer() if writer else None

    # Screening ---------------------------------------------------------------------

    def informed_consent(self) -> FormData:
        """Consent on the ICF in force."""
        return {
            "consent_date": _iso(self.baseline.consent),
            "icf_version": "2.1",
            "icf_version_date": "2021-12-20",
            "consent_time_recorded": True,
            "signed_by": "subject",
            "witness_present": False,
            "copy_given_to_subject": True,
            "genomic_testing_consent": True,
            "ltfu_consent": True,
            "reconsent": False,
        }

    def demographics(self, weight_kg: float | None = None) -> FormData:
        """Sex, age, weight and height at screening."""
        data: FormData = {
            "collection_date": _iso(self.baseline.consent),
            "sex": self.baseline.sex,
            "age": self.baseline.age,
            "weight_kg": weight_kg if weight_kg is not None else self.baseline.weight_kg,
            "height_cm": self.baseline.height_cm,
            "race": "ASIAN",
            "ethnic_group": "han",
        }
        if self.baseline.sex == "F":
            data["childbearing_potential"] = self.baseline.childbearing
        return data

    def surgery_history(self) -> FormData:
        """The R0 liver resection and the adjuvant chemotherapy after it."""
        b = self.baseline
        return {
            "resection_date": _iso(b.resection),
            "r0": True,
            "liver_lesions": b.liver_lesions,
            "largest_lesion_mm": b.largest_lesion_mm,
            "min_margin_mm": self.rng.randint(2, 12),
            "hepatectomy_type": "minor" if b.liver_lesions < 3 else "major",
            "approach": self.rng.choice(("open", "laparoscopic", "laparoscopic")),
            "ablation_combined": False,
            "primary_site": b.primary_site,
            "synchronous": self.rng.random() < 0.4,
            "histology": "adenocarcinoma",
            "cea_ihc_percent": self.rng.choice((60, 70, 80, 90)),
            "ras_status": b.ras_status,
            "braf_status": "wild_type",
            "mmr_status": "proficient",
            "perioperative_chemotherapy": True,
            "chemotherapy_regimen": "CAPOX x 4 cycles adjuvant after hepatectomy",
            "chemotherapy_end_date": _iso(b.chemotherapy_end),
        }

    def screening_ctdna(self) -> FormData:
        """The post-resection ctDNA result that makes the patient eligible."""
        sampled = self.baseline.consent + timedelta(days=2)
        return _ctdna(sampled, True, self.baseline.ctdna_mtm, self.rng)

    def eligibility(self) -> FormData:
        """The investigator's confirmation of every criterion."""
        data: FormData = {
            "assessment_date": _iso(self.baseline.eligibility_day),
            "criteria_met": True,
            "r0_resection_date": _iso(self.baseline.resection),
            "ctdna_positive": True,
            "cea_positive": True,
            "ecog": self.rng.choice((0, 0, 1)),
            "age": self.baseline.age,
        }
        for criterion in (
            "inc_age_18_to_75",
            "inc_crlm_r0_resected",
            "inc_no_residual_disease_on_imaging",
            "inc_cea_ihc_over_50_percent",
            "inc_ctdna_positive_after_adjuvant",
            "inc_ecog_0_to_1",
            "inc_life_expectancy_6_months",
            "inc_adequate_organ_function",
            "inc_contraception_agreed",
            "inc_written_consent",
        ):
            data[criterion] = True
        for criterion in (
            "exc_active_infection",
            "exc_prior_gene_or_cell_therapy",
            "exc_autoimmune_or_inflammatory_bowel_disease",
            "exc_systemic_immunosuppression",
            "exc_cns_disorder",
            "exc_significant_cardiac_disease",
            "exc_pregnant_or_breastfeeding",
            "exc_other_malignancy_5_years",
            "exc_recent_anticancer_therapy",
            "exc_other_investigational_product",
            "exc_uncontrolled_intercurrent_illness",
        ):
            data[criterion] = False
        return data

    def screening_imaging(self) -> FormData:
        """Baseline CT: no disease after the hepatectomy."""
        return {
            "imaging_date": _iso(self.baseline.consent + timedelta(days=5)),
            "modality": "CT",
            "body_regions": ["chest", "abdomen", "pelvis"],
            "contrast": True,
            "adequate": True,
            "recurrence": False,
            "findings": "Post-hepatectomy changes; no evidence of residual or recurrent disease.",
        }

    def screening_vitals(self) -> FormData:
        """Vital signs at screening."""
        moment = datetime.combine(
            self.baseline.consent + timedelta(days=3), time(9, 10), tzinfo=self.zone
        )
        return self._vitals(moment, None, "routine", weight=self.baseline.weight_kg)

    def screening_labs(self) -> FormData:
        """Laboratory tests at screening."""
        return self._labs(self.baseline.consent + timedelta(days=3), None)

    def screening_rcl(self) -> FormData:
        """Baseline replication-competent lentivirus test."""
        return _rcl(self.baseline.consent + timedelta(days=3))

    def screening_ada(self) -> FormData:
        """Baseline anti-drug antibodies."""
        return _ada(self.baseline.consent + timedelta(days=3), False, self.rng)

    # Vital signs and laboratory values -------------------------------------------------

    def _crs_state(self, study_day: int | None) -> CrsDay | None:
        """The CRS of a study day (none before the course is known)."""
        return None

    def _lab_state(self, study_day: int | None) -> LabState:
        """Baseline values (before the course is known)."""
        h = self.baseline.haematology
        return LabState(h["anc"], h["alc"], h["platelets"], h["hemoglobin"], 1.0, 0, h["cea"])

    def _vitals(
        self, moment: datetime, study_day: int | None, timepoint: str, weight: float | None
    ) -> FormData:
        state = self._crs_state(study_day)
        grade = state.grade if state else 0
        data: FormData = {
            "assessment_datetime": moment.isoformat(),
            "timepoint": timepoint,
            "temperature_c": state.temperature if state else round(self.rng.uniform(36.3, 37.1), 1),
            "temperature_route": "axillary",
            "heart_rate_bpm": self.rng.randint(68, 88) + 12 * grade,
            "systolic_bp_mmhg": self.rng.randint(112, 134),
            "diastolic_bp_mmhg": self.rng.randint(68, 84),
            "respiratory_rate_per_min": self.rng.randint(14, 18) + 2 * grade,
            "spo2_percent": self.rng.randint(96, 99),
            "oxygen_supplement": False,
        }
        if state and state.hypotension != "none":
            data["systolic_bp_mmhg"] = self.rng.randint(82, 92)
            data["diastolic_bp_mmhg"] = self.rng.randint(48, 56)
        if state and state.oxygen_flow is not None:
            data["spo2_percent"] = self.rng.randint(91, 95)
            data["oxygen_supplement"] = True
            data["oxygen_flow_l_per_min"] = state.oxygen_flow
        if weight is not None:
            data["weight_kg"] = weight
        return data

    def _labs(self, on: date, study_day: int | None) -> FormData:
        state = self._lab_state(study_day)
        noise = self.rng.uniform
        alt = self.baseline.haematology["alt"]
        crs = state.crs_grade
        data: FormData = {
            "collection_date": _iso(on),
            "lab_name": "Changhai Hospital central laboratory",
            "wbc_10e9_per_l": round(state.anc + state.alc + noise(0.2, 0.6), 2),
            "anc_10e9_per_l": round(state.anc, 2),
            "alc_10e9_per_l": round(state.alc, 2),
            "hemoglobin_g_per_l": round(state.hemoglobin + noise(-3, 3)),
            "platelets_10e9_per_l": round(state.platelets),
            "alt_u_per_l": round(alt * state.alt_factor * noise(0.9, 1.1)),
            "ast_u_per_l": round(alt * noise(0.8, 1.1)),
            "total_bilirubin_umol_per_l": round(noise(6, 16), 1),
            "albumin_g_per_l": round(noise(36, 44) - 4 * crs, 1),
            "creatinine_umol_per_l": round(noise(52, 88)),
            "sodium_mmol_per_l": round(noise(136, 142)),
            "potassium_mmol_per_l": round(noise(3.6, 4.7), 1),
            "ldh_u_per_l": round(noise(150, 230) + 60 * crs),
            "crp_mg_per_l": round(noise(2, 8) + 45 * crs, 1),
            "ferritin_ug_per_l": round(noise(180, 420) + 900 * crs),
            "il6_pg_per_ml": round(noise(3, 9) * (5**crs), 1),
            "fibrinogen_g_per_l": round(noise(2.4, 3.8), 2),
            "inr": round(noise(0.95, 1.1), 2),
            "cea_ng_per_ml": round(state.cea, 1),
            "ca19_9_u_per_ml": round(noise(8, 30)),
        }
        if self.baseline.childbearing and study_day in (None, -5):
            data["pregnancy_test"] = "negative"
        return data


@dataclass
class Chart(ScreeningChart):
    """A patient's course on the calendar (study time zone), and how to write each form."""

    course: Course
    infusion_day: date

    def day(self, study_day: int) -> date:
        """The calendar date of a study day."""
        return self.infusion_day + timedelta(days=study_day)

    def moment(self, study_day: int, at: time) -> datetime:
        """An instant on a study day, local time."""
        return datetime.combine(self.day(study_day), at, tzinfo=self.zone)

    @property
    def infusion_at(self) -> datetime:
        """The start of the infusion."""
        return self.moment(0, self.course.infusion_time)

    def _sample_time(self, study_day: int) -> datetime:
        start = self.infusion_at + timedelta(days=study_day)
        return start + timedelta(minutes=self.rng.randint(-50, 50))

    def visit_form(self, form: str, code: str) -> FormData | None:
        """The data of one scheduled form at a visit; None for forms entered elsewhere."""
        if code == "SCR":
            return self.screening_form(form)
        day = self.course.visit_days[code]
        by_day: dict[str, Callable[[int], FormData]] = {
            "vital_signs": self.vitals,
            "labs": self.labs,
            "crs_assessment": self.crs_assessment,
            "icans_assessment": self.icans_assessment,
        }
        by_code: dict[str, Callable[[str], FormData]] = {
            "ctdna_result": self.ctdna,
            "imaging": self.imaging,
            "rcl_test": self.rcl,
            "ada_test": self.ada,
        }
        if form in by_day:
            return by_day[form](day)
        if form in by_code:
            return by_code[form](code)
        if form == "pk_sample":
            return self.pk_pre_dose() if day == 0 else self.pk(code)
        once: dict[str, Callable[[], FormData]] = {
            "leukapheresis": self.leukapheresis,
            "lymphodepletion": self.lymphodepletion,
            "cart_infusion": self.cart_infusion,
        }
        writer = once.get(form)
        return writer() if writer else None

    # Cell collection, lymphodepletion, infusion ----------------------------------------

    def leukapheresis(self) -> FormData:
        """The apheresis that collects the patient's T cells."""
        day = self.course.visit_days["LEUK"]
        start = self.moment(day, time(8, 30))
        return {
            "procedure_date": _iso(self.day(day)),
            "start_datetime": start.isoformat(),
            "end_datetime": (start + timedelta(minutes=self.rng.randint(180, 260))).isoformat(),
            "completed": True,
            "venous_access": "peripheral",
            "processed_blood_volume_l": round(self.rng.uniform(9.0, 14.0), 1),
            "pre_alc_10e9_per_l": round(self.baseline.haematology["alc"], 2),
            "product_volume_ml": self.rng.randint(150, 230),
            "product_tnc_10e9": round(self.rng.uniform(8.0, 16.0), 1),
            "product_cd3_10e9": round(self.rng.uniform(3.0, 7.0), 1),
            "product_id": f"CHH-{self.baseline.number:03d}-AP-01",
            "shipped_to_manufacturing": True,
            "complications": False,
        }

    def lymphodepletion(self) -> FormData:
        """Fludarabine and cyclophosphamide, days -5 to -3."""
        return {
            "start_date": _iso(self.day(-5)),
            "end_date": _iso(self.day(-3)),
            "regimen": "flu_cy",
            "bsa_m2": self.baseline.bsa_m2,
            "fludarabine_mg_per_m2_day": 30,
            "fludarabine_days": 3,
            "cyclophosphamide_mg_per_m2_day": 500,
            "cyclophosphamide_days": 3,
            "completed_as_planned": True,
        }

    def cart_infusion(self) -> FormData:
        """The infusion at the assigned dose; cells for the dosing weight, within 7%."""
        weight = self.course.dosing_weight
        cells = self.course.dose_per_kg * weight * self.rng.uniform(0.94, 1.06)
        start = self.infusion_at
        return {
            "infusion_datetime": start.isoformat(),
            "infusion_end_datetime": (
                start + timedelta(minutes=self.rng.randint(12, 25))
            ).isoformat(),
            "dose_level": self.course.dose_level,
            "weight_kg": weight,
            "total_car_t_cells": float(round(cells, -4)),
            "product_lot": f"CEA-CAR-{self.day(-8):%y%m%d}-{self.baseline.number:02d}",
            "coi_verified": True,
            "volume_ml": self.rng.choice((50, 60, 70)),
            "viability_percent": round(self.rng.uniform(86.0, 96.0), 1),
            "car_positive_percent": round(self.rng.uniform(30.0, 55.0), 1),
            "premedication": ["paracetamol", "antihistamine"],
            "infusion_completed": True,
            "infusion_reaction": False,
        }

    # Visits ---------------------------------------------------------------------------

    def vitals(self, study_day: int) -> FormData:
        """Vital signs on a visit day (pre-infusion on day 0)."""
        if study_day == 0:
            moment = self.infusion_at - timedelta(minutes=20)
            return self._vitals(moment, 0, "pre_infusion", weight=self.course.dosing_weight)
        moment = self.moment(study_day, time(8, 0)) + timedelta(minutes=self.rng.randint(0, 90))
        weight = self.course.dosing_weight if study_day >= 60 else None
        return self._vitals(moment, study_day, "routine", weight=weight)

    def labs(self, study_day: int) -> FormData:
        """Haematology, chemistry and inflammation markers on a study day."""
        return self._labs(self.day(study_day), study_day)

    def _crs_state(self, study_day: int | None) -> CrsDay | None:
        """The CRS of a study day of the DLT window."""
        return self.course.crs_days.get(study_day) if study_day is not None else None

    def _lab_state(self, study_day: int | None) -> LabState:
        """Baseline values through lymphodepletion, cytopenias, CRS and recurrence."""
        state = super()._lab_state(study_day)
        if study_day is None:
            return state
        anc = self._cytopenia("neutropenia", study_day, state.anc, {3: (0.55, 0.95), 4: (0.1, 0.4)})
        alc = self._cytopenia("lymphopenia", study_day, state.alc, {4: (0.03, 0.18)})
        platelets = self._cytopenia(
            "thrombocytopenia", study_day, state.platelets, {1: (80, 140), 2: (52, 74), 3: (28, 48)}
        )
        hemoglobin = state.hemoglobin
        if -5 <= study_day <= 21:
            hemoglobin -= 14 if self._active("anaemia", study_day) else 6
        crs = self.course.crs_days.get(study_day, _NO_CRS).grade
        alt_factor = 2.5 if self._active("alt", study_day) else 1.0
        return LabState(anc, alc, platelets, hemoglobin, alt_factor, crs, self._cea(study_day))

    def _event(self, key: str) -> AdverseEvent | None:
        return next((ae for ae in self.course.adverse_events if ae.key == key), None)

    def _active(self, key: str, study_day: int | None) -> bool:
        event = self._event(key)
        if event is None or study_day is None:
            return False
        end = event.resolution_day if event.resolution_day is not None else 10_000
        return event.onset_day <= study_day < end

    def _cytopenia(
        self,
        key: str,
        study_day: int,
        baseline: float,
        ranges: Mapping[int, tuple[float, float]],
    ) -> float:
        event = self._event(key)
        if study_day < 0:
            return baseline * (0.6 if study_day >= -5 else 1.0) * self.rng.uniform(0.9, 1.1)
        if event is None or study_day < event.onset_day:
            scale = 0.5 if study_day < 14 else 0.85 if study_day < 60 else 1.0
            return baseline * scale * self.rng.uniform(0.9, 1.1)
        grade = event.grade_on(study_day)
        end = event.resolution_day
        if end is None or study_day < end:
            low, high = ranges.get(grade, ranges[max(ranges)])
            return self.rng.uniform(low, high)
        recovered = min(1.0, 0.7 + (study_day - end) / 60)
        return baseline * recovered * self.rng.uniform(0.9, 1.1)

    def _cea(self, study_day: int) -> float:
        h = self.baseline.haematology
        recurrence = self.course.visit_days.get(self.course.efficacy.recurrence_visit or "")
        if recurrence is not None and study_day >= recurrence - 30:
            return h["cea"] * 4 + self.rng.uniform(5, 25)
        return h["cea"] * self.rng.uniform(0.9, 1.15)

    def pk_pre_dose(self) -> FormData:
        """The day-0 sample before the infusion: nothing to measure yet."""
        moment = self.infusion_at - timedelta(minutes=self.rng.randint(25, 45))
        return {
            "sample_datetime": moment.isoformat(),
            "nominal_day": 0,
            "pre_infusion": True,
            "flow_blq": True,
            "qpcr_blq": True,
        }

    def pk_one_hour(self) -> FormData:
        """The sample one hour after the start of the infusion (an unscheduled visit)."""
        moment = self.infusion_at + timedelta(minutes=self.rng.randint(55, 70))
        return self._pk(moment, 0.04)

    def pk(self, code: str) -> FormData:
        """A scheduled PK sample: flow cytometry and qPCR, BLQ below each LLOQ."""
        nominal = next((target for visit, target, _ in FOLLOW_UP if visit == code), None)
        study_day = self.course.visit_days[code]
        return self._pk(self._sample_time(study_day), float(nominal or study_day))

    def _pk(self, moment: datetime, nominal: float) -> FormData:
        elapsed = (moment - self.infusion_at).total_seconds() / 86400
        data: FormData = {
            "sample_datetime": moment.isoformat(),
            "nominal_day": nominal,
            "pre_infusion": False,
        }
        for method, lloq, value_field, blq_field, digits in (
            ("flow", FLOW_LLOQ, "flow_cells_per_ul", "flow_blq", 2),
            ("qpcr", QPCR_LLOQ, "qpcr_copies_per_ug", "qpcr_blq", 0),
        ):
            value = self.course.kinetics.level(method, elapsed) * math.exp(self.rng.gauss(0, 0.12))
            if value < lloq:
                data[blq_field] = True
            else:
                data[blq_field] = False
                data[value_field] = round(value, 2) if digits else float(round(value))
        return data

    def crs_assessment(self, study_day: int) -> FormData:
        """The ASTCT CRS components of a day, with the investigator's grade."""
        state = self.course.crs_days.get(study_day) or _crs_day(self.rng, 0)
        toci_day = self._first_day_at("crs", 2)
        treated = toci_day is not None and study_day >= toci_day and state.grade > 0
        data: FormData = {
            "assessment_date": _iso(self.day(study_day)),
            "fever": state.grade > 0,
            "max_temperature_c": state.temperature,
            "hypotension": state.hypotension,
            "hypoxia": state.hypoxia,
            "antipyretic_or_anticytokine": treated,
            "corticosteroids_given": state.grade >= 3,
            "icu_admission": state.grade >= 3,
            "investigator_grade": state.grade,
        }
        if state.grade >= 3:
            data["antipyretic_or_anticytokine"] = True
        if state.oxygen_flow is not None:
            data["oxygen_flow_l_per_min"] = state.oxygen_flow
        if state.vasopressors:
            data["vasopressors"] = list(state.vasopressors)
        if treated and study_day == toci_day:
            data["tocilizumab_doses"] = 1
        return data

    def _first_day_at(self, key: str, grade: int) -> int | None:
        event = self._event(key)
        if event is None:
            return None
        return next((day for day, g in event.grades if g >= grade), None)

    def icans_assessment(self, study_day: int) -> FormData:
        """The ICE score items and the other ASTCT ICANS domains of a day."""
        grade = self.course.icans.grade_on(study_day) if self.course.icans else 0
        items = {
            0: (True, True, True, True, True, True, True, 3, "alert"),
            1: (True, True, True, True, True, False, False, 3, "awakens_spontaneously"),
            2: (False, True, True, False, True, False, False, 2, "awakens_to_voice"),
            3: (False, False, False, False, False, False, False, 1, "awakens_to_touch"),
        }[min(grade, 3)]
        year, month, city, hospital, command, sentence, counts, objects, consciousness = items
        score = sum((year, month, city, hospital, command, sentence, counts)) + objects
        return {
            "assessment_date": _iso(self.day(study_day)),
            "orientation_year": year,
            "orientation_month": month,
            "orientation_city": city,
            "orientation_hospital": hospital,
            "follows_command": command,
            "writes_sentence": sentence,
            "counts_back": counts,
            "names_objects": objects,
            "consciousness": consciousness,
            "seizure": "none",
            "motor_weakness": False,
            "cerebral_edema": "none",
            "neuroimaging_performed": grade >= 3,
            "corticosteroids_given": grade >= 2,
            "antiepileptic_given": True,
            "ice_total_recorded": score,
            "investigator_grade": min(grade, 3),
        }

    def ctdna(self, code: str) -> FormData:
        """The ctDNA result of a follow-up visit, from the disease course."""
        study_day = self.course.visit_days[code]
        return _ctdna(self.day(study_day), *self._ctdna_state(code), self.rng)

    def _ctdna_state(self, code: str) -> tuple[bool, float]:
        efficacy = self.course.efficacy
        order = list(CTDNA_VISITS)
        index = order.index(code)
        day = self.course.visit_days[code]
        cleared = efficacy.clearance_visit
        relapsed = efficacy.relapse_visit
        growth = efficacy.growth_per_day
        if cleared is not None and index >= order.index(cleared):
            if relapsed is None or index < order.index(relapsed):
                return False, 0.0
            since = day - self.course.visit_days[relapsed]
            return True, 0.2 * math.exp(growth * since)
        start = self.baseline.ctdna_mtm * 0.4
        return True, start * math.exp(growth * max(day - 28, 0))

    def imaging(self, code: str) -> FormData:
        """Follow-up imaging; the recurrence visit shows the new lesions."""
        study_day = self.course.visit_days[code]
        efficacy = self.course.efficacy
        data: FormData = {
            "imaging_date": _iso(self.day(study_day)),
            "modality": "MRI" if code in ("M6", "M18") else "CT",
            "body_regions": ["liver"] if code in ("M6", "M18") else ["chest", "abdomen", "pelvis"],
            "contrast": True,
            "adequate": True,
            "recurrence": code == efficacy.recurrence_visit,
        }
        if code == efficacy.recurrence_visit:
            lesions = self.rng.randint(1, 3)
            data["sites"] = list(efficacy.recurrence_sites)
            data["new_lesions"] = lesions
            data["biopsy_confirmed"] = self.rng.random() < 0.5
            where = " and ".join(site.replace("_", " ") for site in efficacy.recurrence_sites)
            data["findings"] = f"{lesions} new lesion(s): {where}; consistent with recurrence."
        else:
            data["findings"] = "No evidence of recurrent disease."
        return data

    def rcl(self, code: str) -> FormData:
        """Replication-competent lentivirus: always negative."""
        return _rcl(self.day(self.course.visit_days[code]))

    def ada(self, code: str) -> FormData:
        """Anti-drug antibodies: occasionally a low positive titre after month 2."""
        positive = code in ("M3", "M6") and self.rng.random() < 0.12
        return _ada(self.day(self.course.visit_days[code]), positive, self.rng)

    # Logs and the end ------------------------------------------------------------------

    def adverse_event(self, event: AdverseEvent, study_day: int) -> FormData:
        """The AE as known on a study day: worst grade so far, resolved or ongoing."""
        grade = event.grade_on(study_day)
        resolved = event.resolution_day is not None and study_day >= event.resolution_day
        data: FormData = {
            "term": event.term,
            "onset_date": _iso(self.day(event.onset_day)),
            "ongoing": not resolved,
            "grade": grade,
            "serious": False,
            "relationship": event.relationship,
            "outcome": "recovered" if resolved else "recovering",
        }
        if resolved and event.resolution_day is not None:
            data["resolution_date"] = _iso(self.day(event.resolution_day))
        if event.relationship_lymphodepletion is not None:
            data["relationship_lymphodepletion"] = event.relationship_lymphodepletion
        if event.special_interest:
            data["special_interest"] = True
        if event.treated:
            data["treatment_given"] = grade >= 2
        if grade >= 3 or (event.key in ("crs", "icans") and grade >= 2):
            data["serious"] = True
            data["sae_criteria"] = {
                "death": False,
                "life_threatening": grade >= 4,
                "hospitalisation": True,
                "disability": False,
                "congenital_anomaly": False,
                "other_important": False,
            }
            first_serious = next(
                day
                for day, g in event.grades
                if g >= 3 or (event.key in ("crs", "icans") and g >= 2)
            )
            data["sae_report_date"] = _iso(self.day(first_serious + 1))
        return data

    def conmeds(self) -> list[tuple[int, FormData, str | None]]:
        """Concomitant medications as (day recorded, data, key of the AE they treat)."""
        records: list[tuple[int, FormData, str | None]] = []
        course = self.course
        if not course.infused:
            return records
        end = min(30, max(d for d in course.visit_days.values()))
        records.append(
            (
                end,
                _medication(
                    "levetiracetam",
                    "antiepileptic",
                    "Seizure prophylaxis after CAR-T infusion",
                    self.day(0),
                    self.day(end),
                    500,
                    "mg",
                    "oral",
                    "bid",
                ),
                None,
            )
        )
        toci_day = self._first_day_at("crs", 2)
        if toci_day is not None:
            records.append(
                (
                    toci_day,
                    _medication(
                        "tocilizumab",
                        "tocilizumab",
                        "Cytokine release syndrome grade 2 or more",
                        self.day(toci_day),
                        self.day(toci_day),
                        8,
                        "mg/kg",
                        "intravenous",
                        "once",
                    ),
                    "crs",
                )
            )
        for key, indication in (
            ("icans", "ICANS grade 2 or more"),
            ("crs", "Cytokine release syndrome grade 3 or more"),
        ):
            start = self._first_day_at(key, 2 if key == "icans" else 3)
            if start is None:
                continue
            stop = start + 2
            records.append(
                (
                    stop,
                    _medication(
                        "dexamethasone",
                        "corticosteroid",
                        indication,
                        self.day(start),
                        self.day(stop),
                        10,
                        "mg",
                        "intravenous",
                        "q6h",
                    ),
                    key,
                )
            )
        return records

    def end_of_study(self) -> FormData:
        """Completion, death, loss to follow-up, or leaving after recurrence."""
        course = self.course
        end = self.day(course.end_day)
        data: FormData = {"end_date": _iso(end), "reason": course.end_reason}
        last_visit = max(course.visit_days.values())
        if course.end_reason == "death":
            data["death_date"] = _iso(end)
            data["death_cause"] = "disease_recurrence"
            data["last_contact_date"] = _iso(self.day(course.end_day - self.rng.randint(7, 30)))
        elif course.end_reason == "other" and not course.infused:
            data["reason_other"] = (
                "Not infused: the CAR-T product did not meet its release criteria; "
                "no re-manufacture possible."
            )
            data["last_contact_date"] = _iso(end)
        elif course.end_reason == "other":
            data["reason_other"] = (
                "Started systemic therapy for imaging-confirmed recurrence; followed for "
                "survival off study."
            )
            data["last_contact_date"] = _iso(end)
            data["ltfu_transfer"] = True
        elif course.end_reason == "lost_to_follow_up":
            data["last_contact_date"] = _iso(self.day(last_visit))
        else:
            data["last_contact_date"] = _iso(end)
            data["ltfu_transfer"] = True
        return data


_NO_CRS = CrsDay(0, 36.8, "none", "none", None, ())


def _ctdna(sampled: date, detected: bool, mtm: float, rng: random.Random) -> FormData:
    data: FormData = {
        "sample_date": _iso(sampled),
        "result": "detected" if detected else "not_detected",
        "quantification_qualified": True,
        "assay": "Signatera",
        "assay_type": "tumour_informed",
        "variants_tracked": 16,
        "report_date": _iso(sampled + timedelta(days=rng.randint(7, 11))),
    }
    if detected:
        value = min(max(round(mtm, 2), 0.02), 900_000.0)
        data["mtm_per_ml"] = value
        data["variants_detected"] = min(16, max(1, round(2 + math.log1p(value) * 2)))
    else:
        data["mtm_per_ml"] = 0
        data["variants_detected"] = 0
    return data


def _rcl(sampled: date) -> FormData:
    return {
        "sample_date": _iso(sampled),
        "result": "negative",
        "method": "vsvg_qpcr",
        "vsvg_copies_per_ug": 0,
        "lab_name": "Sponsor gene therapy QC laboratory",
    }


def _ada(sampled: date, positive: bool, rng: random.Random) -> FormData:
    data: FormData = {
        "sample_date": _iso(sampled),
        "result": "positive" if positive else "negative",
        "assay": "Bridging ECL anti-CAR ADA v1",
    }
    if positive:
        data["titre"] = rng.choice((20, 40, 80))
        data["neutralizing"] = False
    return data


def _medication(
    name: str,
    category: str,
    indication: str,
    start: date,
    end: date,
    dose: float,
    unit: str,
    route: str,
    frequency: str,
) -> FormData:
    return {
        "medication": name,
        "category": category,
        "indication": indication,
        "dose": dose,
        "dose_unit": unit,
        "route": route,
        "frequency": frequency,
        "start_date": _iso(start),
        "end_date": _iso(end),
        "ongoing": False,
    }
