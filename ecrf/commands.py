"""Commands: what a caller asks the application to do, validated at the edge.

Frozen pydantic models with ``extra="forbid"``; the API uses them as request bodies, so
an unknown field is a 422 before anything runs.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

# Characters that can make a text look filled in while saying nothing: controls (Cc),
# format characters such as the zero-width space and the byte order mark (Cf), and
# space separators that str.strip() keeps (Zs).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs"})


def _no_nul(value: str) -> str:
    """Refuse NUL: PostgreSQL text columns (the read models) cannot hold it."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


def _visible(value: str) -> str:
    """Refuse a text with nothing visible in it (e.g. only a zero-width space)."""
    if not any(
        not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in value
    ):
        raise ValueError("must contain at least one visible character")
    return value


Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
    AfterValidator(_no_nul),
    AfterValidator(_visible),
]
Username = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$"),
]
SiteId = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2,16}$")]
FullName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_nul),
    AfterValidator(_visible),
]
OptionalText = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=4000), AfterValidator(_no_nul)
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=256)]
FormId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
VisitCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,16}$")]
Revision = Annotated[int, Field(ge=1, le=1_000_000)]
QueryId = Annotated[str, StringConstraints(max_length=100), AfterValidator(_no_nul)]


class Command(BaseModel):
    """Base of all commands: immutable, and unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CreateUser(Command):
    """Create an account (admin)."""

    username: Username
    full_name: FullName
    password: Password
    roles: list[str] = Field(min_length=1, max_length=7)
    sites: list[SiteId] = Field(default_factory=list, max_length=100)

    @field_validator("username", mode="before")
    @classmethod
    def _normalise_username(cls, value: Any) -> Any:
        # Usernames are case-insensitive: "CRC" and "crc" are the same account.
        return value.strip().lower() if isinstance(value, str) else value


class UpdateUser(Command):
    """Change an account's roles, sites, printed name or active flag (admin), with a reason.

    Absent fields stay as they are.
    """

    roles: list[str] | None = Field(default=None, min_length=1, max_length=7)
    sites: list[SiteId] | None = Field(default=None, max_length=100)
    active: bool | None = None
    full_name: FullName | None = None
    reason: Reason


class UnlockUser(Command):
    """Unlock an account (admin), with a reason."""

    reason: Reason


class AddSite(Command):
    """Add a site to the study (admin)."""

    site_id: SiteId
    name: FullName


class RegisterSubject(Command):
    """Register a subject at a site under its screening number."""

    site: SiteId
    screening_number: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]


class RecordEntry(Command):
    """Enter a form for a subject at a visit."""

    form: FormId
    version: Annotated[int, Field(ge=1, le=1000)] | None = None
    visit: VisitCode
    data: dict[str, Any]


class CorrectEntry(Command):
    """Change an entry with a JSON Merge Patch, a reason, and the revision it was read at.

    ``query_id`` cites the query the correction answers.
    """

    changes: dict[str, Any]
    reason: Reason
    expected_revision: Revision
    query_id: QueryId | None = None

    @field_validator("changes")
    @classmethod
    def _not_empty(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("changes must not be empty")
        return value


class VoidEntry(Command):
    """Mark an entry entered-in-error."""

    reason: Reason
    expected_revision: Revision


class MigrateEntry(Command):
    """Move an entry to a newer version of its form, with a reason (data manager).

    ``dry_run`` shows what would change and stores nothing; ``expected_revision``, when
    given, refuses the migration if the entry changed since it was read.
    """

    to_version: Annotated[int, Field(ge=1, le=1000)]
    reason: Reason
    dry_run: bool = False
    expected_revision: Revision | None = None


QueryText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=4000),
    AfterValidator(_no_nul),
    AfterValidator(_visible),
]
Pointer = Annotated[
    str,
    StringConstraints(pattern=r"^(/([^~/]|~[01])*)+$", max_length=500),
    AfterValidator(_no_nul),
]


class OpenQuery(Command):
    """Question one field of an entry (monitor, data manager)."""

    path: Pointer
    text: QueryText


class AnswerQuery(Command):
    """Reply to an open query (site staff, investigator)."""

    text: QueryText


class CloseQuery(Command):
    """Close a query, optionally saying why (monitor, data manager)."""

    text: QueryText | None = None


class ReopenQuery(Command):
    """Reopen a closed query (monitor, data manager)."""

    text: QueryText | None = None


class VerifySource(Command):
    """Mark an entry's revision as verified against source (monitor)."""

    revision: Revision


class Sign(Command):
    """An electronic signature: credentials re-entered, and what the signature means.

    ``expected_revision``, when given, is the revision the signer read: for an entry its
    revision, for a casebook the casebook's revision. If the data changed since, the
    signature is refused (409) rather than bound to something the signer never saw.
    """

    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Password
    meaning: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    expected_revision: Revision | None = None


class Lock(Command):
    """Lock or unlock an entry or a casebook, with a reason (data manager)."""

    reason: Reason


class ChangePassword(Command):
    """Change one's own password, re-entering the current one (11.300)."""

    current_password: Password
    new_password: Password


class ResetPassword(Command):
    """Set a new password for an account (admin), with a reason."""

    new_password: Password
    reason: Reason


class EnrolSubject(Command):
    """Enrol a consented, eligible subject in the next open dose-escalation slot."""

    reason: Reason | None = None


class DecideDose(Command):
    """A Safety Review Committee decision, signed with the caller's own password.

    For ``stop``, ``dose_level`` is the MTD the committee declares (null for none).
    """

    action: Literal["escalate", "expand", "continue", "deescalate", "stop"]
    dose_level: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,16}$")] | None = None
    rationale: OptionalText = ""
    password: Password
    meaning: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
