"""Deterministic aggregate ids: natural keys map to one stream, so duplicates conflict."""

from __future__ import annotations

from uuid import UUID, uuid5

_NAMESPACE = UUID("5b1c7a0e-2f4d-4c1e-9f57-6a0d3c1e8b42")


def subject_stream(subject_id: str) -> UUID:
    """Stream id of a subject's casebook."""
    return uuid5(_NAMESPACE, f"subject:{subject_id}")


def user_stream(username: str) -> UUID:
    """Stream id of a user account."""
    return uuid5(_NAMESPACE, f"user:{username}")


def study_stream(study_id: str) -> UUID:
    """Stream id of the study registry (sites)."""
    return uuid5(_NAMESPACE, f"study:{study_id}")


def ledger_stream() -> UUID:
    """Stream id of the ledger: the chain of seals and the keys that signed them."""
    return uuid5(_NAMESPACE, "ledger:seals")


def escalation_stream(study_id: str) -> UUID:
    """Stream id of a study's dose escalation (slots, DLT outcomes, SRC decisions)."""
    return uuid5(_NAMESPACE, f"escalation:{study_id}")
