"""Standards exports for data managers and regulators: CDISC ODM 1.3.2 and SDTM datasets.

Every export states the log cut it reflects: ``X-Ecrf-Ledger-Position`` and
``X-Ecrf-Ledger-Head`` headers, plus ``X-Ecrf-As-Of``, the ``as_of`` that reproduces it;
and inside the file: the ODM root's ``Description`` and ``FileOID``, the XPT file label
(position and head prefix), the SDTM ``metadata.json``. A CSV has no room for it without
breaking its readers: its headers, or ``metadata.json`` at the same ``as_of``, state it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from ecrf.api.deps import App, CurrentActor
from ecrf.domain.access import Action
from ecrf.domain.errors import NotFoundError
from ecrf.export.sdtm import DOMAINS
from ecrf.export.sdtm_files import FORMATS, csv_bytes, metadata_bytes, xpt_bytes, xpt_label
from ecrf.export.service import odm_export, sdtm_export

router = APIRouter(prefix="/exports", tags=["exports"])

AsOf = Annotated[
    datetime | None,
    Query(
        description="ISO 8601 instant: the export exactly as the data stood then (UTC if no zone)"
    ),
]
OdmType = Annotated[
    Literal["snapshot", "transactional"],
    Query(
        alias="type",
        description="snapshot: current values of live entries; transactional: every change, "
        "audited (archival)",
    ),
]
_MEDIA = {"csv": "text/csv; charset=utf-8", "xpt": "application/x-sas-xport"}
XML: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/xml": {}}, "description": "An ODM 1.3.2 document (streamed)"}
}
DATASET: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {media: {} for media in _MEDIA.values()},
        "description": "One dataset as CSV or SAS XPORT v5",
    },
    404: {"description": "Unknown dataset or format"},
}


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get("/odm.xml", response_class=StreamingResponse, responses=XML)
def export_odm(
    application: App, actor: CurrentActor, kind: OdmType = "snapshot", as_of: AsOf = None
) -> StreamingResponse:
    """The study as CDISC ODM 1.3.2: metadata, users and sites, and the clinical data."""
    cut, chunks = odm_export(application, actor, kind, _utc(as_of))
    filename = f"odm-{kind}-{cut.position}.xml"
    return StreamingResponse(
        chunks,
        media_type="application/xml",
        headers={**cut.headers(), "Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/sdtm/metadata.json")
def export_sdtm_metadata(application: App, actor: CurrentActor, as_of: AsOf = None) -> Response:
    """Each SDTM dataset's variables (name, label, type, length) and the cut it reflects."""
    cut, package = sdtm_export(application, actor, _utc(as_of))
    return Response(
        metadata_bytes(package, cut), media_type="application/json", headers=cut.headers()
    )


@router.get("/sdtm/{domain}.{fmt}", responses=DATASET)
def export_sdtm_dataset(
    application: App, actor: CurrentActor, domain: str, fmt: str, as_of: AsOf = None
) -> Response:
    """One dataset (dm, ex, ae, suppae, pc, pp, is, lb, ds, adtte) as CSV or XPORT v5."""
    actor.role_for(Action.EXPORT)
    name, kind = domain.lower(), fmt.lower()
    if name not in DOMAINS:
        raise NotFoundError(f"no dataset {domain!r}; available: {', '.join(DOMAINS)}")
    if kind not in FORMATS:
        raise NotFoundError(f"no format {fmt!r}; use one of: {', '.join(FORMATS)}")
    cut, package = sdtm_export(application, actor, _utc(as_of))
    dataset = package.datasets[name]
    body = csv_bytes(dataset) if kind == "csv" else xpt_bytes(dataset, xpt_label(cut))
    filename = f"{name}.{kind}"
    return Response(
        body,
        media_type=_MEDIA[kind],
        headers={**cut.headers(), "Content-Disposition": f'attachment; filename="{filename}"'},
    )
