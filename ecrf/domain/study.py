"""The StudyRegistry aggregate: the sites taking part, added by attributed events."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from ecrf.domain.errors import ConflictError
from ecrf.domain.ids import study_stream


class StudyRegistry(Aggregate):
    """The study's list of sites; small and rarely written, so one stream suffices."""

    class Created(Aggregate.Created):
        """The study was set up from its definition."""

        study_id: str
        audit: dict[str, Any]

    class SiteAdded(Aggregate.Event):
        """A site joined the study."""

        site_id: str
        name: str
        audit: dict[str, Any]

    @staticmethod
    def create_id(study_id: str, **_: Any) -> UUID:
        """One registry per study id."""
        return study_stream(study_id)

    @event(Created)
    def __init__(self, study_id: str, audit: dict[str, Any]) -> None:
        self.study_id = study_id
        self.sites: dict[str, str] = {}

    def add_site(self, site_id: str, name: str, audit: dict[str, Any]) -> None:
        """Add a site; a site id is never reused."""
        if site_id in self.sites:
            raise ConflictError(f"site {site_id} already exists")
        self._site_added(site_id, name, audit)

    @event(SiteAdded)
    def _site_added(self, site_id: str, name: str, audit: dict[str, Any]) -> None:
        self.sites[site_id] = name
