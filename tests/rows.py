"""Comparing read-model rows across backends."""

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
