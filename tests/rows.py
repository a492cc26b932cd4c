"""Comparing read-model rows across backends, and decoded values type for type."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def comparable(row: Mapping[Any, Any]) -> dict[Any, Any]:
    """A row with its instants in UTC: PostgreSQL returns them zoned, SQLite naive (as UTC)."""
    return {
        key: (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        if isinstance(value, datetime)
        else value
        for key, value in row.items()
    }


def typed(value: Any) -> Any:
    """``value`` with every type spelled out, so that 1 and 1.0 or True and 1 differ."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [type(value).__name__, *(typed(item) for item in value)]
    return (type(value).__name__, value)
