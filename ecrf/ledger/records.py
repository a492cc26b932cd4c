"""Raw log records as verification sees them: nothing but what the events table stores.

The constants below are literals on purpose: a verifier must not import the domain
classes whose topics and stream ids they name (a test checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

LEDGER_STREAM = "79da0450-bec6-5af3-8727-e619c0f43db6"
"""Stream id of the ledger aggregate (``ecrf.domain.ids.ledger_stream()``)."""
SEALED_TOPIC = "ecrf.domain.ledger:Ledger.Sealed"
"""Topic of a seal event."""
KEY_ADDED_TOPIC = "ecrf.domain.ledger:Ledger.KeyAdded"
"""Topic of an event recording a signing key."""
MIRROR_FILE = "seals.jsonl"
"""The file in the data directory where the server keeps a copy of every seal."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored event: log position, stream, version, topic and the exact stored bytes."""

    position: int
    stream: str
    version: int
    topic: str
    state: bytes


def stream_id(value: object) -> str:
    """The canonical text of a stream id (lowercase, hyphenated) from how a table stores it."""
    if isinstance(value, UUID):
        return str(value)
    text = value.decode("ascii") if isinstance(value, bytes) else str(value)
    try:
        return str(UUID(text))
    except ValueError:
        # Not a UUID: keep it as stored, so the hash check (which covers it) decides.
        return text


def state_bytes(value: object) -> bytes:
    """A stored state as bytes, whatever column type a database hands back."""
    if isinstance(value, str):
        # SQLite keeps whatever type was written: a state rewritten as text is still
        # checked byte for byte.
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a stored state of type {type(value).__name__}")


def mirror_path(data_dir: Path) -> Path:
    """Where seals are kept outside the database (one JSON seal per line)."""
    return data_dir / MIRROR_FILE
