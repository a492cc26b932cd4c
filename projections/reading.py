"""Reading the clinical projections now (caught up) or as of an instant (replayed)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from projections.as_of import replay_as_of
from projections.facts import EntryFacts, SubjectFacts, read_facts, snapshot, tracked_position
from projections.runner import ProjectionRunner


def load_facts(
    runner: ProjectionRunner,
    name: str,
    *,
    as_of: datetime | None = None,
    sites: Collection[str] | None = None,
    subject_id: str | None = None,
) -> tuple[list[SubjectFacts], int]:
    """A projection's facts and the log position they reflect.

    Without ``as_of`` the projection first catches up with the log, so a caller reads its
    own writes; with it, the log as it stood then is replayed into memory.
    """
    projection = runner.projections[name]
    if not isinstance(projection, EntryFacts):
        raise TypeError(f"projection {name} does not keep clinical facts")
    if as_of is None:
        runner.catch_up([name])
        with snapshot(runner.engine) as conn:
            facts = read_facts(conn, projection.tables, sites=sites, subject_id=subject_id)
            return facts, tracked_position(conn, name)
    engine, position = replay_as_of(runner.recorder, runner.mapper, [projection], as_of)
    try:
        with engine.connect() as conn:
            facts = read_facts(conn, projection.tables, sites=sites, subject_id=subject_id)
    finally:
        engine.dispose()
    return facts, position
