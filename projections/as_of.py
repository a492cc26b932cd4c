"""Point-in-time read models: replay the log as it stood at an instant into memory.

``as_of=T`` must give exactly the state at T, so nothing is derived from the current rows:
the events with a timestamp <= T are replayed, in commit order, through the same projection
code into a private in-memory SQLite database, and the same report functions read it.
Commit order and timestamp order can differ slightly between streams (an event's time is
taken before its transaction commits); within one stream the replay stops at the first
event after T, exactly as a casebook's own ``as_of`` does.

Only the event types the projections handle are read (a log is mostly logins and seals),
so the position reported is that of the last replayed event those projections consumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import singledispatchmethod
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper
from eventsourcing.utils import get_topic
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool

from projections.runner import Projection

BATCH = 1000


def replay_as_of(
    recorder: ApplicationRecorder,
    mapper: Mapper[Any],
    projections: Sequence[Projection],
    moment: datetime,
) -> tuple[Engine, int]:
    """An in-memory engine holding ``projections`` as of ``moment``, and its log position."""
    # One shared connection: every ":memory:" connection would otherwise be its own database.
    engine = create_engine("sqlite://", poolclass=StaticPool)
    for projection in projections:
        projection.metadata.create_all(engine)
    topics = handled_topics(projections)
    position = 0
    finished: set[Any] = set()
    start: int | None = None
    with engine.begin() as conn:
        while True:
            notifications = recorder.select_notifications(
                start=start, limit=BATCH, topics=topics, inclusive_of_start=False
            )
            for notification in notifications:
                if notification.originator_id in finished:
                    continue
                domain_event: Any = mapper.to_domain_event(notification)
                if domain_event.timestamp > moment:
                    finished.add(notification.originator_id)
                    continue
                for projection in projections:
                    projection.process(domain_event, conn, notification.id)
                position = notification.id
            if len(notifications) < BATCH:
                break
            start = notifications[-1].id
    return engine, position


def handled_topics(projections: Sequence[Projection]) -> list[str]:
    """Topics of the events the projections' handlers take; empty (all) if unknown."""
    topics: set[str] = set()
    for projection in projections:
        process = next(
            (
                klass.__dict__["process"]
                for klass in type(projection).__mro__
                if isinstance(klass.__dict__.get("process"), singledispatchmethod)
            ),
            None,
        )
        if process is None:
            return []
        topics.update(get_topic(cls) for cls in process.dispatcher.registry if cls is not object)
    return sorted(topics)
