"""Point-in-time read models: replay the log as it stood at an instant into memory.

``as_of=T`` must give exactly the state at T, so nothing is derived from the current rows:
the events with a timestamp <= T are replayed, in commit order, through the same projection
code into a private in-memory SQLite database, and the same report functions read it.
Commit order and timestamp order can differ slightly between streams (an event's time is
taken before its transaction commits); within one stream the replay stops at the first
event after T, exactly as a casebook's own ``as_of`` does.

Only the event types the projections handle are replayed (a log is mostly logins and
seals). The position reported is nevertheless that of the whole log prefix, over every event
type: the last notification, in commit order, stamped at or before T (each stream still
stopping at its first event after T). So ``as_of(now)`` states the log head as a live report
does, and ``as_of(T)`` states the same position as an export with ``as_of=T``. Finding it
costs one more read, of the events after the last one replayed (for ``as_of(now)`` just the
few at the end of the log), whose timestamps alone are needed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from functools import singledispatchmethod
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper
from eventsourcing.utils import get_topic
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool

from projections.runner import Projection, flush_pending

BATCH = 1000


def replay_as_of(
    recorder: ApplicationRecorder,
    mapper: Mapper[Any],
    projections: Sequence[Projection],
    moment: datetime,
) -> tuple[Engine, int]:
    """An in-memory engine holding ``projections`` as of ``moment``, and its log position.

    The position is the last notification of any type at or before ``moment`` (see the
    module docstring), not only of the types the projections handle.
    """
    # Commits after this read never leak in, however long the replay takes.
    end = int(recorder.max_notification_id() or 0)
    # One shared connection: every ":memory:" connection would otherwise be its own database.
    engine = create_engine("sqlite://", poolclass=StaticPool)
    for projection in projections:
        projection.metadata.create_all(engine)
    topics = handled_topics(projections)
    position = 0
    finished: set[Any] = set()
    start: int | None = None
    with engine.begin() as conn:
        while end > 0:
            notifications = recorder.select_notifications(
                start=start, limit=BATCH, stop=end, topics=topics, inclusive_of_start=False
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
        flush_pending(conn)  # the rows the handlers collected (see runner.PendingRows)
    if topics:
        position = last_position_at(recorder, mapper, moment, position, end, set(topics), finished)
    return engine, position


def last_position_at(
    recorder: ApplicationRecorder,
    mapper: Mapper[Any],
    moment: datetime,
    after: int,
    end: int,
    skip_topics: Collection[str] = (),
    finished: set[Any] | None = None,
) -> int:
    """The last log position in (``after``, ``end``] stamped at or before ``moment``.

    ``after`` when there is none. Events of ``skip_topics`` after ``after`` are known to be
    excluded already; a stream is excluded from its first event after ``moment`` on.
    Commit order and time order can differ slightly, so the whole range is read.
    """
    finished = set() if finished is None else finished
    position, start = after, after
    while start < end:
        notifications = recorder.select_notifications(
            start=start, limit=BATCH, stop=end, inclusive_of_start=False
        )
        for notification in notifications:
            if notification.topic in skip_topics or notification.originator_id in finished:
                continue
            domain_event: Any = mapper.to_domain_event(notification)
            if domain_event.timestamp > moment:
                finished.add(notification.originator_id)
                continue
            position = notification.id
        if len(notifications) < BATCH:
            break
        start = notifications[-1].id
    return position


def handled_topics(projections: Sequence[Projection]) -> list[str]:
    """Topics of the events the projections' handlers take; empty (all) if unknown."""
    topics: set[str] = set()
    for projection in projections:
        # A subclass may add handlers and pass the rest on to its base class's dispatcher
        # (DoseCohorts over EntryFacts), so every dispatcher in the MRO counts.
        dispatchers = [
            klass.__dict__["process"]
            for klass in type(projection).__mro__
            if isinstance(klass.__dict__.get("process"), singledispatchmethod)
        ]
        if not dispatchers:
            return []
        for process in dispatchers:
            topics.update(
                get_topic(cls) for cls in process.dispatcher.registry if cls is not object
            )
    return sorted(topics)
