"""AccessRefusal: every refused request is an event (who tried what, and why it was refused)."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate, event


class AccessRefusal(Aggregate):
    """One refused request. One stream each, so recording never contends with anything."""

    class Recorded(Aggregate.Created):
        """A request was refused: no or bad token, role, site, or a locked account."""

        user: str
        method: str
        path: str
        status: int
        reason: str
        audit: dict[str, Any]

    @event(Recorded)
    def __init__(
        self, user: str, method: str, path: str, status: int, reason: str, audit: dict[str, Any]
    ) -> None:
        self.user = user
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
