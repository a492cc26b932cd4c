"""Exports wired to the application: who may export, which cut, and the documents."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from ecrf.domain.access import Action, Actor, Role
from ecrf.domain.errors import InvalidInputError
from ecrf.export.casebooks import casebooks
from ecrf.export.cut import LogCut, take_cut
from ecrf.export.facts import casebook_facts
from ecrf.export.odm import KINDS, odm_chunks
from ecrf.export.sdtm import SdtmPackage, schema_units, sdtm_package

if TYPE_CHECKING:
    from ecrf.application import EcrfApplication

CLI_OPERATOR = Actor(
    username="cli",
    full_name="command-line operator (database access)",
    roles=(Role.DATA_MANAGER.value,),
    sites=(),
)
"""Who the command line exports as: whoever can reach the database can read it anyway."""


def visible_cut(application: EcrfApplication, actor: Actor, as_of: datetime | None) -> LogCut:
    """The cut for ``actor`` (403 unless they may export), limited to sites they see."""
    actor.role_for(Action.EXPORT)
    cut = take_cut(application, as_of)
    subjects = tuple(s for s in cut.subjects if actor.sees_site(s.site, Action.EXPORT))
    return replace(cut, subjects=subjects)


def odm_export(
    application: EcrfApplication, actor: Actor, kind: str, as_of: datetime | None = None
) -> tuple[LogCut, Iterator[bytes]]:
    """The cut and the ODM document (streamed) of type ``snapshot`` or ``transactional``."""
    actor.role_for(Action.EXPORT)
    if kind not in KINDS:
        raise InvalidInputError.single("/type", f"use one of: {', '.join(KINDS)}")
    cut = visible_cut(application, actor, as_of)
    return cut, odm_chunks(application, cut, kind)


def sdtm_export(
    application: EcrfApplication, actor: Actor, as_of: datetime | None = None
) -> tuple[LogCut, SdtmPackage]:
    """The cut and every SDTM dataset computed from the casebooks at it."""
    cut = visible_cut(application, actor, as_of)
    facts = [casebook_facts(subject) for subject in casebooks(application, cut)]
    # Units come from the newest version of each form (iteration is oldest first).
    units = schema_units({form.form: form.schema for form in application.forms})
    return cut, sdtm_package(application.forms.study, facts, units)
