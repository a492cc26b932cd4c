"""Shaping domain objects into response models."""

from __future__ import annotations

from datetime import datetime

from ecrf.api.models import (
    CasebookPublic,
    CasebookSignaturePublic,
    ChangePublic,
    EntryPublic,
    MigrationPublic,
    QueryMessagePublic,
    QueryPublic,
    SignaturePublic,
)
from ecrf.application import EntryMigration
from ecrf.domain.patch import diff
from ecrf.domain.subject import Entry, Signature, Subject


def signature_public(signature: Signature, valid: bool) -> SignaturePublic:
    """A signature manifestation."""
    return SignaturePublic(
        signer=signature.signer,
        signer_name=signature.signer_name,
        at=signature.at,
        meaning=signature.meaning,
        statement=signature.statement,
        revision=signature.revision,
        data_hash=signature.data_hash,
        valid=valid,
    )


def entry_public(subject: Subject, entry: Entry, position: int) -> EntryPublic:
    """One entry as the API shows it, with SDV, signature, lock and query states."""
    changed = []
    if entry.verified_data is not None and entry.sdv == "changed_since_verified":
        changed = [
            ChangePublic(path=c["path"], old=c["old"], new=c["new"])
            for c in diff(entry.verified_data, entry.data)
        ]
    return EntryPublic(
        entry_id=entry.entry_id,
        form=entry.form,
        version=entry.version,
        visit=entry.visit,
        data=entry.data,
        revision=entry.revision,
        voided=entry.voided,
        schema_sha256=entry.schema_sha256,
        recorded_at=entry.recorded_at,
        recorded_by=entry.recorded_by,
        updated_at=entry.updated_at,
        sdv=entry.sdv,
        sdv_revision=entry.verified_revision,
        sdv_by=entry.verified_by,
        sdv_at=entry.verified_at,
        sdv_changes=changed,
        signed=entry.signed,
        signatures=[signature_public(s, entry.signature_valid(s)) for s in entry.signatures],
        locked=entry.locked or subject.locked,
        open_queries=subject.open_queries(entry.entry_id),
        position=position,
    )


def migration_public(subject: Subject, migration: EntryMigration, position: int) -> MigrationPublic:
    """A migration of one entry and the entry after it (as it would be, on a dry run)."""
    return MigrationPublic(
        dry_run=migration.dry_run,
        entry_id=migration.entry_id,
        form=migration.form,
        from_version=migration.from_version,
        to_version=migration.to_version,
        schema_sha256=migration.schema_sha256,
        changes=[
            ChangePublic(path=c["path"], old=c["old"], new=c["new"]) for c in migration.changes
        ],
        entry=entry_public(subject, subject.entry(migration.entry_id), position),
        position=position,
    )


def casebook_public(subject: Subject, position: int, as_of: datetime | None) -> CasebookPublic:
    """A whole casebook as the API shows it, entries in the order they were recorded."""
    entries = [entry_public(subject, e, position) for e in subject.entries.values()]
    live = [e for e in entries if not e.voided]
    if not live or all(e.sdv == "not_verified" for e in live):
        sdv = "not_verified"
    elif all(e.sdv == "verified" for e in live):
        sdv = "verified"
    else:
        sdv = "partially_verified"
    signatures = [
        CasebookSignaturePublic(
            **signature_public(s.signature, subject.casebook_signature_valid(s)).model_dump(),
            entries=s.entries,
        )
        for s in subject.casebook_signatures
    ]
    return CasebookPublic(
        subject_id=subject.subject_id,
        site=subject.site,
        screening_number=subject.screening_number,
        status=subject.status,
        dose_level=subject.dose_level,
        as_of=as_of,
        position=position,
        revision=subject.version,
        locked=subject.locked,
        sdv=sdv,
        signed=any(s.valid for s in signatures),
        signatures=signatures,
        open_queries=sum(e.open_queries for e in entries),
        entries=entries,
    )


def query_public(subject: Subject, query_id: str, position: int) -> QueryPublic:
    """One query with its conversation."""
    query = subject.query(query_id)
    return QueryPublic(
        query_id=query.query_id,
        subject_id=subject.subject_id,
        site=subject.site,
        entry_id=query.entry_id,
        form=query.form,
        path=query.path,
        revision=query.revision,
        state=query.state,
        system=query.system,
        opened_by=query.opened_by,
        opened_at=query.opened_at,
        messages=[
            QueryMessagePublic(
                action=m.action, text=m.text, user=m.user, user_name=m.user_name, at=m.at
            )
            for m in query.messages
        ],
        position=position,
    )
