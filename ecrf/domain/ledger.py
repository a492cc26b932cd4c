"""The Ledger aggregate: signed seals over the whole event log, themselves stored as events.

A seal says "after the event at log position P, the running head was H" and lists the
streams that changed since the previous seal with their last version and hash; it is
signed with the server's Ed25519 key. Signing and checking live in `ecrf.ledger`; this
aggregate only records what was signed, so the seals are hash-chained like any event.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from ecrf.domain.errors import ConflictError
from ecrf.domain.ids import ledger_stream


class Ledger(Aggregate):
    """The chain of seals and the public keys that signed them (one stream per system)."""

    class Created(Aggregate.Created):
        """The ledger was started (with the first seal)."""

        audit: dict[str, Any]

    class KeyAdded(Aggregate.Event):
        """A signing key was introduced; its public half is recorded for verifiers."""

        key_id: str
        algorithm: str
        public_key_pem: str
        audit: dict[str, Any]

    class Sealed(Aggregate.Event):
        """The log was sealed through ``position``: head, changed stream tips, signature."""

        position: int
        head: str
        at: str
        key_id: str
        signature: str
        streams: dict[str, list[Any]]
        reason: str
        audit: dict[str, Any]

    @staticmethod
    def create_id(**_: Any) -> UUID:
        """There is one ledger, so two first seals conflict on save."""
        return ledger_stream()

    @event(Created)
    def __init__(self, audit: dict[str, Any]) -> None:
        self.keys: dict[str, str] = {}
        self.last_position = 0
        self.seal_count = 0

    def add_key(
        self, key_id: str, algorithm: str, public_key_pem: str, audit: dict[str, Any]
    ) -> None:
        """Record a signing key, once."""
        if key_id in self.keys:
            raise ConflictError(f"key {key_id} is already recorded")
        self._key_added(key_id, algorithm, public_key_pem, audit)

    @event(KeyAdded)
    def _key_added(
        self, key_id: str, algorithm: str, public_key_pem: str, audit: dict[str, Any]
    ) -> None:
        self.keys[key_id] = public_key_pem

    def seal(
        self,
        position: int,
        head: str,
        at: str,
        key_id: str,
        signature: str,
        streams: dict[str, list[Any]],
        reason: str,
        audit: dict[str, Any],
    ) -> None:
        """Record a seal; seals only move forward and need a recorded key."""
        if position <= self.last_position:
            raise ConflictError(f"the log is already sealed through position {self.last_position}")
        if key_id not in self.keys:
            raise ConflictError(f"key {key_id} is not recorded in the ledger")
        self._sealed(position, head, at, key_id, signature, streams, reason, audit)

    @event(Sealed)
    def _sealed(
        self,
        position: int,
        head: str,
        at: str,
        key_id: str,
        signature: str,
        streams: dict[str, list[Any]],
        reason: str,
        audit: dict[str, Any],
    ) -> None:
        self.last_position = position
        self.seal_count += 1
