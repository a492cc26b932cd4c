"""ctDNA minimal residual disease course: clearance, molecular relapse and lead time.

Rules (PROTOCOL.md "ctDNA MRD"; patients are ctDNA positive at entry):

- Clearance is the first negative result after a positive one; molecular relapse is the first
  positive result after that clearance. Lead time is the imaging recurrence date minus the
  molecular relapse date, in days (negative when imaging came first).
- A patient may clear, relapse and clear again. The reported clearance and relapse are the
  first of each, as for any time-to-first-event endpoint; every negative run is kept in
  ``episodes`` so later transitions are not lost.
- Several results on one date (e.g. two assays) are one time point, detected if any is:
  a single positive is enough to call molecular disease.
- Without a clearance there is no molecular relapse and no lead time (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import groupby, pairwise


@dataclass(frozen=True)
class MrdEpisode:
    """One run of negative results: the clearance date and the relapse that ended it, if any."""

    cleared: date
    relapsed: date | None


@dataclass(frozen=True)
class MrdCourse:
    """First clearance, first molecular relapse after it, lead time over imaging, all episodes."""

    clearance_date: date | None
    molecular_relapse_date: date | None
    lead_time_days: int | None
    episodes: tuple[MrdEpisode, ...]


def mrd_course(
    results: Sequence[tuple[date, bool]],
    *,
    imaging_recurrence_date: date | None = None,
    positive_at_entry: bool = True,
) -> MrdCourse:
    """Derive the MRD course from chronological (sample date, detected) results."""
    for position, result in enumerate(results):
        if len(result) != 2 or not (_is_day(result[0]) and isinstance(result[1], bool)):
            raise ValueError(f"results[{position}]: expected (date, bool), got {result!r}")
    if imaging_recurrence_date is not None and not _is_day(imaging_recurrence_date):
        raise ValueError(
            f"imaging_recurrence_date: expected a date, got {imaging_recurrence_date!r}"
        )
    if any(later[0] < earlier[0] for earlier, later in pairwise(results)):
        raise ValueError("results: must be in chronological order")

    # positive_at_entry=False is for a list that itself starts with the entry positive;
    # a negative before any positive is then no clearance.
    positive = positive_at_entry
    episodes: list[MrdEpisode] = []
    for sample_date, same_day in groupby(results, key=lambda result: result[0]):
        detected = any(flag for _, flag in same_day)
        if detected and not positive and episodes:
            episodes[-1] = MrdEpisode(episodes[-1].cleared, sample_date)
        elif not detected and positive:
            episodes.append(MrdEpisode(sample_date, None))
        positive = detected

    clearance = episodes[0].cleared if episodes else None
    relapse = episodes[0].relapsed if episodes else None
    lead_time = (
        (imaging_recurrence_date - relapse).days
        if imaging_recurrence_date is not None and relapse is not None
        else None
    )
    return MrdCourse(clearance, relapse, lead_time, tuple(episodes))


def _is_day(value: object) -> bool:
    # A datetime is a date subclass but does not compare with one; the form fields are dates.
    return isinstance(value, date) and not isinstance(value, datetime)
