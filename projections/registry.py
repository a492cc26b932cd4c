"""The projections this system runs, wired to an application's log."""

from __future__ import annotations

from typing import Any

from ecrf.config import Settings
from projections.clinical_facts import ClinicalFacts
from projections.dose_cohorts import DoseCohorts
from projections.query_list import QueryList
from projections.runner import Projection, ProjectionRunner, make_engine
from projections.subject_directory import SubjectDirectory


def all_projections() -> list[Projection]:
    """Every read model, each rebuildable from the log."""
    return [
        SubjectDirectory(),
        QueryList(),
        ClinicalFacts(),
        DoseCohorts(),
    ]


# Projections of earlier releases and their tables, dropped when a runner starts: the five
# clinical read models each kept a copy of the facts that ClinicalFacts now keeps once.
RETIRED = {
    name: (f"{name}_subjects", f"{name}_entries")
    for name in (
        "patient_timeline",
        "safety_tables",
        "pk_profiles",
        "mrd_courses",
        "recurrence_free_survival",
    )
}


def build_runner(application: Any, settings: Settings) -> ProjectionRunner:
    """A runner for every projection, storing read models in the same database."""
    engine = make_engine(settings.database.sqlalchemy_url())
    return ProjectionRunner(
        application.recorder, application.mapper, engine, all_projections(), retired=RETIRED
    )
