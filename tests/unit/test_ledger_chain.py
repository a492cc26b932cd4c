"""The byte recipes of docs/ledger.md, pinned by test vectors a regulator can reproduce."""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest

from ecrf.ledger.chain import (
    GENESIS,
    canonical_json,
    event_hash,
    hashed_bytes,
    seal_state,
    stored_event_hash,
    stored_hash,
)
from ecrf.ledger.seals import head_hash_of, next_head

STREAM = "5b1c7a0e-2f4d-4c1e-9f57-6a0d3c1e8b42"
TOPIC = "ecrf.domain.subject:Subject.EntryRecorded"
STATE = {
    "audit": {"user": "crc", "user_name": "Zoë Ž"},
    "data": {"weight_kg": 62.0, "age": 56, "tiny": 1e-7, "big": 1e20},
    "timestamp": {"_type_": "datetime_iso", "_data_": "2024-01-02T03:04:05.000006+00:00"},
}
# docs/ledger.md, "Worked example": the stored bytes of STATE as version 1 of STREAM.
STORED = (
    '{"audit":{"user":"crc","user_name":"Zoë Ž"},'
    '"data":{"age":56,"big":1e+20,"tiny":1e-7,"weight_kg":62.0},'
    '"hash":"909e4758bfa5f9654de013105916a6cc2592647be8f990484f05bc8b65104039",'
    '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"timestamp":{"_data_":"2024-01-02T03:04:05.000006+00:00","_type_":"datetime_iso"}}'
).encode()


class TestCanonicalJson:
    def test_keys_sorted_no_whitespace_utf8_unescaped(self) -> None:
        assert (
            canonical_json({"b": 1, "a": [1, 2], "é": "ü"}) == '{"a":[1,2],"b":1,"é":"ü"}'.encode()
        )

    def test_keys_sort_by_code_point_not_utf16(self) -> None:
        # U+E000 < U+1F600 by code point (and UTF-8 bytes); UTF-16 order would differ.
        assert (
            canonical_json({"\U0001f600": 1, "\ue000": 2}) == '{"\ue000":2,"\U0001f600":1}'.encode()
        )

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (62.0, "62.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (1e-7, "1e-7"),
            (1e16, "1e+16"),
            (1e20, "1e+20"),
            (123456.789, "123456.789"),
            (2**63 - 1, "9223372036854775807"),
        ],
    )
    def test_numbers_in_shortest_round_trip_form(self, value: float, text: str) -> None:
        assert canonical_json(value) == text.encode()

    def test_escapes_only_quote_backslash_and_control_characters(self) -> None:
        assert (
            canonical_json('a"b\\c\n\x01/\u2028é') == b'"a\\"b\\\\c\\n\\u0001/\xe2\x80\xa8\xc3\xa9"'
        )

    def test_matches_python_json_except_negative_exponents(self) -> None:
        value = {"z": [1, 2.5, "ü", None, True], "a": {"y": 1e20}}
        python = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_json(value) == python.encode()


class TestEventHash:
    def test_worked_example(self) -> None:
        assert seal_state(STREAM, 1, TOPIC, STATE, GENESIS) == STORED

    def test_hash_covers_stream_version_topic_and_state(self) -> None:
        document = orjson.loads(STORED)
        stored = document.pop("hash")
        envelope = {"stream": STREAM, "version": 1, "topic": TOPIC, "state": document}
        assert hashlib.sha256(canonical_json(envelope)).hexdigest() == stored
        assert event_hash(STREAM, 2, TOPIC, document) != stored
        assert event_hash(STREAM, 1, TOPIC + "x", document) != stored

    def test_verification_cuts_the_hash_member_from_the_stored_bytes(self) -> None:
        stored = stored_hash(STORED)
        state = STORED.replace(f'"hash":"{stored}",'.encode(), b"", 1)
        envelope = (
            b'{"state":' + state + f',"stream":"{STREAM}","topic":"{TOPIC}","version":1}}'.encode()
        )
        assert hashed_bytes(STREAM, 1, TOPIC, STORED, stored) == envelope
        assert stored_event_hash(STREAM, 1, TOPIC, STORED, stored) == stored

    def test_any_changed_byte_changes_the_hash(self) -> None:
        stored = stored_hash(STORED)
        spaced = STORED.replace(b'{"audit":', b'{ "audit":', 1)
        assert stored_event_hash(STREAM, 1, TOPIC, spaced, stored) != stored

    def test_verification_needs_no_json_writer(self) -> None:
        # Written by Python's json (which spells 1e-05 where orjson spells 0.00001):
        # the bytes as stored are what is hashed, so it verifies all the same.
        body = json.dumps(
            {"x": 1e-05, "prev_hash": GENESIS}, sort_keys=True, separators=(",", ":")
        ).encode()
        digest = hashlib.sha256(
            b'{"state":' + body + f',"stream":"{STREAM}","topic":"{TOPIC}","version":1}}'.encode()
        ).hexdigest()
        stored = body.replace(b'{"prev_hash"', f'{{"hash":"{digest}","prev_hash"'.encode())
        assert b"1e-05" in stored
        assert stored_event_hash(STREAM, 1, TOPIC, stored, digest) == digest

    def test_a_hash_member_that_is_missing_or_repeated_is_refused(self) -> None:
        with pytest.raises(ValueError, match="exactly once"):
            hashed_bytes(STREAM, 1, TOPIC, STORED, "0" * 64)

    def test_chaining_links_versions(self) -> None:
        second = seal_state(STREAM, 2, TOPIC, {"n": 2}, stored_hash(STORED))
        assert orjson.loads(second)["prev_hash"] == stored_hash(STORED)


class TestRunningHead:
    def test_definition(self) -> None:
        expected = hashlib.sha256(f"{GENESIS}:1:{'ab' * 32}".encode()).hexdigest()
        assert next_head(GENESIS, 1, "ab" * 32) == expected
        assert expected == "5b8749b217ee7dc04ba44c7079cd8554ced75e2dd01324bbaf5b3a4e2769c457"

    def test_position_is_part_of_the_head(self) -> None:
        assert next_head(GENESIS, 1, "ab" * 32) != next_head(GENESIS, 2, "ab" * 32)

    def test_an_event_contributes_its_stored_hash(self) -> None:
        assert head_hash_of(STORED) == stored_hash(STORED)

    def test_an_unreadable_state_contributes_the_hash_of_its_bytes(self) -> None:
        assert head_hash_of(b"\xff{") == hashlib.sha256(b"\xff{").hexdigest()
