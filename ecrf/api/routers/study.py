"""Study metadata: the definition, sites and form schemas."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from ecrf.api.deps import App, CurrentActor
from ecrf.api.models import FormSummary, SitePublic
from ecrf.commands import AddSite

router = APIRouter(tags=["study"])


@router.get("/study")
def get_study(application: App, actor: CurrentActor) -> dict[str, Any]:
    """The study definition: dose levels, visits, forms per visit, settings."""
    return application.forms.study


@router.get("/sites")
def list_sites(application: App, actor: CurrentActor) -> list[SitePublic]:
    """The study's sites."""
    return [SitePublic.model_validate(s) for s in application.list_sites(actor)]


@router.post("/sites", status_code=status.HTTP_201_CREATED)
def add_site(application: App, actor: CurrentActor, body: AddSite) -> SitePublic:
    """Add a site (admin)."""
    application.add_site(actor, body)
    return SitePublic(site_id=body.site_id, name=body.name)


@router.get("/forms")
def list_forms(application: App, actor: CurrentActor) -> list[FormSummary]:
    """Every released form version."""
    forms = application.forms
    return [
        FormSummary(
            form=f.form,
            version=f.version,
            title=f.title,
            sha256=f.sha256,
            current=f.version == forms.current_version(f.form),
        )
        for f in forms
    ]


@router.get("/forms/{form}/{version}")
def get_form(application: App, actor: CurrentActor, form: str, version: int) -> dict[str, Any]:
    """One form version's JSON Schema, exactly as released."""
    return application.forms.get(form, version).schema
