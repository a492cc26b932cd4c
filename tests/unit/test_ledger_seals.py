"""Seals: what is signed, how keys are named, and that changed seals fail."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ecrf.ledger.seals import (
    Seal,
    SealKey,
    key_id_of,
    load_public_key,
    signed_message,
    verify_seal,
)

STREAMS = {"79da0450-bec6-5af3-8727-e619c0f43db6": (3, "ab" * 32)}


@pytest.fixture
def key() -> SealKey:
    return SealKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


class TestMessage:
    def test_exact_bytes(self) -> None:
        message = signed_message(
            "seal", 12, "cd" * 32, "2024-01-01T00:00:00.000000Z", "k1", STREAMS
        )
        assert message == (
            b'{"at":"2024-01-01T00:00:00.000000Z","head":"' + b"cd" * 32 + b'","key_id":"k1",'
            b'"kind":"seal","position":12,'
            b'"streams":{"79da0450-bec6-5af3-8727-e619c0f43db6":[3,"' + b"ab" * 32 + b'"]}}'
        )

    def test_kind_separates_seals_from_export_records(self, key: SealKey) -> None:
        seal = key.sign(12, "cd" * 32, STREAMS)
        assert not verify_seal(replace(seal, kind="export"), key.public_key)


class TestSigning:
    def test_a_seal_verifies_with_its_key(self, key: SealKey) -> None:
        seal = key.sign(12, "cd" * 32, STREAMS, reason="test")
        assert seal.key_id == key.key_id
        assert verify_seal(seal, key.public_key)

    @pytest.mark.parametrize(
        "change",
        [
            {"position": 13},
            {"head": "ce" * 32},
            {"at": "2030-01-01T00:00:00.000000Z"},
            {"streams": {}},
            {"signature": "00" * 64},
            {"signature": "not hex"},
        ],
    )
    def test_any_change_breaks_the_signature(self, key: SealKey, change: dict[str, object]) -> None:
        seal = key.sign(12, "cd" * 32, STREAMS)
        assert not verify_seal(replace(seal, **change), key.public_key)  # type: ignore[arg-type]

    def test_another_key_does_not_verify(self, key: SealKey) -> None:
        seal = key.sign(12, "cd" * 32, STREAMS)
        assert not verify_seal(seal, SealKey.generate().public_key)

    def test_reason_and_event_position_are_not_signed(self, key: SealKey) -> None:
        seal = key.sign(12, "cd" * 32, STREAMS, reason="a")
        assert verify_seal(replace(seal, reason="b", event_position=99), key.public_key)


class TestKeys:
    def test_key_id_is_a_prefix_of_the_raw_key_hash(self, key: SealKey) -> None:
        raw = key.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert key.key_id == hashlib.sha256(raw).hexdigest()[:16]
        assert key_id_of(key.public_key) == key.key_id

    def test_public_key_pem_round_trips(self, key: SealKey) -> None:
        loaded = load_public_key(key.public_key_pem.encode())
        assert key_id_of(loaded) == key.key_id

    def test_a_private_key_pem_gives_its_public_half(self) -> None:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        assert key_id_of(load_public_key(pem)) == key_id_of(private.public_key())

    def test_garbage_is_not_a_key(self) -> None:
        with pytest.raises(ValueError, match="Ed25519"):
            load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


class TestJson:
    def test_round_trip(self, key: SealKey) -> None:
        seal = replace(key.sign(12, "cd" * 32, STREAMS, reason="r"), event_position=14)
        assert Seal.from_dict(seal.to_dict()) == seal

    @pytest.mark.parametrize(
        "broken",
        [
            {},
            {"position": "12", "head": "h", "at": "a", "key_id": "k", "signature": "s"},
            {"position": 12, "head": 1, "at": "a", "key_id": "k", "signature": "s"},
            {
                "position": 12,
                "head": "h",
                "at": "a",
                "key_id": "k",
                "signature": "s",
                "streams": [],
            },
            {
                "position": 12,
                "head": "h",
                "at": "a",
                "key_id": "k",
                "signature": "s",
                "streams": {"x": [1]},
            },
        ],
    )
    def test_malformed_seals_are_refused(self, broken: dict[str, object]) -> None:
        with pytest.raises(ValueError, match="malformed seal"):
            Seal.from_dict(broken)
