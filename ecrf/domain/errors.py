"""Domain errors: every refusal the system can give, mapped to HTTP in one place (ecrf.api)."""

from __future__ import annotations

from dataclasses import dataclass


class EcrfError(Exception):
    """Base class of every refusal; ``str(error)`` is safe to show a client."""


class NotFoundError(EcrfError):
    """The subject, entry, query, user or form does not exist (or is not visible)."""


class HiddenError(NotFoundError):
    """Data of a site the caller may not see: shown as absent (404), recorded as refused."""


class NotAuthenticatedError(EcrfError):
    """No, expired or invalid credentials."""


class AccountLockedError(EcrfError):
    """The account is locked after repeated failed logins."""


class ForbiddenError(EcrfError):
    """The caller's role or site does not allow this."""


class ConflictError(EcrfError):
    """Stale revision, duplicate, or a state that does not allow this command."""


class LockedError(EcrfError):
    """The entry or casebook is locked."""


class UnavailableError(EcrfError):
    """The database cannot be reached; the request may be retried."""


@dataclass(frozen=True)
class Problem:
    """One reason an input was rejected, located by JSON Pointer."""

    path: str
    message: str


class InvalidInputError(EcrfError):
    """The input breaks a hard check; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.path or '/'}: {p.message}" for p in problems))
        self.problems = problems

    @classmethod
    def single(cls, path: str, message: str) -> InvalidInputError:
        """An error with one problem."""
        return cls([Problem(path, message)])
