"""Subjects, form entries, corrections, voids and audit trails."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, status
from sqlalchemy import select

from ecrf.api.deps import App, CallerOf, CurrentActor, Projections
from ecrf.api.models import (
    AuditRecordPublic,
    CasebookPublic,
    EntryPublic,
    MigrationPublic,
    SubjectPublic,
)
from ecrf.api.views import casebook_public, entry_public, migration_public
from ecrf.commands import CorrectEntry, MigrateEntry, RecordEntry, RegisterSubject, VoidEntry
from ecrf.domain.access import SITE_BOUND_ROLES, Action
from projections.subject_directory import SubjectDirectory, subjects

router = APIRouter(prefix="/subjects", tags=["subjects"])

AsOf = Annotated[
    datetime | None,
    Query(description="ISO 8601 instant; the state exactly as it stood then (UTC if no zone)"),
]


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.post("", status_code=status.HTTP_201_CREATED)
def register_subject(application: App, actor: CurrentActor, body: RegisterSubject) -> SubjectPublic:
    """Register a subject at a site."""
    subject, position = application.register_subject(actor, body)
    return SubjectPublic(
        subject_id=subject.subject_id,
        site=subject.site,
        screening_number=subject.screening_number,
        status=subject.status,
        position=position,
    )


@router.get("")
def list_subjects(
    application: App,
    runner: Projections,
    actor: CurrentActor,
    site: str | None = None,
    status: str | None = None,
) -> list[SubjectPublic]:
    """Subjects visible to the caller, optionally filtered by site and status."""
    role = actor.role_for(Action.READ_CASEBOOK)
    runner.catch_up([SubjectDirectory.name])
    query = select(subjects).order_by(subjects.c.subject_id)
    if role in SITE_BOUND_ROLES:
        query = query.where(subjects.c.site.in_(actor.sites))
    if site is not None:
        query = query.where(subjects.c.site == site)
    if status is not None:
        query = query.where(subjects.c.status == status)
    with runner.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [SubjectPublic.model_validate(dict(row)) for row in rows]


@router.get("/{subject_id}")
def get_casebook(
    application: App, actor: CurrentActor, subject_id: str, as_of: AsOf = None
) -> CasebookPublic:
    """A casebook now, or exactly as it stood at ``as_of``."""
    moment = _utc(as_of)
    subject = application.subject(actor, subject_id, moment)
    return casebook_public(subject, application.subject_position(subject), moment)


@router.post("/{subject_id}/entries", status_code=status.HTTP_201_CREATED)
async def record_entry(caller: CallerOf, subject_id: str, body: RecordEntry) -> EntryPublic:
    """Enter a form; the body is validated against the form's JSON Schema."""

    def run() -> EntryPublic:
        actor = caller.actor()
        subject, entry, position = caller.application.record_entry(actor, subject_id, body)
        return entry_public(subject, entry, position)

    # The busiest write takes one hop to the thread pool for the token check, the command
    # and the response; a sync dependency, a sync endpoint and the validation of a sync
    # endpoint's response would each take a hop (a thread switch and a wait for the GIL).
    # Only a few run at once (app.ENTRY_WRITERS); the rest wait on the event loop, not in
    # threads contending for the store's write lock.
    limiter: anyio.CapacityLimiter = caller.request.app.state.entry_writers
    return await anyio.to_thread.run_sync(run, limiter=limiter)


@router.get("/{subject_id}/entries/{entry_id}")
def get_entry(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, as_of: AsOf = None
) -> EntryPublic:
    """One entry now, or as it stood at ``as_of``."""
    subject = application.subject(actor, subject_id, _utc(as_of))
    return entry_public(subject, subject.entry(entry_id), application.subject_position(subject))


@router.post("/{subject_id}/entries/{entry_id}/corrections")
def correct_entry(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: CorrectEntry
) -> EntryPublic:
    """Change an entry with a JSON Merge Patch and a reason."""
    subject, entry, position = application.correct_entry(actor, subject_id, entry_id, body)
    return entry_public(subject, entry, position)


@router.post("/{subject_id}/entries/{entry_id}/void")
def void_entry(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: VoidEntry
) -> EntryPublic:
    """Mark an entry entered-in-error; it stays in the audit trail."""
    subject, entry, position = application.void_entry(actor, subject_id, entry_id, body)
    return entry_public(subject, entry, position)


@router.post("/{subject_id}/entries/{entry_id}/migrate")
def migrate_entry(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: MigrateEntry
) -> MigrationPublic:
    """Move an entry to a newer version of its form (data manager); a dry run stores nothing."""
    subject, migration, position = application.migrate_entry(actor, subject_id, entry_id, body)
    return migration_public(subject, migration, position)


@router.get("/{subject_id}/entries/{entry_id}/audit")
def entry_audit(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str
) -> list[AuditRecordPublic]:
    """Every change to one entry, oldest first."""
    records = application.audit_trail(actor, subject_id, entry_id)
    return [AuditRecordPublic.model_validate(r) for r in records]


@router.get("/{subject_id}/audit")
def subject_audit(
    application: App, actor: CurrentActor, subject_id: str
) -> list[AuditRecordPublic]:
    """Every event of a casebook, oldest first."""
    records = application.audit_trail(actor, subject_id)
    return [AuditRecordPublic.model_validate(r) for r in records]
