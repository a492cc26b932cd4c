"""The per-stream hash chain: the byte recipe every stored event is hashed with.

The recipe is deliberately small so that a regulator can re-implement it from
`docs/ledger.md` without this code:

* canonical JSON = UTF-8, object keys sorted, no insignificant whitespace, numbers in
  their shortest round-trip form (orjson's output with ``OPT_SORT_KEYS``);
* an event's stored ``state`` is the canonical JSON of its fields, including
  ``prev_hash`` and ``hash``;
* ``hash`` = SHA-256 hex of the canonical JSON of
  ``{"stream": <stream id>, "version": <int>, "topic": <str>, "state": <state without hash>}``;
* ``prev_hash`` of version 1 is ``GENESIS``; of version n > 1, the hash of version n - 1.

Writing re-serialises with orjson; verifying does not: `hashed_bytes` cuts the ``hash``
member out of the stored text, which for canonical JSON gives the same bytes, so a
verifier never depends on how a JSON library formats numbers (docs/ledger.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GENESIS = "0" * 64
"""The ``prev_hash`` of every stream's first event."""

HASH_FIELD = "hash"
PREV_HASH_FIELD = "prev_hash"


def canonical_json(value: Any) -> bytes:
    """Serialise a JSON value to its canonical bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def event_hash(stream: str, version: int, topic: str, state: dict[str, Any]) -> str:
    """Return the hash of one event; ``state`` must not contain ``hash``."""
    document = {"stream": stream, "version": version, "topic": topic, "state": state}
    return hashlib.sha256(canonical_json(document)).hexdigest()


def seal_state(stream: str, version: int, topic: str, state: dict[str, Any], prev: str) -> bytes:
    """Return the canonical stored state of an event chained onto ``prev``."""
    chained = {k: v for k, v in state.items() if k != HASH_FIELD}
    chained[PREV_HASH_FIELD] = prev
    chained[HASH_FIELD] = event_hash(stream, version, topic, chained)
    return canonical_json(chained)


def hashed_bytes(stream: str, version: int, topic: str, stored: bytes, hash_: str) -> bytes:
    """The exact bytes an event's hash covers, cut from its stored state.

    The stored state is canonical JSON, so the canonical JSON of the state without its
    ``hash`` is the stored text with the ``"hash":"<hash>"`` member (and its comma) cut
    out. Verifying this way needs no JSON writer, so it cannot be misled by how a
    serialiser formats numbers, and any changed byte outside the member changes it.
    """
    member = b'"hash":"' + hash_.encode("utf-8") + b'"'
    start = stored.find(member)
    end = start + len(member)
    if start < 0 or stored.find(member, end) >= 0:
        raise ValueError("the stored state does not hold its hash member exactly once")
    if stored[end : end + 1] == b",":
        before, after = stored[:start], stored[end + 1 :]
    elif stored[start - 1 : start] == b",":
        before, after = stored[: start - 1], stored[end:]
    else:
        before, after = stored[:start], stored[end:]
    return b"".join(
        (
            b'{"state":',
            before,
            after,
            b',"stream":',
            canonical_json(stream),
            b',"topic":',
            canonical_json(topic),
            b',"version":',
            b"%d}" % version,
        )
    )


def stored_event_hash(stream: str, version: int, topic: str, stored: bytes, hash_: str) -> str:
    """Recompute an event's hash from its stored bytes (``hash_`` is its stored hash)."""
    return hashlib.sha256(hashed_bytes(stream, version, topic, stored, hash_)).hexdigest()


def stored_hash(state: bytes) -> str:
    """Read the ``hash`` field of a stored state."""
    value = orjson.loads(state).get(HASH_FIELD)
    if not isinstance(value, str):
        raise ValueError("stored event has no hash")
    return value
