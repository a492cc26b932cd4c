"""Derived values and soft checks, driven by the study definition.

Derived values (CRS grade, ICE score and ICANS grade, cells/kg) come from
`ecrf.clinical`. Soft checks accept the data and report findings; the application turns
each finding into a system query on the field. Most checks are declared as data in
`forms/study.json` (`settings.soft_checks`); this module only knows how to evaluate them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from ecrf.clinical.grading import crs_grade, icans_grade, ice_score


@dataclass(frozen=True)
class Finding:
    """A soft-check finding: the field it is about and what to ask the site."""

    path: str
    message: str


class CheckedEntry(Protocol):
    """What the checks read of an entry: a casebook's ``Entry`` or an ``EntryFacts``."""

    @property
    def entry_id(self) -> str:
        """The entry's id."""

    @property
    def form(self) -> str:
        """The form it is an entry of."""

    @property
    def data(self) -> Mapping[str, Any]:
        """Its current data."""


@dataclass(frozen=True)
class EntryFacts:
    """An entry as the checks read it, for callers without a casebook ``Entry``."""

    entry_id: str
    form: str
    data: Mapping[str, Any]


def derive(form: str, data: dict[str, Any]) -> dict[str, Any]:
    """Return ``data`` with the values the server derives for this form added."""
    derived = dict(data)
    if form == "crs_assessment":
        derived["grade"] = crs_grade(**data)
    elif form == "icans_assessment":
        score = ice_score(**data)
        derived["ice_score"] = score
        derived["grade"] = icans_grade(**{**data, "ice_score": score})
    elif form == "cart_infusion":
        weight = data.get("weight_kg")
        cells = data.get("total_car_t_cells")
        if isinstance(weight, int | float) and weight > 0 and isinstance(cells, int | float):
            derived["cells_per_kg"] = cells / weight
    return derived


