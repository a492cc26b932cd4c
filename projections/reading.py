"""Reading the clinical facts now (caught up) or as of an instant (replayed)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from projections.as_of import replay_as_of
from projections.clinical_facts import ClinicalFacts
from projections.facts import SubjectFacts, read_facts, snapshot, tracked_position
from projections.runner import ProjectionRunner


def load_facts(
    runner: ProjectionRunner,
    forms: frozenset[str],
    *,
    as_of: datetime | None = None,
    sites: Collection[str] | None = None,
    subject_id: str | None = None,
) -> tuple[list[SubjectFacts], int]:
    """The subjects with their live entries of ``forms``, and the log position they reflect.

    Without ``as_of`` the clinical facts first catch up with the log, so a caller reads its
    own writes; with it, the log as it stood then is replayed into memory (only ``forms``).
    """
    if as_of is None:
        runner.catch_up([ClinicalFacts.name])
        with snapshot(runner.engine) as conn:
            facts = read_facts(
                conn, ClinicalFacts.tables, forms=forms, sites=sites, subject_id=subject_id
            )
            return facts, tracked_position(conn, ClinicalFacts.name)
    replayed = ClinicalFacts(forms)
    engine, position = replay_as_of(runner.recorder, runner.mapper, [replayed], as_of)
    try:
        with engine.connect() as conn:
            facts = read_facts(conn, replayed.tables, sites=sites, subject_id=subject_id)
    finally:
        engine.dispose()
    return facts, position
