"""Who may do what: the role table of PROTOCOL.md, and the audit stamp of each command."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ecrf.domain.errors import ForbiddenError, HiddenError


class Role(StrEnum):
    """The roles of PROTOCOL.md "Who uses it"."""

    SITE_STAFF = "site_staff"
    INVESTIGATOR = "investigator"
    MONITOR = "monitor"
    DATA_MANAGER = "data_manager"
    SAFETY_REVIEWER = "safety_reviewer"
    REGULATOR = "regulator"
    ADMIN = "admin"


class Action(StrEnum):
    """Every command and read that is checked against roles."""

    READ_CASEBOOK = "read casebooks, audit trails and queries"
    READ_CLINICAL = "read clinical data"
    REGISTER_SUBJECT = "register subjects"
    ENTER_DATA = "enter and correct form data"
    ANSWER_QUERY = "answer queries"
    MANAGE_QUERY = "open, close and reopen queries"
    VERIFY_SOURCE = "mark source data verified"
    SIGN = "sign electronically"
    LOCK = "lock and unlock data"
    MIGRATE = "migrate entries to a new form version"
    ENROL = "enrol subjects"
    DECIDE_DOSE = "record dose-escalation decisions"
    READ_REPORTS = "read reports"
    READ_LEDGER = "read and verify the event ledger"
    EXPORT = "export data"
    MANAGE_USERS = "manage user accounts"
    MANAGE_SITES = "manage sites"


# Who reads subject-level data: casebooks, entries, audit trails, the query list.
# The Safety Review Committee is not among them: PROTOCOL.md gives it the safety tables
# and the dose decisions only, and its role is not bound to sites.
_CASEBOOK_READERS = {
    Role.SITE_STAFF,
    Role.INVESTIGATOR,
    Role.MONITOR,
    Role.DATA_MANAGER,
    Role.REGULATOR,
}

# Who reads study-level clinical summaries: the reports and the dose-escalation state.
_CLINICAL_READERS = _CASEBOOK_READERS | {Role.SAFETY_REVIEWER}

PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.READ_CASEBOOK: frozenset(_CASEBOOK_READERS),
    # Dose-escalation cohorts (and the slots' subject ids, each site-checked).
    Action.READ_CLINICAL: frozenset(_CLINICAL_READERS),
    Action.REGISTER_SUBJECT: frozenset({Role.SITE_STAFF, Role.INVESTIGATOR}),
    Action.ENTER_DATA: frozenset({Role.SITE_STAFF, Role.INVESTIGATOR}),
    Action.ANSWER_QUERY: frozenset({Role.SITE_STAFF, Role.INVESTIGATOR}),
    Action.MANAGE_QUERY: frozenset({Role.MONITOR, Role.DATA_MANAGER}),
    Action.VERIFY_SOURCE: frozenset({Role.MONITOR}),
    Action.SIGN: frozenset({Role.INVESTIGATOR}),
    Action.LOCK: frozenset({Role.DATA_MANAGER}),
    Action.MIGRATE: frozenset({Role.DATA_MANAGER}),
    Action.ENROL: frozenset({Role.SITE_STAFF, Role.INVESTIGATOR}),
    Action.DECIDE_DOSE: frozenset({Role.SAFETY_REVIEWER}),
    Action.READ_REPORTS: frozenset(_CLINICAL_READERS),
    Action.READ_LEDGER: frozenset({Role.REGULATOR, Role.MONITOR, Role.DATA_MANAGER}),
    Action.EXPORT: frozenset({Role.DATA_MANAGER, Role.REGULATOR}),
    Action.MANAGE_USERS: frozenset({Role.ADMIN}),
    Action.MANAGE_SITES: frozenset({Role.ADMIN}),
}

# Roles whose view of clinical data is limited to the sites they are granted.
SITE_BOUND_ROLES = frozenset({Role.SITE_STAFF, Role.INVESTIGATOR, Role.MONITOR})


@dataclass(frozen=True)
class Actor:
    """The authenticated person behind a command, as they are at that moment."""

    username: str
    full_name: str
    roles: tuple[str, ...]
    sites: tuple[str, ...]
    request_id: str = ""

    def role_for(self, action: Action) -> str:
        """The role under which this actor may perform ``action``, or raise 403."""
        allowed = PERMISSIONS[action]
        for role in self.roles:
            if role in allowed:
                return role
        raise ForbiddenError(f"your role does not allow you to {action.value}")

    def can(self, action: Action) -> bool:
        """Whether any of the actor's roles allows ``action``."""
        return any(role in PERMISSIONS[action] for role in self.roles)

    def sees_site(self, site: str, action: Action) -> bool:
        """Whether the actor's role for ``action`` reaches data of ``site``."""
        role = self.role_for(action)
        return role not in SITE_BOUND_ROLES or site in self.sites

    def check_site(self, site: str, action: Action) -> str:
        """Return the role used, or raise; another site's data looks absent (404)."""
        role = self.role_for(action)
        if role in SITE_BOUND_ROLES and site not in self.sites:
            raise HiddenError("subject not found")
        return role

    def stamp(self, role: str, site: str, reason: str = "") -> dict[str, Any]:
        """The audit metadata every event carries (the timestamp is the event's own)."""
        return {
            "user": self.username,
            "user_name": self.full_name,
            "role": role,
            "site": site,
            "request_id": self.request_id,
            "reason": reason,
        }


SYSTEM = Actor(username="system", full_name="ecrf system", roles=("system",), sites=())
"""The built-in actor of automatic events: seeding, system queries, seals."""


@dataclass(frozen=True)
class Grant:
    """Roles and sites of an account, validated against the known roles."""

    roles: tuple[str, ...]
    sites: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = [r for r in self.roles if r not in Role.__members__.values()]
        if unknown:
            raise ValueError(f"unknown roles: {', '.join(unknown)}")
