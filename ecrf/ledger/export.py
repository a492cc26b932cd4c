"""The ledger export: the log as JSON lines, for verification away from the server.

Lines, in order (each a JSON object with a ``kind``):

* ``header``: ``{"kind": "header", "format": "ecrf-ledger/1", "exported_at", "keys"}``;
  a partial export adds ``"scope": "partial"``, the ``sites`` it covers and a ``note``;
* ``seal``: seals the server also keeps outside the database (its mirror file), so that a
  log cut short in the database still shows against them;
* ``event``: ``{"kind": "event", "position", "stream", "version", "topic", "state"}`` with
  ``state`` the exact stored bytes as a string (``state_b64`` if they are not UTF-8);
* ``end``: a seal of kind ``export`` over the whole file, signed when the export was made
  (kind ``partial_export``, and ``"scope": "partial"`` on the line, for a partial one).

A partial export (a monitor's) holds the streams whose first event is stamped with one of
the given sites, plus the whole ledger stream (seals and keys); see docs/ledger.md.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from ecrf.ledger.chain import GENESIS
from ecrf.ledger.records import LEDGER_STREAM, SEALED_TOPIC, Record
from ecrf.ledger.seals import (
    EXPORT_KIND,
    PARTIAL_EXPORT_KIND,
    Seal,
    SealKey,
    Tip,
    head_hash_of,
    next_head,
    utc_now,
)

FORMAT = "ecrf-ledger/1"
PARTIAL_SCOPE = "partial"
"""The ``scope`` of a partial export's header and end line."""


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


def site_of(state: bytes) -> str:
    """The site an event is stamped with (``audit.site``); "" when none or unreadable."""
    try:
        document = orjson.loads(state)
    except orjson.JSONDecodeError:
        return ""
    audit = document.get("audit") if isinstance(document, dict) else None
    site = audit.get("site") if isinstance(audit, dict) else None
    return site if isinstance(site, str) else ""


def export_lines(
    records: Iterable[Record],
    key: SealKey,
    keys: list[dict[str, str]],
    held_seals: Iterable[Seal] = (),
    *,
    sites: Sequence[str] | None = None,
) -> Iterator[bytes]:
    """Yield the export, one line at a time; memory grows with streams, not events.

    With ``sites``, a partial export: only the ledger stream and the streams of those
    sites (judged by each stream's first event), with an end record that covers them.
    """
    if sites is None:
        yield from _full(records, key, keys, held_seals)
    else:
        yield from _partial(records, key, keys, held_seals, frozenset(sites))


def _full(
    records: Iterable[Record], key: SealKey, keys: list[dict[str, str]], held: Iterable[Seal]
) -> Iterator[bytes]:
    yield _line({"kind": "header", "format": FORMAT, "exported_at": utc_now(), "keys": keys})
    for seal in held:
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


def _partial(
    records: Iterable[Record],
    key: SealKey,
    keys: list[dict[str, str]],
    held: Iterable[Seal],
    sites: frozenset[str],
) -> Iterator[bytes]:
    yield _line(
        {
            "kind": "header",
            "format": FORMAT,
            "exported_at": utc_now(),
            "keys": keys,
            "scope": PARTIAL_SCOPE,
            "sites": sorted(sites),
            "note": "partial export: only the casebooks of these sites and the ledger "
            "stream (seals and keys); the seals' running head cannot be recomputed from it",
        }
    )
    for seal in held:
        yield _line(seal.to_dict())
    head = GENESIS
    last = 0
    included: dict[str, bool] = {}
    tips: dict[str, Tip] = {}
    for record in records:
        last = record.position
        keep = included.get(record.stream)
        if keep is None:
            # A stream belongs to the site its first event is stamped with: a casebook's
            # every event carries its subject's site; accounts and the study carry none.
            keep = record.stream == LEDGER_STREAM or site_of(record.state) in sites
            included[record.stream] = keep
        if not keep:
            continue
        yield event_line(record)
        hash_ = head_hash_of(record.state)
        head = next_head(head, record.position, hash_)
        tips[record.stream] = (record.version, hash_)
    # Every included stream's tip, so that a stream removed from the file shows.
    end = key.sign(last, head, dict(sorted(tips.items())), kind=PARTIAL_EXPORT_KIND)
    yield _line({**end.to_dict(), "kind": "end", "scope": PARTIAL_SCOPE})


def _sealed_position(state: bytes) -> int:
    try:
        value = orjson.loads(state).get("position")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return value if type(value) is int else 0
