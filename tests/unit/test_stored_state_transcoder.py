"""The application's transcoder reads every stored state exactly as the library's does."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from ecrf.ledger.chain import canonical_json
from ecrf.persistence import StoredStateTranscoder
from tests.rows import typed


def with_transcodings(transcoder: JSONTranscoder) -> JSONTranscoder:
    """The transcodings the application registers (the library's defaults)."""
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


LIBRARY = with_transcodings(JSONTranscoder())
FAST = with_transcodings(StoredStateTranscoder())


def stored(state: dict[str, Any]) -> bytes:
    """A state as the application stores it: the library's encoding, made canonical."""
    return canonical_json(orjson.loads(LIBRARY.encode(state)))


WHEN = datetime(2026, 12, 3, 16, 30, 42, 502000, tzinfo=UTC)

STATES = {
    "an entry": {
        "timestamp": WHEN,
        "data": {"age": 54, "weight_kg": 71.5, "signed": True, "notes": None, "ae": [1, 2.0]},
        "audit": {"user": "crc", "user_name": "Carol Chen"},
    },
    "text with quotes, escapes and unicode": {
        "timestamp": WHEN,
        "text": 'said "_type_" and \\u0041, \t tab, é, 中文, \U0001f600',
    },
    "a transcoded value nested in data": {
        "timestamp": WHEN,
        "data": {"at": WHEN, "ids": [UUID(int=7)], "amount": Decimal("1.10")},
    },
    "a transcoded value in a list": {"timestamps": [WHEN, WHEN]},
    "several at the top level": {"id": UUID(int=1), "amount": Decimal("0.3"), "at": WHEN},
    "nothing transcoded": {"a": [], "b": {}, "c": -0.0, "d": 9223372036854775807},
    "a look-alike without _data_": {"x": {"_type_": "datetime_iso", "other": 1}},
    "a look-alike without _type_": {"x": {"_data_": "2026-01-01", "other": 1}},
    "a look-alike with a third key": {
        "x": {"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00", "more": 1}
    },
    "_type_ as a plain key": {"_type_": "x", "y": 1},
}


@pytest.mark.parametrize("state", STATES.values(), ids=STATES.keys())
def test_a_stored_state_reads_as_the_library_reads_it(state: dict[str, Any]) -> None:
    data = stored(state)
    assert typed(FAST.decode(data)) == typed(LIBRARY.decode(data))


STAMP = b'"_data_":"2026-01-01T00:00:00"'
RAW = {
    "a key spelled with an escape": b'{"t":{"\\u005ftype_":"datetime_iso",' + STAMP + b"}}",
    "NaN and infinities": b'{"n":NaN,"i":-Infinity}',
    "spaces around the mark": b'{"t": {"_type_" : "datetime_iso", ' + STAMP + b"}}",
    "a top-level transcoded value": b'{"_type_":"datetime_iso",' + STAMP + b"}",
    "a list at the top": b'[{"_type_":"datetime_iso",' + STAMP + b"}]",
}


@pytest.mark.parametrize("data", RAW.values(), ids=RAW.keys())
def test_text_orjson_did_not_write_reads_as_the_library_reads_it(data: bytes) -> None:
    assert typed(FAST.decode(data)) == typed(LIBRARY.decode(data))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b'{"t":{"_data_":"x","_type_":"no_such_type"}}', TranscodingNotRegisteredError),
        (b'{"t":{"_data_":1,"_type_":["datetime_iso"]}}', TypeError),
    ],
    ids=["an unregistered type", "a type that is not text"],
)
def test_a_state_the_library_cannot_read_is_the_library_s_error(
    data: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        LIBRARY.decode(data)
    with pytest.raises(error):
        FAST.decode(data)


@pytest.mark.parametrize("number", [2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30])
def test_stored_states_hold_no_integer_orjson_reads_as_a_float(number: int) -> None:
    """orjson reads integers beyond 64 bits as floats, but stored text never holds one.

    The application stores the library's text read by orjson and written canonically, so
    such an integer is already a float there (form data refuses it on input).
    """
    data = stored({"n": number})
    assert typed(FAST.decode(data)) == typed(LIBRARY.decode(data))
