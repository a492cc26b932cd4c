"""Monitoring and sign-off: queries, source data verification, signatures and locks."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, status
from sqlalchemy import select

from ecrf.api.deps import App, CurrentActor, Projections
from ecrf.api.models import (
    CasebookPublic,
    CasebookSignaturePublic,
    EntryPublic,
    QueryPublic,
    QuerySummary,
    SignaturePublic,
)
from ecrf.api.views import casebook_public, entry_public, query_public, signature_public
from ecrf.commands import AnswerQuery, CloseQuery, Lock, OpenQuery, ReopenQuery, Sign, VerifySource
from ecrf.domain.access import SITE_BOUND_ROLES, Action
from projections.query_list import QueryList, queries

router = APIRouter(tags=["monitoring"])

ENTRY = "/subjects/{subject_id}/entries/{entry_id}"


@router.post(f"{ENTRY}/queries", status_code=status.HTTP_201_CREATED)
def open_query(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: OpenQuery
) -> QueryPublic:
    """Question one field of an entry (monitor, data manager)."""
    subject, query_id, position = application.open_query(actor, subject_id, entry_id, body)
    return query_public(subject, query_id, position)


@router.get("/queries")
def list_queries(
    runner: Projections,
    actor: CurrentActor,
    state: Literal["open", "answered", "closed"] | None = None,
    site: str | None = None,
    subject: str | None = None,
    form: str | None = None,
) -> list[QuerySummary]:
    """Queries visible to the caller, filtered by state, site, subject and form."""
    role = actor.role_for(Action.READ_CASEBOOK)
    runner.catch_up([QueryList.name])
    query = select(queries).order_by(queries.c.opened_at, queries.c.query_id)
    if role in SITE_BOUND_ROLES:
        query = query.where(queries.c.site.in_(actor.sites))
    for column, value in (
        ("state", state),
        ("site", site),
        ("subject_id", subject),
        ("form", form),
    ):
        if value is not None:
            query = query.where(queries.c[column] == value)
    with runner.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [QuerySummary.model_validate(dict(row)) for row in rows]


@router.get("/queries/{query_id}")
def get_query(application: App, actor: CurrentActor, query_id: str) -> QueryPublic:
    """One query with its whole conversation."""
    subject = application.subject(actor, application.subject_of_query(query_id))
    return query_public(subject, query_id, application.subject_position(subject))


@router.post("/queries/{query_id}/answer")
def answer_query(
    application: App, actor: CurrentActor, query_id: str, body: AnswerQuery
) -> QueryPublic:
    """Answer an open query (site staff, investigator)."""
    subject, _, position = application.answer_query(actor, query_id, body)
    return query_public(subject, query_id, position)


@router.post("/queries/{query_id}/close")
def close_query(
    application: App, actor: CurrentActor, query_id: str, body: CloseQuery | None = None
) -> QueryPublic:
    """Close a query (monitor, data manager)."""
    subject, _, position = application.close_query(actor, query_id, body or CloseQuery())
    return query_public(subject, query_id, position)


@router.post("/queries/{query_id}/reopen")
def reopen_query(
    application: App, actor: CurrentActor, query_id: str, body: ReopenQuery | None = None
) -> QueryPublic:
    """Reopen a closed query (monitor, data manager)."""
    subject, _, position = application.reopen_query(actor, query_id, body or ReopenQuery())
    return query_public(subject, query_id, position)


@router.post(f"{ENTRY}/sdv")
def verify_source(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: VerifySource
) -> EntryPublic:
    """Mark the entry's current revision verified against source (monitor)."""
    subject, entry, position = application.verify_source(actor, subject_id, entry_id, body)
    return entry_public(subject, entry, position)


@router.post(f"{ENTRY}/signature", status_code=status.HTTP_201_CREATED)
def sign_entry(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: Sign
) -> SignaturePublic:
    """Sign an entry with username, password and meaning (investigator)."""
    _, signature, _ = application.sign_entry(actor, subject_id, entry_id, body)
    return signature_public(signature, valid=True)


@router.post("/subjects/{subject_id}/signature", status_code=status.HTTP_201_CREATED)
def sign_casebook(
    application: App, actor: CurrentActor, subject_id: str, body: Sign
) -> CasebookSignaturePublic:
    """Sign a whole casebook (investigator)."""
    _, signed, _ = application.sign_casebook(actor, subject_id, body)
    manifestation = signature_public(signed.signature, valid=True).model_dump()
    return CasebookSignaturePublic(**manifestation, entries=signed.entries)


@router.post(f"{ENTRY}/lock")
def lock_entry(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: Lock
) -> EntryPublic:
    """Lock an entry (data manager)."""
    subject, _, position = application.lock(actor, subject_id, entry_id, body, locked=True)
    return entry_public(subject, subject.entry(entry_id), position)


@router.post(f"{ENTRY}/unlock")
def unlock_entry(
    application: App, actor: CurrentActor, subject_id: str, entry_id: str, body: Lock
) -> EntryPublic:
    """Unlock an entry (data manager)."""
    subject, _, position = application.lock(actor, subject_id, entry_id, body, locked=False)
    return entry_public(subject, subject.entry(entry_id), position)


@router.post("/subjects/{subject_id}/lock")
def lock_casebook(
    application: App, actor: CurrentActor, subject_id: str, body: Lock
) -> CasebookPublic:
    """Lock a whole casebook (data manager)."""
    subject, _, position = application.lock(actor, subject_id, None, body, locked=True)
    return casebook_public(subject, position, None)


@router.post("/subjects/{subject_id}/unlock")
def unlock_casebook(
    application: App, actor: CurrentActor, subject_id: str, body: Lock
) -> CasebookPublic:
    """Unlock a whole casebook (data manager)."""
    subject, _, position = application.lock(actor, subject_id, None, body, locked=False)
    return casebook_public(subject, position, None)
