"""PNG plots of the PK and RFS reports, drawn with matplotlib's Agg renderer.

Figures are built with ``matplotlib.figure.Figure`` directly, never through pyplot, so no
global figure state is shared between concurrent requests.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def pk_plot(
    rows: Sequence[Mapping[str, Any]], levels: Sequence[str], method: str, unit: str | None
) -> bytes:
    """One panel per dose level with data: each subject's profile on a log scale.

    BLQ points (0) cannot sit on a log axis; they are left out of the lines.
    """
    shown = [level for level in levels if any(r["dose_level"] == level for r in rows)]
    panels = max(len(shown), 1)
    from matplotlib.figure import Figure  # imported on use: it is slow to import

    figure = Figure(figsize=(4.5 * panels, 4.2), layout="constrained")
    axes = figure.subplots(1, panels, sharey=True, squeeze=False)[0]
    figure.suptitle(f"CAR-T cellular kinetics ({method})")
    if not shown:
        axes[0].text(0.5, 0.5, "No PK data", ha="center", va="center")
        axes[0].set_axis_off()
        return _png(figure)
    for ax, level in zip(axes, shown, strict=True):
        mine = [r for r in rows if r["dose_level"] == level]
        for row in mine:
            points = [(t, c) for t, c in row["profile"] if c > 0]
            if points:
                ax.plot(
                    [t for t, _ in points],
                    [c for _, c in points],
                    marker="o",
                    markersize=3,
                    linewidth=1,
                    label=row["subject_id"],
                )
        ax.set_title(f"{level} (n={len(mine)})")
        ax.set_xlabel("Days from infusion")
        ax.grid(visible=True, which="both", alpha=0.3)
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    axes[0].set_ylabel(unit or "level")
    return _png(figure)


def km_plot(
    rows: Sequence[Mapping[str, Any]],
    curve: Sequence[Mapping[str, Any]],
    horizon_months: float,
) -> bytes:
    """The Kaplan-Meier RFS curve with its 95% band, censoring marks and numbers at risk."""
    from matplotlib.figure import Figure  # imported on use: it is slow to import

    figure = Figure(figsize=(7.5, 5.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=(5, 1))
    top.set_title("Recurrence-free survival from infusion")
    last = max([float(r["time_months"]) for r in rows] + [horizon_months])
    ticks = [6.0 * k for k in range(math.floor(last / 6) + 1)]
    if curve:
        times = [float(p["time"]) for p in curve] + [last]
        survival = [_value(p["survival"]) for p in curve]
        lower = [_value(p["lower"]) for p in curve]
        upper = [_value(p["upper"]) for p in curve]
        survival.append(survival[-1])
        lower.append(lower[-1])
        upper.append(upper[-1])
        top.step(times, survival, where="post", color="tab:blue", label="Kaplan-Meier")
        top.fill_between(
            times, lower, upper, step="post", color="tab:blue", alpha=0.2, label="95% CI"
        )
        censored = [float(r["time_months"]) for r in rows if not r["event"]]
        top.plot(
            censored,
            [_step_at(curve, t) for t in censored],
            linestyle="none",
            marker="+",
            markersize=9,
            color="black",
            label="censored",
        )
        top.legend(loc="lower left")
    else:
        top.text(0.5, 0.5, "No treated subjects", ha="center", va="center")
    top.axvline(horizon_months, color="grey", linestyle=":", linewidth=1)
    top.set_ylim(0, 1.05)
    top.set_xlim(0, last * 1.02)  # room for the last step and censoring marks
    top.set_xticks(ticks)
    top.set_ylabel("Recurrence-free")
    top.set_xlabel("Months from infusion")
    top.grid(visible=True, alpha=0.3)
    bottom.set_xlim(0, last * 1.02)
    bottom.set_ylim(0, 1)
    bottom.set_axis_off()
    bottom.text(0, 0.85, "At risk", fontsize=9, ha="left")
    for tick in ticks:
        at_risk = sum(1 for r in rows if float(r["time_months"]) >= tick)
        bottom.text(tick, 0.3, str(at_risk), ha="center", fontsize=9)
    return _png(figure)


def _value(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _step_at(curve: Sequence[Mapping[str, Any]], t: float) -> float:
    current = 1.0
    for point in curve:
        if float(point["time"]) > t:
            break
        current = _value(point["survival"])
    return current


# How each DLT outcome is drawn on the cohort plot: (marker, colour, filled, legend label).
COHORT_MARKERS: dict[str, tuple[str, str, bool, str]] = {
    "N": ("o", "#2e7d32", True, "no DLT"),
    "T": ("X", "#c62828", True, "DLT"),
    "pending": ("o", "#757575", False, "pending"),
    "not_evaluable": ("s", "#5d4037", False, "not evaluable (replaced)"),
}
_DECISION_COLOUR = "#1565c0"


def cohort_plot(
    points: Sequence[Mapping[str, Any]],
    levels: Sequence[tuple[int, str]],
    decisions: Sequence[Mapping[str, Any]],
    title: str,
    x_label: str,
) -> bytes:
    """Patients per dose level over time, marked by DLT outcome; SRC decisions as lines.

    ``points``: ``{"when", "level", "outcome"}`` per patient (``level`` is the dose
    number, ``outcome`` a key of ``COHORT_MARKERS``); ``levels``: (number, tick label);
    ``decisions``: ``{"at", "label"}``. Patients at one level are spread a little
    vertically so that a cohort enrolled on one day stays readable.
    """
    from matplotlib.figure import Figure  # imported on use: it is slow to import

    figure = Figure(figsize=(10, 4.2), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    axes.set_yticks([number for number, _ in levels])
    axes.set_yticklabels([label for _, label in levels])
    axes.set_ylim(0.4, max((number for number, _ in levels), default=1) + 0.6)
    axes.set_ylabel("Dose level")
    if not points and not decisions:
        axes.text(
            0.5, 0.5, "No patients enrolled yet", ha="center", va="center", transform=axes.transAxes
        )
        axes.set_xticks([])
        return _png(figure)
    seen_at_level: dict[int, int] = {}
    by_outcome: dict[str, tuple[list[Any], list[float]]] = {}
    for point in points:
        index = seen_at_level.get(point["level"], 0)
        seen_at_level[point["level"]] = index + 1
        spread = ((index % 6) - 2.5) * 0.06
        xs, ys = by_outcome.setdefault(point["outcome"], ([], []))
        xs.append(point["when"])
        ys.append(point["level"] + spread)
    for outcome, (xs, ys) in by_outcome.items():
        marker, colour, filled, label = COHORT_MARKERS[outcome]
        axes.scatter(
            xs,
            ys,
            marker=marker,
            s=110 if outcome == "T" else 70,
            facecolors=colour if filled else "none",
            edgecolors=colour,
            linewidths=1.5,
            label=label,
            zorder=3,
        )
    for number, decision in enumerate(decisions):
        at = decision["at"]
        axes.axvline(
            at,
            color=_DECISION_COLOUR,
            linestyle="--",
            linewidth=1,
            zorder=1,
            label="SRC decision" if number == 0 else None,
        )
        axes.annotate(
            decision["label"],
            xy=(at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            rotation=90,
            va="top",
            fontsize=7,
            color=_DECISION_COLOUR,
        )
    # Datetimes go in as they are: matplotlib's date converter picks the ticks.
    axes.tick_params(axis="x", labelrotation=30)
    axes.set_xlabel(x_label)
    axes.grid(visible=True, axis="y", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(figure)
