"""The ledger export: the whole log as JSON lines, for verification away from the server.

Lines, in order (each a JSON object with a ``kind``):

* ``header``: ``{"kind": "header", "format": "ecrf-ledger/1", "exported_at", "keys"}``;
* ``seal``: seals the server also keeps outside the database (its mirror file), so that a
  log cut short in the database still shows against them;
* ``event``: ``{"kind": "event", "position", "stream", "version", "topic", "state"}`` with
  ``state`` the exact stored bytes as a string (``state_b64`` if they are not UTF-8);
* ``end``: a seal of kind ``export`` over the whole file, signed when the export was made.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from ecrf.ledger.chain import GENESIS
from ecrf.ledger.records import LEDGER_STREAM, SEALED_TOPIC, Record
from ecrf.ledger.seals import EXPORT_KIND, Seal, SealKey, Tip, head_hash_of, next_head, utc_now

FORMAT = "ecrf-ledger/1"


def _line(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value) + b"\n"


def event_line(record: Record) -> bytes:
    """One event as an export line."""
    line: dict[str, Any] = {
        "kind": "event",
        "position": record.position,
        "stream": record.stream,
        "version": record.version,
        "topic": record.topic,
    }
    try:
        line["state"] = record.state.decode("utf-8")
    except UnicodeDecodeError:
        line["state_b64"] = base64.b64encode(record.state).decode("ascii")
    return _line(line)


def export_lines(
    records: Iterable[Record],
    key: SealKey,
    keys: list[dict[str, str]],
    held_seals: Iterable[Seal] = (),
) -> Iterator[bytes]:
    """Yield the export, one line at a time; memory grows with streams, not events."""
    yield _line({"kind": "header", "format": FORMAT, "exported_at": utc_now(), "keys": keys})
    for seal in held_seals:
        yield _line(seal.to_dict())
    head = GENESIS
    last = 0
    tips: dict[str, tuple[int, str, int]] = {}
    sealed_through = 0
    for record in records:
        yield event_line(record)
        hash_ = head_hash_of(record.state)
        head = next_head(head, record.position, hash_)
        last = record.position
        tips[record.stream] = (record.version, hash_, record.position)
        if record.stream == LEDGER_STREAM and record.topic == SEALED_TOPIC:
            sealed_through = max(sealed_through, _sealed_position(record.state))
    # Like a seal, the end record lists the streams that changed since the last seal.
    changed: dict[str, Tip] = {
        stream: (version, hash_)
        for stream, (version, hash_, position) in sorted(tips.items())
        if position > sealed_through
    }
    end = key.sign(last, head, changed, kind=EXPORT_KIND)
    yield _line({**end.to_dict(), "kind": "end"})


def _sealed_position(state: bytes) -> int:
    try:
        value = orjson.loads(state).get("position")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return value if type(value) is int else 0
