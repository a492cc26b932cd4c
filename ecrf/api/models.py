"""Response models of the HTTP API (request bodies are the commands in ecrf.commands)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel


def _as_utc(moment: datetime) -> datetime:
    """A naive time is UTC (SQLite hands back naive values); an aware one moves to UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]
"""A UTC instant; pydantic writes it as ISO 8601 with ``Z`` (API.md: timestamps are UTC)."""


class TokenPublic(BaseModel):
    """An issued bearer token."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int


class UserPublic(BaseModel):
    """An account as others may see it (never its password hash)."""

    username: str
    full_name: str
    roles: list[str]
    sites: list[str]
    active: bool = True
    locked: bool = False


class SitePublic(BaseModel):
    """A study site."""

    site_id: str
    name: str


class FormSummary(BaseModel):
    """One released form version; ``current`` marks the version new entries get."""

    form: str
    version: int
    title: str
    sha256: str
    current: bool


class SubjectPublic(BaseModel):
    """A subject in a listing."""

    subject_id: str
    site: str
    screening_number: str
    status: str
    dose_level: str | None = None
    position: int


class ChangePublic(BaseModel):
    """Old and new value of one field, by JSON Pointer."""

    path: str
    old: Any
    new: Any


class SignaturePublic(BaseModel):
    """A signature manifestation (11.50): printed name, UTC time, meaning, what was signed."""

    signer: str
    signer_name: str
    at: UtcDateTime
    meaning: str
    statement: str
    revision: int
    data_hash: str
    valid: bool


class EntryPublic(BaseModel):
    """One form entry with its current data and states."""

    entry_id: str
    form: str
    version: int
    visit: str
    data: dict[str, Any]
    revision: int
    voided: bool
    schema_sha256: str
    recorded_at: UtcDateTime
    recorded_by: str
    updated_at: UtcDateTime | None
    sdv: str
    sdv_revision: int | None = None
    sdv_by: str | None = None
    sdv_at: UtcDateTime | None = None
    sdv_changes: list[ChangePublic] = []
    signed: bool
    signatures: list[SignaturePublic] = []
    locked: bool
    open_queries: int
    position: int


class MigrationPublic(BaseModel):
    """An entry moved (or, on a dry run, that would move) to a newer form version.

    ``changes`` are old and new per JSON Pointer path; ``entry`` is the entry after the
    migration (on a dry run: as it would be; nothing is stored).
    """

    dry_run: bool
    entry_id: str
    form: str
    from_version: int
    to_version: int
    schema_sha256: str
    changes: list[ChangePublic]
    entry: EntryPublic
    position: int


class CasebookSignaturePublic(SignaturePublic):
    """A signature over a whole casebook, with the entries and revisions it covers."""

    entries: list[dict[str, Any]]


class QueryMessagePublic(BaseModel):
    """One step of a query's conversation."""

    action: str
    text: str
    user: str
    user_name: str
    at: UtcDateTime


class QueryPublic(BaseModel):
    """A query and its conversation."""

    query_id: str
    subject_id: str
    site: str
    entry_id: str
    form: str
    path: str
    revision: int
    state: str
    system: bool
    opened_by: str
    opened_at: UtcDateTime
    messages: list[QueryMessagePublic]
    position: int


class CasebookPublic(BaseModel):
    """A subject's casebook: status and every entry, now or as of a moment.

    ``revision`` counts every change recorded in the casebook; a casebook signature can
    send it back as ``expected_revision`` to sign exactly what was read.
    """

    subject_id: str
    site: str
    screening_number: str
    status: str
    dose_level: str | None
    as_of: UtcDateTime | None
    position: int
    revision: int
    locked: bool
    sdv: str
    signed: bool
    signatures: list[CasebookSignaturePublic]
    open_queries: int
    entries: list[EntryPublic]


