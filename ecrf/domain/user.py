"""The User aggregate: accounts, role and site grants, logins and lockouts, all audited."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from ecrf.domain.errors import ConflictError
from ecrf.domain.ids import user_stream


class User(Aggregate):
    """One person's account; every change to it is an attributed event."""

    class Created(Aggregate.Created):
        """An account was created."""

        username: str
        full_name: str
        password_hash: str
        roles: list[str]
        sites: list[str]
        audit: dict[str, Any]

    class RolesChanged(Aggregate.Event):
        """The account's roles were replaced."""

        roles: list[str]
        audit: dict[str, Any]

    class SitesChanged(Aggregate.Event):
        """The account's site grants were replaced."""

        sites: list[str]
        audit: dict[str, Any]

    class FullNameChanged(Aggregate.Event):
        """The printed name was changed; signatures already made keep the name they bear."""

        full_name: str
        audit: dict[str, Any]

    class Deactivated(Aggregate.Event):
        """The account can no longer log in."""

        audit: dict[str, Any]

    class Reactivated(Aggregate.Event):
        """The account may log in again."""

        audit: dict[str, Any]

    class PasswordChanged(Aggregate.Event):
        """The password was replaced (only its argon2id hash is stored)."""

        password_hash: str
        audit: dict[str, Any]

    class LoginSucceeded(Aggregate.Event):
        """A login with the right password."""

        audit: dict[str, Any]

    class LoginFailed(Aggregate.Event):
        """A login with a wrong password, or on a locked or inactive account."""

        failures: int
        cause: str
        audit: dict[str, Any]

    class Locked(Aggregate.Event):
        """The account was locked after repeated failures."""

        audit: dict[str, Any]

    class Unlocked(Aggregate.Event):
        """An admin unlocked the account."""

        audit: dict[str, Any]

    @staticmethod
    def create_id(username: str, **_: Any) -> UUID:
        """One stream per username, so a duplicate account conflicts on save."""
        return user_stream(username)

    @event(Created)
    def __init__(
        self,
        username: str,
        full_name: str,
        password_hash: str,
        roles: list[str],
        sites: list[str],
        audit: dict[str, Any],
    ) -> None:
        self.username = username
        self.full_name = full_name
        self.password_hash = password_hash
        self.roles = list(roles)
        self.sites = list(sites)
        self.active = True
        self.locked = False
        self.failures = 0

    @event(RolesChanged)
    def change_roles(self, roles: list[str], audit: dict[str, Any]) -> None:
        """Replace the roles."""
        self.roles = list(roles)

    @event(SitesChanged)
    def change_sites(self, sites: list[str], audit: dict[str, Any]) -> None:
        """Replace the site grants."""
        self.sites = list(sites)

    @event(FullNameChanged)
    def change_full_name(self, full_name: str, audit: dict[str, Any]) -> None:
        """Replace the printed name (the name signature manifestations show from now on)."""
        self.full_name = full_name

    @event(Deactivated)
    def deactivate(self, audit: dict[str, Any]) -> None:
        """Stop the account from logging in."""
        self.active = False

    @event(Reactivated)
    def reactivate(self, audit: dict[str, Any]) -> None:
        """Allow the account to log in again."""
        self.active = True

    @event(PasswordChanged)
    def change_password(self, password_hash: str, audit: dict[str, Any]) -> None:
        """Replace the password hash."""
        self.password_hash = password_hash

    @event(LoginSucceeded)
    def _login_succeeded(self, audit: dict[str, Any]) -> None:
        self.failures = 0

    @event(LoginFailed)
    def _login_failed(self, failures: int, cause: str, audit: dict[str, Any]) -> None:
        self.failures = failures

    @event(Locked)
    def _lock(self, audit: dict[str, Any]) -> None:
        self.locked = True

    @event(Unlocked)
    def _unlock(self, audit: dict[str, Any]) -> None:
        self.locked = False
        self.failures = 0

    def record_login(self, password_ok: bool, max_failures: int, audit: dict[str, Any]) -> str:
        """Record a login attempt and return its outcome.

        Outcomes: "ok", "locked" (refused, account already locked), "inactive",
        "wrong password", and "now locked" when this failure reached ``max_failures``.
        """
        if self.locked:
            self._login_failed(self.failures, "locked", audit)
            return "locked"
        if not self.active:
            self._login_failed(self.failures, "inactive", audit)
            return "inactive"
        if password_ok:
            self._login_succeeded(audit)
            return "ok"
        self._login_failed(self.failures + 1, "wrong password", audit)
        if self.failures >= max_failures:
            self._lock(audit)
            return "now locked"
        return "wrong password"

    def unlock(self, audit: dict[str, Any]) -> None:
        """Unlock a locked account."""
        if not self.locked:
            raise ConflictError("account is not locked")
        self._unlock(audit)
