"""The global running head over the log, and Ed25519-signed seals of it.

Byte recipes (also in `docs/ledger.md`, so that a verifier can be written without us):

* running head: ``head_0 = GENESIS``; for the n-th event in log order,
  ``head_n = SHA-256_hex(ASCII(head_{n-1} + ":" + decimal(position) + ":" + event_hash))``,
  where ``event_hash`` is the event's stored ``hash`` field (see `head_hash_of`);
* seal message: canonical JSON of
  ``{"at", "head", "key_id", "kind", "position", "streams"}`` (``streams`` maps stream id
  to ``[version, hash]``); the signature is Ed25519 over those bytes, lowercase hex;
* key id: the first 16 hex digits of SHA-256 over the 32 raw public-key bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ecrf.ledger.chain import GENESIS, HASH_FIELD, canonical_json

ALGORITHM = "Ed25519"
SEAL_KIND = "seal"
"""A seal recorded in the log by the ledger follower."""
EXPORT_KIND = "export"
"""The signed end record of an export file; never stored in the log."""
PARTIAL_EXPORT_KIND = "partial_export"
"""The signed end record of a partial (site-limited) export: its head covers only the
included events, and its ``streams`` list every included stream's last version."""

Tip = tuple[int, str]
"""A stream's last version and that event's hash."""


def next_head(head: str, position: int, event_hash: str) -> str:
    """Fold one event into the running head."""
    return hashlib.sha256(f"{head}:{position}:{event_hash}".encode("ascii")).hexdigest()


def head_hash_of(state: bytes) -> str:
    """The hash an event contributes to the running head: its stored ``hash`` field.

    A state that is not a JSON object with a string ``hash`` contributes the SHA-256 of
    its raw bytes instead, so the head still depends on exactly what is stored.
    """
    try:
        value = orjson.loads(state)
    except orjson.JSONDecodeError:
        value = None
    found = value.get(HASH_FIELD) if isinstance(value, dict) else None
    if isinstance(found, str) and found.isascii():
        return found
    return hashlib.sha256(state).hexdigest()


def utc_now() -> str:
    """The current time as ISO 8601 UTC with ``Z``, as seals record it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def signed_message(
    kind: str, position: int, head: str, at: str, key_id: str, streams: dict[str, Tip]
) -> bytes:
    """The exact bytes a seal's signature covers."""
    return canonical_json(
        {
            "at": at,
            "head": head,
            "key_id": key_id,
            "kind": kind,
            "position": position,
            "streams": {s: [v, h] for s, (v, h) in streams.items()},
        }
    )


@dataclass(frozen=True)
class Seal:
    """A signed checkpoint: the running head after log position ``position``."""

    position: int
    head: str
    at: str
    key_id: str
    signature: str
    streams: dict[str, Tip] = field(default_factory=dict)
    kind: str = SEAL_KIND
    event_position: int | None = None
    """Where the seal's own event is stored in the log (``None`` for an export seal)."""
    reason: str = ""

    def message(self) -> bytes:
        """The bytes the signature covers."""
        return signed_message(
            self.kind, self.position, self.head, self.at, self.key_id, self.streams
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what the API, the mirror file and exports carry)."""
        return {
            "kind": self.kind,
            "position": self.position,
            "head": self.head,
            "at": self.at,
            "key_id": self.key_id,
            "signature": self.signature,
            "streams": {s: [v, h] for s, (v, h) in self.streams.items()},
            "event_position": self.event_position,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(
        cls, value: Any, *, kind: str | None = None, event_position: int | None = None
    ) -> Seal:
        """Read a seal from JSON (a stored ``Sealed`` state or `to_dict` output)."""
        if not isinstance(value, dict):
            raise ValueError("a seal must be a JSON object")
        try:
            streams_in = value.get("streams", {})
            if not isinstance(streams_in, dict):
                raise TypeError("streams must be an object")
            streams: dict[str, Tip] = {}
            for stream, tip in streams_in.items():
                version, hash_ = tip
                if type(version) is not int or not isinstance(hash_, str):
                    raise TypeError(f"bad tip for stream {stream}")
                streams[stream] = (version, hash_)
            seal = cls(
                position=value["position"],
                head=value["head"],
                at=value["at"],
                key_id=value["key_id"],
                signature=value["signature"],
                streams=streams,
                kind=kind or value.get("kind", SEAL_KIND),
                event_position=(
                    event_position if event_position is not None else value.get("event_position")
                ),
                reason=value.get("reason", ""),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed seal: {error}") from None
        text = (seal.head, seal.at, seal.key_id, seal.signature, seal.kind)
        if type(seal.position) is not int or not all(isinstance(t, str) for t in text):
            raise ValueError("malformed seal: wrong field types")
        if seal.event_position is not None and type(seal.event_position) is not int:
            raise ValueError("malformed seal: event_position must be an integer")
        return seal


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The key id: first 16 hex digits of SHA-256 over the raw public key."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    """A public key as PEM (SubjectPublicKeyInfo)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Read an Ed25519 public key from PEM; a private key PEM gives its public half."""
    try:
        key: Any = serialization.load_pem_public_key(pem)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        except (ValueError, TypeError) as error:
            raise ValueError(f"not an Ed25519 key in PEM form: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key


def verify_seal(seal: Seal, public_key: Ed25519PublicKey) -> bool:
    """Whether ``seal`` carries a valid signature by ``public_key``."""
    try:
        public_key.verify(bytes.fromhex(seal.signature), seal.message())
    except (InvalidSignature, ValueError):
        return False
    return True


class SealKey:
    """The server's Ed25519 signing key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)
        self.public_key_pem = public_key_pem(self.public_key)

    @classmethod
    def generate(cls) -> SealKey:
        """A new random key (tests, benchmarks)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SealKey:
        """Read a PEM (PKCS#8, unencrypted) private key."""
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> SealKey:
        """Read the key at ``path``, creating it (mode 600) on first start."""
        if path.exists():
            return cls.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Written to a private temporary file and hard-linked into place: the key is
        # never readable by others, and two processes starting at once agree on one key.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".seal-key-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
        return cls.load(path)

    def sign(
        self,
        position: int,
        head: str,
        streams: dict[str, Tip],
        *,
        kind: str = SEAL_KIND,
        at: str | None = None,
        reason: str = "",
    ) -> Seal:
        """Sign a checkpoint of the running head."""
        at = at or utc_now()
        message = signed_message(kind, position, head, at, self.key_id, streams)
        return Seal(
            position=position,
            head=head,
            at=at,
            key_id=self.key_id,
            signature=self._private_key.sign(message).hex(),
            streams=dict(streams),
            kind=kind,
            reason=reason,
        )


__all__ = [
    "ALGORITHM",
    "EXPORT_KIND",
    "GENESIS",
    "PARTIAL_EXPORT_KIND",
    "SEAL_KIND",
    "Seal",
    "SealKey",
    "Tip",
    "head_hash_of",
    "key_id_of",
    "load_public_key",
    "next_head",
    "public_key_pem",
    "signed_message",
    "utc_now",
    "verify_seal",
]