class AuditRecordPublic(BaseModel):
    """One audit record: who did what, when, in which role, why, and what changed."""

    position: int
    event_id: str
    version: int
    at: UtcDateTime
    action: str
    user: str
    user_name: str
    role: str
    site: str
    reason: str
    request_id: str
    entry_id: str | None
    form: str | None
    revision: int | None
    changes: list[ChangePublic]
    details: dict[str, Any] = {}


class QuerySummary(BaseModel):
    """A query in a work list."""

    query_id: str
    subject_id: str
    site: str
    entry_id: str
    form: str
    path: str
    state: str
    system: bool
    opened_by: str
    opened_at: UtcDateTime
    last_text: str
    updated_at: UtcDateTime
    position: int


class EnrolmentPublic(BaseModel):
    """A subject's enrolment: the dose level and slot assigned."""

    subject_id: str
    status: str
    dose_level: str
    slot: int
    cohort: int
    position: int


class DoseLevelPublic(BaseModel):
    """Patients at one dose level by where their DLT outcome stands, and its status."""

    dose_level: str
    number: int
    dose_per_kg: int | float
    label: str
    assigned: int
    infused: int
    evaluable: int
    dlt: int
    pending: int
    not_evaluable: int
    open_slots: int
    status: str


class RecommendationPublic(BaseModel):
    """The 3+3 engine's recommendation; for ``stop``, ``dose_level`` is the MTD (or null)."""

    action: str
    dose_level: str | None
    mtd: str | None
    rule: str


class DecisionPublic(BaseModel):
    """A signed Safety Review Committee decision and the recommendation it was given."""

    number: int
    action: str
    dose_level: str | None
    rationale: str
    follows_recommendation: bool
    recommendation: RecommendationPublic
    outcomes: str
    opens: dict[str, Any] | None
    signer: str
    signer_name: str
    at: UtcDateTime
    meaning: str
    statement: str
    decision_hash: str
    position: int | None = None


class EnrolmentStatePublic(BaseModel):
    """Whether a slot is open now, where, and if not, why."""

    open: bool
    dose_level: str | None
    cohort: int | None
    open_slots: int
    reason: str


class CohortPublic(BaseModel):
    """One cohort: its dose, how many slots it has, and the decision that opened it."""

    number: int
    dose_level: str
    slots: int
    opened_at: UtcDateTime
    decision: int | None


class SlotPublic(BaseModel):
    """One slot; ``subject_id`` is null when the subject is at a site the reader cannot see.

    ``infused_at`` is the infusion instant of the subject's cart_infusion entry, if any.
    """

    slot: int
    cohort: int
    dose_level: str
    subject_id: str | None
    outcome: str
    infused: bool
    assigned_at: UtcDateTime
    infused_at: UtcDateTime | None = None


class CohortsPublic(BaseModel):
    """The dose-escalation state: levels, outcomes, recommendation, decisions, enrolment.

    ``position`` is the log position the state reflects; ``as_of`` the instant asked for.
    """

    levels: list[DoseLevelPublic]
    recommendation: RecommendationPublic
    mtd: str | None
    decisions: list[DecisionPublic]
    outcomes: str
    stopped: bool
    enrolment: EnrolmentStatePublic
    cohorts: list[CohortPublic]
    slots: list[SlotPublic]
    position: int
    as_of: UtcDateTime | None = None


class ProblemPublic(BaseModel):
    """One problem with an input, located by JSON Pointer."""

    path: str
    message: str
    location: str | None = None


class ErrorPublic(BaseModel):
    """Every error body: a message, or the list of problems for a 422."""

    detail: str | list[ProblemPublic]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorPublic, "description": description}
    for status, description in {
        401: "No, expired or invalid bearer token",
        403: "Your role or site does not allow this",
        404: "Unknown subject, entry, query, user or form",
        409: "Conflict: stale revision, duplicate, or a state that does not allow this",
        413: "Request body too large",
        422: "Invalid input; every problem is listed with its JSON Pointer",
        423: "Locked entry, casebook or account",
        503: "The database is unavailable; retry later",
    }.items()
}
