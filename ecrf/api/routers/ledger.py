"""The ledger for regulators, monitors and data managers: events, keys, seals, verification."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ecrf.api.deps import App, CurrentActor
from ecrf.domain.errors import ConflictError
from ecrf.ledger.seals import Seal
from ecrf.ledger.verify import Report

router = APIRouter(tags=["ledger"])


class LedgerEventPublic(BaseModel):
    """One stored event, in commit order, with its place in the hash chain."""

    position: int
    stream: str
    version: int
    type: str
    at: datetime | None
    actor: str | None
    data: dict[str, Any] | None
    prev_hash: str | None
    hash: str | None


class LedgerKeyPublic(BaseModel):
    """A public key that signs (or signed) seals."""

    key_id: str
    algorithm: str
    public_key_pem: str


class SealPublic(BaseModel):
    """A signed checkpoint of the running head (see docs/ledger.md for the message)."""

    position: int
    head: str
    at: str
    signature: str
    key_id: str
    kind: str
    # Each value is [last version, its hash]; typed as a plain array because tuple
    # schemas (prefixItems) are not understood by every OpenAPI client.
    streams: dict[str, list[int | str]]
    event_position: int | None
    reason: str

    @classmethod
    def of(cls, seal: Seal) -> SealPublic:
        """From a seal."""
        return cls.model_validate(seal.to_dict())


class ProblemPublic(BaseModel):
    """One verification finding."""

    kind: str
    position: int | None
    stream: str | None
    version: int | None
    detail: str


class VerificationPublic(BaseModel):
    """The outcome of verifying the whole log."""

    ok: bool
    events: int
    head: str
    sealed_through: int
    last_position: int
    seals: int
    unsealed: int
    problems: list[ProblemPublic]
    notes: list[str]

    @classmethod
    def of(cls, report: Report) -> VerificationPublic:
        """From a verification report."""
        return cls.model_validate(report.to_dict())


NEXT_AFTER_HEADER = "X-Next-After"
"""Response header of ``GET /ledger/events``: the ``after`` that continues the listing."""


@router.get(
    "/ledger/events",
    responses={
        200: {
            "headers": {
                NEXT_AFTER_HEADER: {
                    "description": "Pass as `after` for the next page: the position of the "
                    "last event returned or, when the log ended first, the last position read.",
                    "schema": {"type": "integer"},
                }
            }
        }
    },
)
def ledger_events(
    application: App,
    actor: CurrentActor,
    response: Response,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Return events after this position.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    stream: Annotated[UUID | None, Query(description="Only this stream's events.")] = None,
) -> list[LedgerEventPublic]:
    """Stored events in commit order, paged by position.

    Fewer than ``limit`` events means the log ended; a monitor's page skips other sites'
    events but is still filled up to ``limit`` while there are events they may see.
    Continue with ``after`` = the last event's position (or the X-Next-After header).
    """
    page = application.ledger.events(actor, after=after, limit=limit, stream=stream)
    response.headers[NEXT_AFTER_HEADER] = str(page.next_after)
    return [LedgerEventPublic.model_validate(e) for e in page.events]


@router.get("/ledger/keys")
def ledger_keys(application: App, actor: CurrentActor) -> list[LedgerKeyPublic]:
    """The public keys seals are checked with."""
    return [LedgerKeyPublic.model_validate(k) for k in application.ledger.keys(actor)]


@router.get("/ledger/seals")
def ledger_seals(application: App, actor: CurrentActor) -> list[SealPublic]:
    """Every seal in the log, oldest first (keep a copy: it shows a log cut short later)."""
    return [SealPublic.of(s) for s in application.ledger.seals(actor)]


@router.post(
    "/ledger/seals",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Nothing new to seal: the newest seal."}},
)
def seal_ledger(application: App, actor: CurrentActor, response: Response) -> SealPublic:
    """Seal the log now (201), or return the newest seal when nothing new was logged (200)."""
    before = application.ledger.last_seal()
    seal = application.ledger.request_seal(actor)
    if seal is None:
        raise ConflictError("nothing to seal: the log is empty")
    if before is not None and seal.signature == before.seal.signature:
        response.status_code = status.HTTP_200_OK
    return SealPublic.of(seal)


@router.get("/ledger/verify")
def verify_ledger(application: App, actor: CurrentActor) -> VerificationPublic:
    """Recompute every hash and seal from the stored bytes."""
    return VerificationPublic.of(application.ledger.verify(actor))


@router.get(
    "/exports/ledger.jsonl",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def export_ledger(application: App, actor: CurrentActor) -> StreamingResponse:
    """The whole log as JSON lines, for `ecrf verify --file` (streamed).

    A monitor's export is partial (its header says so): the casebooks of their sites and
    the ledger stream with its seals and keys, verified stream by stream.
    """
    lines = application.ledger.export(actor)
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="ledger.jsonl"'},
    )
