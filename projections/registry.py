"""The projections this system runs, wired to an application's log."""

from __future__ import annotations

from typing import Any

from ecrf.config import Settings
from projections.dose_cohorts import DoseCohorts
from projections.mrd import MrdCourses
from projections.pk import PkProfiles
from projections.query_list import QueryList
from projections.rfs import RecurrenceFreeSurvival
from projections.runner import Projection, ProjectionRunner, make_engine
from projections.safety import SafetyTables
from projections.subject_directory import SubjectDirectory
from projections.timeline import PatientTimeline


def all_projections() -> list[Projection]:
    """Every read model, each rebuildable from the log."""
    return [
        SubjectDirectory(),
        QueryList(),
        PatientTimeline(),
        SafetyTables(),
        PkProfiles(),
        MrdCourses(),
        RecurrenceFreeSurvival(),
        DoseCohorts(),
    ]


def build_runner(application: Any, settings: Settings) -> ProjectionRunner:
    """A runner for every projection, storing read models in the same database."""
    engine = make_engine(settings.database.sqlalchemy_url())
    return ProjectionRunner(application.recorder, application.mapper, engine, all_projections())