class SoftChecks:
    """Evaluates the study's soft checks for one entry against the subject's others."""

    def __init__(self, study: Mapping[str, Any]) -> None:
        self.study = study
        self.settings: Mapping[str, Any] = study.get("settings", {})
        self.rules: Mapping[str, Any] = self.settings.get("soft_checks", {})
        self.timezone = ZoneInfo(str(study.get("timezone", "UTC")))
        self.catalogue: Mapping[str, Any] = study.get("forms", {})
        self.visits = {v["code"]: v for v in study.get("visits", [])}
        self.anchors: Mapping[str, Any] = study.get("anchors", {})
        self.dose_levels = {d["dose_level"]: d for d in study.get("dose_levels", [])}
        self._anchor_forms = frozenset(str(source["form"]) for source in self.anchors.values())
        self._compared: dict[str, frozenset[str]] = {}

    def findings(
        self,
        entry: CheckedEntry,
        visit: str,
        others: Iterable[CheckedEntry],
        assigned_dose_level: str | None = None,
    ) -> list[Finding]:
        """Every soft-check finding for ``entry`` (others = the subject's other live entries)."""
        others = [o for o in others if o.entry_id != entry.entry_id]
        found: list[Finding] = []
        found += self._visit_window(entry, visit, others)
        found += self._date_order(entry, others)
        found += self._equal(entry, others)
        found += self._plausible(entry)
        found += self._mismatch(entry)
        found += self._cell_dose(entry, assigned_dose_level)
        return _unique(found)

    def compared_forms(self, form: str) -> frozenset[str]:
        """The forms whose entries the checks of an entry of ``form`` read.

        Anchors (visit windows), date-order partners and equal-field partners: ``findings``
        gives the same answer when ``others`` holds only entries of these forms, which
        spares building facts for a long casebook's every entry on each change.
        """
        cached = self._compared.get(form)
        if cached is None:
            equal = {
                str(theirs["form"])
                for rule in self.rules.get("equal", [])
                for mine, theirs in (rule["fields"], rule["fields"][::-1])
                if mine["form"] == form
            }
            cached = self._compared[form] = (
                self.anchor_forms() | equal | self.date_order_partners(form)
            )
        return cached

    def anchor_forms(self) -> frozenset[str]:
        """The forms that date the anchors visit windows count from."""
        return self._anchor_forms

    def is_anchor_form(self, form: str) -> bool:
        """Whether entries of ``form`` date an anchor that visit windows count from."""
        return form in self._anchor_forms

    def visit_window_findings(
        self, entry: CheckedEntry, visit: str, others: Iterable[CheckedEntry]
    ) -> list[Finding]:
        """The visit-window finding of ``entry`` alone (others = the subject's live entries)."""
        others = [o for o in others if o.entry_id != entry.entry_id]
        return _unique(self._visit_window(entry, visit, others))

    def is_visit_window_message(self, visit_code: str, message: str) -> bool:
        """Whether ``message`` is a visit-window finding at ``visit_code`` (any day)."""
        window = self._window(visit_code)
        return window is not None and message.startswith(f"{self._window_text(*window)} It is day ")

    def date_order_partners(self, form: str) -> frozenset[str]:
        """The other forms whose dates a date-order rule compares with dates on ``form``."""
        return frozenset(
            end["form"]
            for rule in self.rules.get("date_order", [])
            for mine, end in ((rule["earlier"], rule["later"]), (rule["later"], rule["earlier"]))
            if mine["form"] == form and end["form"] != form
        )

    def date_order_messages(self, form: str, partner: str) -> frozenset[str]:
        """The messages of the date-order rules that compare ``form`` with ``partner``."""
        return frozenset(str(rule["message"]) for rule in self._pairing(form, partner))

    def date_order_findings(
        self, entry: CheckedEntry, others: Iterable[CheckedEntry], partner: str
    ) -> list[Finding]:
        """The findings of ``entry`` under the date-order rules comparing it with ``partner``."""
        others = [o for o in others if o.entry_id != entry.entry_id]
        return _unique(self._date_order(entry, others, self._pairing(entry.form, partner)))

    def _pairing(self, form: str, partner: str) -> list[Mapping[str, Any]]:
        return [
            rule
            for rule in self.rules.get("date_order", [])
            if form != partner
            and {rule["earlier"]["form"], rule["later"]["form"]} == {form, partner}
        ]

    # The individual checks ------------------------------------------------------

    def _window(self, visit_code: str) -> tuple[str, int, int, str] | None:
        """(visit, first day, last day, anchor) of a visit that has a window."""
        visit = self.visits.get(visit_code)
        if visit is None or not visit.get("anchor") or visit.get("target_day") is None:
            return None
        start = visit["target_day"] - (visit.get("window_before") or 0)
        end = visit["target_day"] + (visit.get("window_after") or 0)
        return visit_code, start, end, str(visit["anchor"])

    def _window_text(self, visit_code: str, start: int, end: int, anchor: str) -> str:
        template = str(self.rules.get("visit_window_message", "Entry outside the {visit} window."))
        return template.format(visit=visit_code, start=start, end=end, anchor=anchor)

    def _visit_window(
        self, entry: CheckedEntry, visit_code: str, others: list[CheckedEntry]
    ) -> list[Finding]:
        meta = self.catalogue.get(entry.form, {})
        window = self._window(visit_code)
        if not meta.get("window_check") or window is None:
            return []
        _, start, end, anchor_name = window
        date_field = meta.get("date_field")
        when = self._day(entry.data.get(date_field)) if date_field else None
        anchor = self._anchor_date(anchor_name, entry, others)
        if when is None or anchor is None:
            return []  # nothing to compare yet
        day = (when - anchor).days
        if start <= day <= end:
            return []
        message = self._window_text(*window)
        return [Finding(f"/{date_field}", f"{message} It is day {day}.")]

    def _anchor_date(
        self, anchor: str, entry: CheckedEntry, others: list[CheckedEntry]
    ) -> date | None:
        source = self.anchors.get(anchor)
        if not source:
            return None
        candidates = [entry, *others] if entry.form == source["form"] else others
        days = [
            d
            for o in candidates
            if o.form == source["form"]
            for d in [self._day(o.data.get(source["field"]))]
            if d is not None
        ]
        return min(days) if days else None

    def _date_order(
        self,
        entry: CheckedEntry,
        others: list[CheckedEntry],
        rules: Iterable[Mapping[str, Any]] | None = None,
    ) -> list[Finding]:
        found = []
        for rule in self.rules.get("date_order", []) if rules is None else rules:
            earlier, later = rule["earlier"], rule["later"]
            for mine, theirs, mine_is_earlier in ((earlier, later, True), (later, earlier, False)):
                if mine["form"] != entry.form:
                    continue
                value = self._day(entry.data.get(mine["field"]))
                if value is None:
                    continue
                if theirs["form"] == entry.form:
                    # Both ends on this form: compare within the entry, reported once.
                    if not mine_is_earlier:
                        continue
                    compared = [entry]
                else:
                    compared = [o for o in others if o.form == theirs["form"]]
                for other in compared:
                    other_value = self._day(other.data.get(theirs["field"]))
                    if other_value is None:
                        continue
                    ok = value <= other_value if mine_is_earlier else other_value <= value
                    if not ok:
                        path = mine["field"] if other is not entry else later["field"]
                        found.append(Finding(f"/{path}", str(rule["message"])))
        return found

    def _equal(self, entry: CheckedEntry, others: list[CheckedEntry]) -> list[Finding]:
        found = []
        for rule in self.rules.get("equal", []):
            first, second = rule["fields"]
            for mine, theirs in ((first, second), (second, first)):
                if mine["form"] != entry.form or mine["field"] not in entry.data:
                    continue
                for other in (o for o in others if o.form == theirs["form"]):
                    if theirs["field"] in other.data and (
                        other.data[theirs["field"]] != entry.data[mine["field"]]
                    ):
                        found.append(Finding(f"/{mine['field']}", str(rule["message"])))
        return found

    def _plausible(self, entry: CheckedEntry) -> list[Finding]:
        found = []
        for rule in self.rules.get("plausible_ranges", []):
            if rule["form"] != entry.form:
                continue
            value = _number(entry.data.get(rule["field"]))
            if value is None:
                continue
            low, high = rule.get("minimum"), rule.get("maximum")
            # The entry's own limit (e.g. the LLOQ the lab reported for this sample) wins.
            own = _number(entry.data.get(rule.get("minimum_field", "")))
            low = own if own is not None else low
            if (low is not None and value < low) or (high is not None and value > high):
                message = str(rule["message"]).format(minimum=_limit(low), maximum=_limit(high))
                found.append(Finding(f"/{rule['field']}", message))
        return found

    def _mismatch(self, entry: CheckedEntry) -> list[Finding]:
        found = []
        for rule in self.rules.get("grade_mismatch", []):
            if rule["form"] != entry.form or rule["entered"] not in entry.data:
                continue
            if entry.data.get(rule["derived"]) != entry.data[rule["entered"]]:
                found.append(Finding(f"/{rule['entered']}", str(rule["message"])))
        return found

    def _cell_dose(self, entry: CheckedEntry, assigned: str | None) -> list[Finding]:
        if entry.form != "cart_infusion":
            return []
        found = []
        entered = entry.data.get("dose_level")
        if assigned and entered and entered != assigned:
            found.append(
                Finding(
                    "/dose_level", f"Infused at {entered} but the subject is assigned {assigned}."
                )
            )
        level = self.dose_levels.get(str(assigned or entered))
        per_kg = entry.data.get("cells_per_kg")
        tolerance = float(self.settings.get("cell_dose_tolerance", 0.2))
        if level is None or not isinstance(per_kg, int | float):
            return found
        target = float(level["dose_per_kg"])
        if abs(per_kg / target - 1.0) > tolerance:
            template = str(self.rules.get("cell_dose_message", "Dose off target."))
            message = template.format(
                cells_per_kg=f"{per_kg:.3g}",
                dose_level=level["dose_level"],
                tolerance=f"{tolerance:.0%}",
            )
            found.append(Finding("/total_car_t_cells", message))
        return found

    def _day(self, value: Any) -> date | None:
        """A calendar date in the study's time zone, from an ISO date or date-time."""
        if not isinstance(value, str):
            return None
        try:
            if "T" in value:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    return moment.date()
                return moment.astimezone(self.timezone).date()
            return date.fromisoformat(value)
        except ValueError:
            return None


def _unique(found: Iterable[Finding]) -> list[Finding]:
    """Findings without repeats, in a stable order."""
    unique: dict[tuple[str, str], Finding] = {(f.path, f.message): f for f in found}
    return sorted(unique.values(), key=lambda f: (f.path, f.message))


def _number(value: Any) -> float | int | None:
    """A JSON number; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _limit(value: Any) -> str:
    """A limit as query text: 1.0 reads "1", 2.5 reads "2.5"."""
    return "none" if value is None else f"{value:g}"
