"""The eventsourcing Application: one method per command, each checked and audited."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    InterfaceError,
    OperationalError,
    Recording,
    Transcoder,
)

from ecrf.checks import Finding, SoftChecks, derive
from ecrf.commands import (
    AddSite,
    AnswerQuery,
    ChangePassword,
    CloseQuery,
    CorrectEntry,
    CreateUser,
    DecideDose,
    EnrolSubject,
    Lock,
    MigrateEntry,
    OpenQuery,
    RecordEntry,
    RegisterSubject,
    ReopenQuery,
    ResetPassword,
    Sign,
    UnlockUser,
    UpdateUser,
    VerifySource,
    VoidEntry,
)
from ecrf.config import Settings
from ecrf.domain.access import SYSTEM, Action, Actor, Role
from ecrf.domain.errors import (
    AccountLockedError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    Problem,
    UnavailableError,
)
from ecrf.domain.escalation import (
    DLT_FORM,
    INFUSION_FORM,
    Decision,
    DoseEscalation,
    EscalationSnapshot,
    NotEligibleError,
    Slot,
    enrolment_problems,
    escalation_plan,
    signed_dlt_outcome,
)
from ecrf.domain.ids import escalation_stream, study_stream, subject_stream, user_stream
from ecrf.domain.patch import diff, merge_patch
from ecrf.domain.security_log import AccessRefusal
from ecrf.domain.study import StudyRegistry
from ecrf.domain.subject import (
    CasebookSignature,
    Entry,
    Query,
    Signature,
    Subject,
    SubjectStatus,
)
from ecrf.domain.user import User
from ecrf.forms import FormRegistry, FormVersion, load_forms
from ecrf.ledger.service import LedgerService
from ecrf.persistence import ChainedEventStore, EventTable, StoredStateTranscoder
from ecrf.security import Passwords, TokenService

T = TypeVar("T")

_SAVE_ATTEMPTS = 5
_ACCOUNTS_REMEMBERED = 10_000


@dataclass(frozen=True)
class _Account:
    """What a request needs of its caller's account, at one version of its stream."""

    version: int
    username: str
    full_name: str
    roles: tuple[str, ...]
    sites: tuple[str, ...]
    active: bool
    locked: bool

    @classmethod
    def of(cls, user: User) -> _Account:
        """The account as ``user`` stands."""
        return cls(
            user.version,
            user.username,
            user.full_name,
            tuple(user.roles),
            tuple(user.sites),
            user.active,
            user.locked,
        )


@dataclass(frozen=True)
class EntryMigration:
    """What migrating one entry to another form version changes (or would change)."""

    entry_id: str
    form: str
    from_version: int
    to_version: int
    schema_sha256: str
    changes: list[dict[str, Any]]
    dry_run: bool


class EcrfApplication(Application[UUID]):
    """The eCRF: casebooks, accounts and the study registry, stored as hash-chained events."""

    name = "ecrf"
    # Keep recently used aggregates in memory and fast-forward them with newer events
    # from the store, instead of replaying a whole casebook (or a user's stream of
    # logins) on every request. Fast-forwarding reads the store, so several workers
    # sharing one PostgreSQL database stay correct.
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "2000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
    }

    def __init__(self, settings: Settings, forms: FormRegistry | None = None) -> None:
        self.settings = settings
        self.forms = forms or load_forms(settings.forms_dir)
        try:
            super().__init__(env=settings.database.eventsourcing_env())
        except (OperationalError, InterfaceError) as error:
            raise UnavailableError(f"database unavailable: {error}") from error
        self.passwords = Passwords(settings.argon2_time_cost, settings.argon2_memory_kib)
        self.checks = SoftChecks(self.forms.study)
        self.table = EventTable(self.recorder, settings.database.engine)
        self.table.install_immutability_guards()
        self.tokens = TokenService.from_file(
            settings.data_dir / "token-secret", settings.token_ttl_seconds
        )
        self._accounts: dict[UUID, _Account] = {}
        self.ledger = LedgerService(self)
        self._seed_study()
        if settings.bootstrap_admin:
            self.bootstrap_admin(settings.bootstrap_admin)

    def construct_transcoder(self) -> Transcoder:
        """The library's transcodings, with stored states read by orjson where it may."""
        transcoder = StoredStateTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def construct_event_store(self) -> EventStore[UUID]:
        """Every event is hash-chained onto its stream before it is stored."""
        return ChainedEventStore(mapper=self.mapper, recorder=self.recorder)

    # Saving ---------------------------------------------------------------------

    def _save(self, *aggregates: Any) -> int:
        """Save atomically and return the log position of the last event written."""
        try:
            recordings: list[Recording[UUID]] = self.save(*aggregates)
        except (OperationalError, InterfaceError) as error:
            raise UnavailableError("the database is unavailable; try again") from error
        if not recordings:
            return self.max_position()
        return int(recordings[-1].notification.id)

    def _retrying(self, command: Callable[[], T]) -> T:
        """Run a load-change-save command, retrying when a concurrent save won the race.

        The command re-reads its aggregates each attempt, so its own preconditions (an
        entry's expected revision, a free slot) are checked again against the winner.
        """
        for _ in range(_SAVE_ATTEMPTS - 1):
            try:
                return command()
            except IntegrityError:
                continue
        try:
            return command()
        except IntegrityError:
            raise ConflictError("too many concurrent changes; try again") from None

    def max_position(self) -> int:
        """The newest log position (0 for an empty log)."""
        return int(self.recorder.max_notification_id() or 0)

    def _get(self, stream: UUID, kind: type[T], not_found: str) -> T:
        try:
            aggregate: Any = self.repository.get(stream)
        except AggregateNotFoundError:
            raise NotFoundError(not_found) from None
        except (OperationalError, InterfaceError) as error:
            raise UnavailableError("the database is unavailable; try again") from error
        if not isinstance(aggregate, kind):
            raise NotFoundError(not_found)
        return aggregate

    # Study registry ------------------------------------------------------------

    def _seed_study(self) -> None:
        """Create the study registry with its shipped sites on first start."""
        if self._exists(study_stream(self.forms.study_id)):
            return
        audit = SYSTEM.stamp("system", "", "study set up from forms/study.json")
        registry = StudyRegistry(study_id=self.forms.study_id, audit=audit)
        for site in self.forms.sites():
            registry.add_site(site["site_id"], site["name"], audit)
        # Another worker may have seeded it first; its registry is the same.
        with contextlib.suppress(IntegrityError):
            self._save(registry)

    def _exists(self, stream: UUID) -> bool:
        return bool(self.recorder.select_events(stream, limit=1))

    def registry(self) -> StudyRegistry:
        """The study registry (sites)."""
        return self._get(study_stream(self.forms.study_id), StudyRegistry, "study not set up")

    def list_sites(self, actor: Actor) -> list[dict[str, str]]:
        """Sites of the study; any authenticated user may read them."""
        return [{"site_id": k, "name": v} for k, v in sorted(self.registry().sites.items())]

    def add_site(self, actor: Actor, command: AddSite) -> int:
        """Add a site (admin)."""
        role = actor.role_for(Action.MANAGE_SITES)

        def run() -> int:
            registry = self.registry()
            registry.add_site(command.site_id, command.name, actor.stamp(role, command.site_id))
            return self._save(registry)

        return self._retrying(run)

    # Users and authentication ---------------------------------------------------

    def _user(self, username: str) -> User:
        return self._get(user_stream(username.lower()), User, f"user {username} not found")

    def create_user(self, actor: Actor, command: CreateUser) -> User:
        """Create an account (admin)."""
        role = actor.role_for(Action.MANAGE_USERS)
        self._check_grants(command.roles, command.sites)
        if self._exists(user_stream(command.username)):
            raise ConflictError(f"user {command.username} already exists")
        user = User(
            username=command.username,
            full_name=command.full_name,
            password_hash=self.passwords.hash(command.password),
            roles=sorted(set(command.roles)),
            sites=sorted(set(command.sites)),
            audit=actor.stamp(role, ""),
        )
        try:
            self._save(user)
        except IntegrityError:
            raise ConflictError(f"user {command.username} already exists") from None
        return user

    def _check_grants(self, roles: list[str] | None, sites: list[str] | None) -> None:
        problems = []
        known_roles = {r.value for r in Role}
        for index, role in enumerate(roles or []):
            if role not in known_roles:
                problems.append(Problem(f"/roles/{index}", f"unknown role {role!r}"))
        if roles and Role.ADMIN.value in roles and len(set(roles)) > 1:
            # Admins manage accounts and never touch clinical data, on any account.
            problems.append(
                Problem("/roles", "an administrator account cannot also hold other roles")
            )
        if sites:
            known_sites = self.registry().sites
            for index, site in enumerate(sites):
                if site not in known_sites:
                    problems.append(Problem(f"/sites/{index}", f"unknown site {site!r}"))
        if problems:
            raise InvalidInputError(problems)

    def update_user(self, actor: Actor, username: str, command: UpdateUser) -> User:
        """Change roles, sites, printed name or active flag (admin), with a reason.

        A new printed name shows on signatures made from now on; signatures already made
        keep the name they were made with (it is in their event's audit metadata).
        """
        role = actor.role_for(Action.MANAGE_USERS)
        self._check_grants(command.roles, command.sites)
        if username.lower() == actor.username and (
            command.active is False or command.roles is not None or command.sites is not None
        ):
            raise ForbiddenError("you cannot change your own roles, sites or active flag")

        def run() -> User:
            user = self._user(username)
            audit = actor.stamp(role, "", command.reason)
            if command.full_name is not None and command.full_name != user.full_name:
                user.change_full_name(command.full_name, audit)
            if command.roles is not None and sorted(set(command.roles)) != user.roles:
                user.change_roles(sorted(set(command.roles)), audit)
            if command.sites is not None and sorted(set(command.sites)) != user.sites:
                user.change_sites(sorted(set(command.sites)), audit)
            if command.active is False and user.active:
                user.deactivate(audit)
            if command.active is True and not user.active:
                user.reactivate(audit)
            self._save(user)
            return user

        return self._retrying(run)

    def unlock_user(self, actor: Actor, username: str, command: UnlockUser) -> User:
        """Unlock an account locked by failed logins (admin)."""
        role = actor.role_for(Action.MANAGE_USERS)

        def run() -> User:
            user = self._user(username)
            user.unlock(actor.stamp(role, "", command.reason))
            self._save(user)
            return user

        return self._retrying(run)

    def change_password(self, actor: Actor, command: ChangePassword) -> None:
        """Change the caller's own password after re-checking the current one."""
        if command.new_password == command.current_password:
            raise InvalidInputError.single("/new_password", "choose a different password")
        new_hash = self.passwords.hash(command.new_password)
        try:
            self.authenticate(actor.username, command.current_password, actor.request_id)
        except NotAuthenticatedError:
            raise ForbiddenError("the current password is not correct") from None

        def run() -> None:
            user = self._user(actor.username)
            user.change_password(new_hash, actor.stamp("", "", "changed by the account holder"))
            self._save(user)

        self._retrying(run)

    def reset_password(self, actor: Actor, username: str, command: ResetPassword) -> None:
        """Set a new password for an account (admin)."""
        role = actor.role_for(Action.MANAGE_USERS)
        new_hash = self.passwords.hash(command.new_password)

        def run() -> None:
            user = self._user(username)
            user.change_password(new_hash, actor.stamp(role, "", command.reason))
            self._save(user)

        self._retrying(run)

    def bootstrap_admin(self, spec: str) -> bool:
        """Create the first admin from ``username:password`` when no account exists yet."""
        username, sep, password = spec.partition(":")
        if not sep or not username or not password:
            raise ValueError("ECRF_BOOTSTRAP_ADMIN must be username:password")
        if self._has_users():
            return False
        try:
            self.create_admin(username, password, "Administrator")
        except ConflictError:
            return False  # another worker, starting at the same moment, created it
        return True

    def create_admin(self, username: str, password: str, full_name: str) -> User:
        """Create an admin account from the command line (attributed to the system)."""
        command = CreateUser(
            username=username, full_name=full_name, password=password, roles=["admin"]
        )
        operator = Actor("system", "ecrf system (command line)", (Role.ADMIN.value,), ())
        return self.create_user(operator, command)

    def _has_users(self) -> bool:
        topic = f"{User.Created.__module__}:{User.Created.__qualname__}"
        return bool(self.recorder.select_notifications(start=None, limit=1, topics=[topic]))

    def authenticate(self, username: str, password: str, request_id: str = "") -> User:
        """Check a password, record the attempt, and lock after repeated failures."""
        name = username.strip().lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,63}", name):
            self.passwords.verify(None, password)
            raise NotAuthenticatedError("incorrect username or password")

        def run() -> tuple[User, str]:
            try:
                user = self._user(name)
            except NotFoundError:
                self.passwords.verify(None, password)
                raise NotAuthenticatedError("incorrect username or password") from None
            ok = self.passwords.verify(user.password_hash, password)
            audit = {
                "user": user.username,
                "user_name": user.full_name,
                "role": "",
                "site": "",
                "request_id": request_id,
                "reason": "",
            }
            outcome = user.record_login(ok, self.settings.max_failed_logins, audit)
            self._save(user)
            return user, outcome

        user, outcome = self._retrying(run)
        if outcome in ("locked", "now locked"):
            raise AccountLockedError("account is locked; ask an administrator to unlock it")
        if outcome != "ok":
            raise NotAuthenticatedError("incorrect username or password")
        return user

    def actor_for_token(self, token: str, request_id: str = "") -> Actor:
        """The current identity behind a bearer token (roles and sites as they are now)."""
        identity = self._account(self.tokens.username(token))
        if not identity.active:
            raise NotAuthenticatedError("account is deactivated")
        if identity.locked:
            raise AccountLockedError("account is locked; ask an administrator to unlock it")
        return Actor(
            username=identity.username,
            full_name=identity.full_name,
            roles=identity.roles,
            sites=identity.sites,
            request_id=request_id,
        )

    def _account(self, username: str) -> _Account:
        """An account as it stands in the store now.

        Every request checks its caller against the account. The store is asked for the
        newest version of the account's stream only; the account is loaded again when that
        changed (a login, new roles, a deactivation, here or in another worker). Loading it
        every time would fast-forward one cached aggregate under its lock, and all the
        requests of one user would queue on that lock.
        """
        stream = user_stream(username.lower())
        try:
            newest = self.recorder.select_events(stream, desc=True, limit=1)
        except (OperationalError, InterfaceError) as error:
            raise UnavailableError("the database is unavailable; try again") from error
        known = self._accounts.get(stream)
        if newest and known is not None and known.version == newest[0].originator_version:
            return known
        try:
            user = self._user(username)
        except NotFoundError:
            raise NotAuthenticatedError("invalid token") from None
        account = _Account.of(user)
        if len(self._accounts) >= _ACCOUNTS_REMEMBERED:
            self._accounts.clear()
        self._accounts[stream] = account
        return account

    def user_view(self, username: str) -> dict[str, Any]:
        """Public view of an account (never its password hash)."""
        user = self._user(username)
        return {
            "username": user.username,
            "full_name": user.full_name,
            "roles": user.roles,
            "sites": user.sites,
            "active": user.active,
            "locked": user.locked,
        }

    def record_refusal(
        self, username: str, method: str, path: str, status: int, reason: str, request_id: str
    ) -> None:
        """Record a refused request in the log (best effort: a refusal never fails twice)."""
        audit = {
            "user": username,
            "user_name": "",
            "role": "",
            "site": "",
            "request_id": request_id,
            "reason": reason,
        }
        refusal = AccessRefusal(
            user=username, method=method, path=path[:500], status=status, reason=reason, audit=audit
        )
        with contextlib.suppress(OperationalError, InterfaceError, IntegrityError):
            self.save(refusal)

    # Subjects and entries ---------------------------------------------------------

    def _subject(self, actor: Actor, subject_id: str, action: Action) -> tuple[Subject, str]:
        subject = self._get(subject_stream(subject_id), Subject, "subject not found")
        role = actor.check_site(subject.site, action)
        return subject, role

    def register_subject(self, actor: Actor, command: RegisterSubject) -> tuple[Subject, int]:
        """Register a subject; the id is the site code and screening number."""
        role = actor.check_site(command.site, Action.REGISTER_SUBJECT)
        if command.site not in self.registry().sites:
            raise InvalidInputError.single("/site", f"unknown site {command.site!r}")
        subject_id = f"{command.site}-{command.screening_number}"
        if self._exists(subject_stream(subject_id)):
            raise ConflictError(f"subject {subject_id} is already registered")
        subject = Subject(
            subject_id=subject_id,
            site=command.site,
            screening_number=command.screening_number,
            audit=actor.stamp(role, command.site),
        )
        try:
            position = self._save(subject)
        except IntegrityError:
            raise ConflictError(f"subject {subject_id} is already registered") from None
        return subject, position

    def record_entry(
        self, actor: Actor, subject_id: str, command: RecordEntry
    ) -> tuple[Subject, Entry, int]:
        """Validate and record a new form entry."""
        try:
            form = self.forms.get(command.form, command.version)
        except NotFoundError as error:
            path = (
                "/version" if command.version is not None and "version" in str(error) else "/form"
            )
            raise InvalidInputError.single(path, str(error)) from None
        entry_id = str(uuid.uuid4())

        def run() -> tuple[Subject, Entry, int]:
            # Refusals in the order a client can act on: 404/403, then 423, then 422.
            subject, role = self._subject(actor, subject_id, Action.ENTER_DATA)
            subject.ensure_writable()
            visit = self.forms.check_visit(form.form, command.visit)
            self._refuse_read_only(form.read_only_fields, command.data)
            data = self._derived(form, command.data)
            if not visit.get("repeatable") and subject.live_entries(form.form, visit["code"]):
                raise ConflictError(
                    f"form {form.form!r} is already entered at visit {visit['code']!r}; "
                    "correct that entry instead"
                )
            subject.record_entry(
                entry_id,
                form.form,
                form.version,
                visit["code"],
                data,
                form.sha256,
                actor.stamp(role, subject.site),
            )
            self._raise_soft_checks(subject, entry_id)
            audit = actor.stamp(role, subject.site)
            position = self._save(subject, *self._escalation_follows(subject, entry_id, audit))
            return subject, subject.entry(entry_id), position

        return self._retrying(run)

    def _derived(self, form: FormVersion, data: dict[str, Any]) -> dict[str, Any]:
        """Validate client data, add the server-derived values, and validate the result."""
        self.forms.validate(form, data)
        try:
            derived = derive(form.form, data)
        except (TypeError, ValueError) as error:  # the schema should have caught it
            raise InvalidInputError.single("", f"cannot derive values: {error}") from None
        if derived != data:  # most forms derive nothing: the same data need not be checked twice
            self.forms.validate(form, derived)
        return derived

    def _raise_soft_checks(self, subject: Subject, entry_id: str) -> None:
        """Open a system query per new finding; close system queries a change resolved.

        A change to an anchor entry (consent, infusion, ...) moves the visit windows of
        every other entry, so their window findings are evaluated again too; and a change
        to a date that date-order rules compare with other forms' dates (the infusion
        before an adverse event's onset, ...) re-evaluates those rules on the other entries.
        """
        entry = subject.entry(entry_id)
        live = self._live_facts(subject, self.checks.compared_forms(entry.form))
        findings = self.checks.findings(
            entry,
            entry.visit,
            live,
            assigned_dose_level=subject.dose_level,
        )
        # A system query is the finding it was opened for: same field, same message.
        pending = {
            (q.path, q.messages[0].text): q
            for q in subject.queries.values()
            if q.entry_id == entry_id and q.system and q.state != "closed" and q.messages
        }
        found = {(f.path, f.message) for f in findings}
        for finding in findings:
            if (finding.path, finding.message) not in pending:
                self.open_system_query(subject, entry_id, finding.path, finding.message)
        for key, query in pending.items():
            if key not in found:
                audit = SYSTEM.stamp("system", subject.site, "soft check no longer applies")
                subject.close_query(query.query_id, "Resolved by the correction.", audit)
        if self.checks.is_anchor_form(entry.form):
            self._recheck_visit_windows(subject, changed=entry)
        self._recheck_date_order(subject, changed=entry)

    @staticmethod
    def _close_system_queries_of_voided(subject: Subject, voided: Entry) -> None:
        """A voided entry leaves every check: the system closes what its checks asked.

        People's queries on it stay as they are; a monitor may still want an answer.
        """
        audit = SYSTEM.stamp("system", subject.site, f"entry {voided.entry_id} voided")
        for query in list(subject.queries.values()):
            if query.entry_id == voided.entry_id and query.system and query.state != "closed":
                subject.close_query(query.query_id, "Closed: the entry was voided.", audit)

    @staticmethod
    def _live_facts(subject: Subject, forms: Collection[str]) -> list[Entry]:
        """The subject's live entries of ``forms`` (the soft checks read them as they are)."""
        return [e for e in subject.entries.values() if e.form in forms and not e.voided]

    def _recheck_visit_windows(self, subject: Subject, changed: Entry) -> None:
        """Bring every other live entry's visit-window queries in line with the anchors now.

        Only window queries are touched. A finding is asked again unless a query on it is
        still open or a person closed it (the site's answer stands); a window query whose
        finding no longer holds is closed by the system.
        """
        live = self._live_facts(subject, self.checks.anchor_forms())
        reason = f"visit window recomputed after a change to {changed.form} {changed.entry_id}"
        for other in list(subject.entries.values()):
            if other.voided or other.entry_id == changed.entry_id:
                continue
            findings = self.checks.visit_window_findings(other, other.visit, live)
            window_queries = [
                q
                for q in subject.queries.values()
                if q.entry_id == other.entry_id
                and q.system
                and q.messages
                and self.checks.is_visit_window_message(other.visit, q.messages[0].text)
            ]
            resolution = "Resolved: the visit window was recomputed from the changed anchor date."
            self._reconcile_system_queries(
                subject, other, findings, window_queries, reason, resolution
            )

    def _recheck_date_order(self, subject: Subject, changed: Entry) -> None:
        """Bring other live entries' date-order queries in line with ``changed``'s dates now.

        Only queries of the rules comparing ``changed``'s form with the other entry's form
        are touched, as for visit windows. A finding that a system query on ``changed``
        already asks (its own checks just ran) is not asked a second time on the other
        entry; a query whose finding no longer holds is closed by the system.
        """
        partners = self.checks.date_order_partners(changed.form)
        if not partners:
            return
        live = self._live_facts(subject, {changed.form})
        reason = f"date order rechecked after a change to {changed.form} {changed.entry_id}"
        resolution = f"Resolved: the dates no longer conflict after a change to {changed.form}."
        asked_on_changed = (
            set()
            if changed.voided
            else {
                q.messages[0].text
                for q in subject.queries.values()
                if q.entry_id == changed.entry_id
                and q.system
                and q.state != "closed"
                and q.messages
            }
        )
        for other in list(subject.entries.values()):
            if other.voided or other.entry_id == changed.entry_id or other.form not in partners:
                continue
            messages = self.checks.date_order_messages(other.form, changed.form)
            findings = self.checks.date_order_findings(other, live, changed.form)
            order_queries = [
                q
                for q in subject.queries.values()
                if q.entry_id == other.entry_id
                and q.system
                and q.messages
                and q.messages[0].text in messages
            ]
            self._reconcile_system_queries(
                subject,
                other,
                findings,
                order_queries,
                reason,
                resolution,
                asked_elsewhere=frozenset(asked_on_changed),
            )

    def _reconcile_system_queries(
        self,
        subject: Subject,
        entry: Entry,
        findings: list[Finding],
        queries: list[Query],
        reason: str,
        resolution: str,
        asked_elsewhere: frozenset[str] = frozenset(),
    ) -> None:
        """Ask the findings not yet settled; close the open ``queries`` no finding backs."""
        settled = {
            (q.path, q.messages[0].text)
            for q in queries
            if q.state != "closed" or q.messages[-1].user != SYSTEM.username
        }
        for finding in findings:
            key = (finding.path, finding.message)
            if key not in settled and finding.message not in asked_elsewhere:
                self.open_system_query(subject, entry.entry_id, finding.path, finding.message)
        found = {(f.path, f.message) for f in findings}
        for query in queries:
            if query.state != "closed" and (query.path, query.messages[0].text) not in found:
                audit = SYSTEM.stamp("system", subject.site, reason)
                subject.close_query(query.query_id, resolution, audit)

    def correct_entry(
        self, actor: Actor, subject_id: str, entry_id: str, command: CorrectEntry
    ) -> tuple[Subject, Entry, int]:
        """Apply a merge patch to an entry, re-validated against its pinned version."""

        def run() -> tuple[Subject, Entry, int]:
            subject, role = self._subject(actor, subject_id, Action.ENTER_DATA)
            entry = subject.entry(entry_id)
            subject.ensure_writable(entry_id)
            form = self.forms.get(entry.form, entry.version)
            self._refuse_read_only(form.read_only_fields, command.changes)
            client_data = {k: v for k, v in entry.data.items() if k not in form.read_only_fields}
            patched = merge_patch(client_data, command.changes)
            if not isinstance(patched, dict):
                raise InvalidInputError.single("/changes", "the patch must keep an object")
            data = self._derived(form, patched)
            changes = diff(entry.data, data)
            subject.correct_entry(
                entry_id,
                command.expected_revision,
                data,
                changes,
                actor.stamp(role, subject.site, command.reason),
                query_id=command.query_id,
                schema_sha256=form.sha256,
            )
            self._raise_soft_checks(subject, entry_id)
            audit = actor.stamp(role, subject.site, command.reason)
            position = self._save(subject, *self._escalation_follows(subject, entry_id, audit))
            return subject, subject.entry(entry_id), position

        return self._retrying(run)

    def void_entry(
        self, actor: Actor, subject_id: str, entry_id: str, command: VoidEntry
    ) -> tuple[Subject, Entry, int]:
        """Mark an entry entered-in-error, with a reason."""

        def run() -> tuple[Subject, Entry, int]:
            subject, role = self._subject(actor, subject_id, Action.ENTER_DATA)
            audit = actor.stamp(role, subject.site, command.reason)
            subject.void_entry(entry_id, command.expected_revision, audit)
            voided = subject.entry(entry_id)
            self._close_system_queries_of_voided(subject, voided)
            if self.checks.is_anchor_form(voided.form):
                self._recheck_visit_windows(subject, changed=voided)
            self._recheck_date_order(subject, changed=voided)
            position = self._save(subject, *self._escalation_follows(subject, entry_id, audit))
            return subject, subject.entry(entry_id), position

        return self._retrying(run)

    def migrate_entry(
        self, actor: Actor, subject_id: str, entry_id: str, command: MigrateEntry
    ) -> tuple[Subject, EntryMigration, int]:
        """Move an entry to a newer version of its form, re-validated and re-derived there.

        A dry run goes through every check and computes the same result, then stores
        nothing; the casebook returned shows the entry as it would be.
        """

        def run() -> tuple[Subject, EntryMigration, int]:
            # Refusals in the order a client can act on: 403/404, 423, 409, then 422.
            subject, role = self._subject(actor, subject_id, Action.MIGRATE)
            stored_position = self.subject_position(subject)
            entry = subject.check_migration(entry_id, command.to_version, command.expected_revision)
            try:
                target = self.forms.get(entry.form, command.to_version)
            except NotFoundError as error:
                raise InvalidInputError.single("/to_version", str(error)) from None
            source = self.forms.get(entry.form, entry.version)
            client_data = {k: v for k, v in entry.data.items() if k not in source.read_only_fields}
            self._refuse_read_only(target.read_only_fields, client_data)
            data = self._derived(target, client_data)
            changes = diff(entry.data, data)
            audit = actor.stamp(role, subject.site, command.reason)
            subject.migrate_entry(
                entry_id,
                target.version,
                data,
                changes,
                target.sha256,
                audit,
                expected_revision=command.expected_revision,
            )
            self._raise_soft_checks(subject, entry_id)
            migration = EntryMigration(
                entry_id=entry_id,
                form=entry.form,
                from_version=entry.version,
                to_version=target.version,
                schema_sha256=target.sha256,
                changes=changes,
                dry_run=command.dry_run,
            )
            if command.dry_run:
                # The changed copy is dropped unsaved: nothing is stored, nothing cached.
                return subject, migration, stored_position
            escalation = self._escalation_follows(subject, entry_id, audit)
            return subject, migration, self._save(subject, *escalation)

        return self._retrying(run)

    # Queries, SDV, signatures, locks ------------------------------------------------

    def _change_subject(
        self,
        actor: Actor,
        subject_id: str,
        action: Action,
        change: Callable[[Subject, str], T],
    ) -> tuple[Subject, T, int]:
        """Load a casebook, check role and site, apply ``change``, save (with retries)."""

        def run() -> tuple[Subject, T, int]:
            subject, role = self._subject(actor, subject_id, action)
            result = change(subject, role)
            return subject, result, self._save(subject)

        return self._retrying(run)

    def open_query(
        self, actor: Actor, subject_id: str, entry_id: str, command: OpenQuery
    ) -> tuple[Subject, str, int]:
        """Open a query on a field the entry's form defines."""

        def change(subject: Subject, role: str) -> str:
            entry = subject.entry(entry_id)
            if not self.forms.get(entry.form, entry.version).defines(command.path):
                raise InvalidInputError.single(
                    "/path", f"form {entry.form} v{entry.version} has no field {command.path}"
                )
            return subject.open_query(
                entry_id, command.path, command.text, actor.stamp(role, subject.site)
            )

        return self._change_subject(actor, subject_id, Action.MANAGE_QUERY, change)

    def open_system_query(self, subject: Subject, entry_id: str, path: str, text: str) -> str:
        """Raise a soft-check query as the built-in system actor (saved with the entry)."""
        return subject.open_query(entry_id, path, text, SYSTEM.stamp("system", subject.site))

    @staticmethod
    def subject_of_query(query_id: str) -> str:
        """The subject a query id belongs to (ids are ``<subject_id>.Q<n>``)."""
        subject_id, sep, number = query_id.rpartition(".Q")
        if not sep or not subject_id or not number.isdigit():
            raise NotFoundError(f"query {query_id} not found")
        return subject_id

    def answer_query(
        self, actor: Actor, query_id: str, command: AnswerQuery
    ) -> tuple[Subject, str, int]:
        """The site's answer to an open query."""

        def change(subject: Subject, role: str) -> str:
            subject.answer_query(query_id, command.text, actor.stamp(role, subject.site))
            return query_id

        subject_id = self.subject_of_query(query_id)
        return self._change_subject(actor, subject_id, Action.ANSWER_QUERY, change)

    def close_query(
        self, actor: Actor, query_id: str, command: CloseQuery
    ) -> tuple[Subject, str, int]:
        """Close an open or answered query."""

        def change(subject: Subject, role: str) -> str:
            subject.close_query(query_id, command.text or "", actor.stamp(role, subject.site))
            return query_id

        subject_id = self.subject_of_query(query_id)
        return self._change_subject(actor, subject_id, Action.MANAGE_QUERY, change)

    def reopen_query(
        self, actor: Actor, query_id: str, command: ReopenQuery
    ) -> tuple[Subject, str, int]:
        """Reopen a closed query."""

        def change(subject: Subject, role: str) -> str:
            subject.reopen_query(query_id, command.text or "", actor.stamp(role, subject.site))
            return query_id

        subject_id = self.subject_of_query(query_id)
        return self._change_subject(actor, subject_id, Action.MANAGE_QUERY, change)

    def verify_source(
        self, actor: Actor, subject_id: str, entry_id: str, command: VerifySource
    ) -> tuple[Subject, Entry, int]:
        """Mark an entry's current revision source-verified (SDV)."""

        def change(subject: Subject, role: str) -> Entry:
            subject.verify_entry(entry_id, command.revision, actor.stamp(role, subject.site))
            return subject.entry(entry_id)

        return self._change_subject(actor, subject_id, Action.VERIFY_SOURCE, change)

    def _check_signer(self, actor: Actor, command: Sign) -> str:
        """Re-authenticate the signer (11.200): the caller, with their own password."""
        actor.role_for(Action.SIGN)
        statement = self.forms.signature_meaning(command.meaning)
        if command.username.strip().lower() != actor.username:
            raise ForbiddenError("a signature must be made with your own username and password")
        try:
            self.authenticate(command.username, command.password, actor.request_id)
        except NotAuthenticatedError:
            raise ForbiddenError("signature refused: incorrect username or password") from None
        return statement

    def sign_entry(
        self, actor: Actor, subject_id: str, entry_id: str, command: Sign
    ) -> tuple[Subject, Signature, int]:
        """Sign an entry at its current revision; a signed DLT assessment counts for escalation."""
        statement = self._check_signer(actor, command)

        def run() -> tuple[Subject, Signature, int]:
            subject, role = self._subject(actor, subject_id, Action.SIGN)
            audit = actor.stamp(role, subject.site)
            signature = subject.sign_entry(
                entry_id, command.meaning, statement, audit, command.expected_revision
            )
            # The outcome is recorded in the same save as the signature that makes it count.
            escalation = self._escalation_follows(subject, entry_id, audit)
            return subject, signature, self._save(subject, *escalation)

        return self._retrying(run)

    def sign_casebook(
        self, actor: Actor, subject_id: str, command: Sign
    ) -> tuple[Subject, CasebookSignature, int]:
        """Sign a whole casebook as it stands."""
        statement = self._check_signer(actor, command)

        def change(subject: Subject, role: str) -> CasebookSignature:
            return subject.sign_casebook(
                command.meaning,
                statement,
                actor.stamp(role, subject.site),
                command.expected_revision,
            )

        return self._change_subject(actor, subject_id, Action.SIGN, change)

    def lock(
        self,
        actor: Actor,
        subject_id: str,
        entry_id: str | None,
        command: Lock,
        *,
        locked: bool,
    ) -> tuple[Subject, str, int]:
        """Lock or unlock one entry, or the whole casebook when ``entry_id`` is None."""

        def change(subject: Subject, role: str) -> str:
            audit = actor.stamp(role, subject.site, command.reason)
            if entry_id is None:
                (subject.lock_casebook if locked else subject.unlock_casebook)(audit)
                return subject.subject_id
            (subject.lock_entry if locked else subject.unlock_entry)(entry_id, audit)
            return entry_id

        return self._change_subject(actor, subject_id, Action.LOCK, change)

    @staticmethod
    def _refuse_read_only(read_only: frozenset[str], data: dict[str, Any]) -> None:
        sent = sorted(read_only & data.keys())
        if sent:
            raise InvalidInputError(
                [Problem(f"/{name}", "derived by the server; do not send it") for name in sent]
            )

    # Reading casebooks -----------------------------------------------------------

    def subject(self, actor: Actor, subject_id: str, as_of: datetime | None = None) -> Subject:
        """A casebook now, or exactly as it stood at ``as_of`` (replayed from its events)."""
        if as_of is None:
            subject, _ = self._subject(actor, subject_id, Action.READ_CASEBOOK)
            return subject
        current, _ = self._subject(actor, subject_id, Action.READ_CASEBOOK)
        replayed: Subject | None = None
        for domain_event in self.subject_events(current.id):
            if domain_event.timestamp > as_of:
                break
            replayed = domain_event.mutate(replayed)
        if replayed is None:
            raise NotFoundError(f"subject {subject_id} did not exist at {as_of.isoformat()}")
        return replayed

    def subject_events(self, stream: UUID) -> Iterator[Any]:
        """All events of one casebook, oldest first."""
        return self.events.get(stream)

    def audit_trail(
        self, actor: Actor, subject_id: str, entry_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit records of a casebook (or one entry), oldest first.

        The casebook is replayed alongside its events, so that the record of a change
        also names the signatures it invalidated and the verification it made stale.
        """
        subject, _ = self._subject(actor, subject_id, Action.READ_CASEBOOK)
        if entry_id is not None:
            subject.entry(entry_id)
        positions = self.table.stream_positions(subject.id)
        records = []
        replayed: Subject | None = None
        for domain_event in self.subject_events(subject.id):
            before = SignOff.of(replayed, getattr(domain_event, "entry_id", None))
            replayed = domain_event.mutate(replayed)
            record = audit_record(domain_event, positions.get(domain_event.originator_version, 0))
            if replayed is not None:
                record["details"].update(before.undone_by(replayed))
            if entry_id is None or record["entry_id"] == entry_id:
                records.append(record)
        return records

    def subject_position(self, subject: Subject) -> int:
        """The log position of the last event of a casebook."""
        positions = self.table.stream_positions(subject.id)
        return positions.get(subject.version, 0)

    # Enrolment and dose escalation (rules: ecrf/domain/escalation.py) ----------------

    def escalation(self) -> DoseEscalation:
        """The study's dose escalation; until its first save, a fresh unsaved one."""
        # Started lazily and saved with the first enrolment: concurrent first
        # enrolments then conflict on the escalation stream and retry like any other.
        try:
            stream = escalation_stream(self.forms.study_id)
            return self._get(stream, DoseEscalation, "no dose escalation yet")
        except NotFoundError:
            dose_levels, settings = escalation_plan(self.forms.study)
            audit = SYSTEM.stamp("system", "", "dose escalation started from forms/study.json")
            return DoseEscalation(
                study_id=self.forms.study_id,
                dose_levels=dose_levels,
                settings=settings,
                audit=audit,
            )

    def _escalation_follows(
        self, subject: Subject, entry_id: str, audit: dict[str, Any]
    ) -> list[DoseEscalation]:
        """The escalation to save with a change to a DLT assessment or an infusion, if an
        outcome changed (an outcome counts only for an infused subject)."""
        if subject.slot is None or subject.entry(entry_id).form not in (DLT_FORM, INFUSION_FORM):
            return []
        escalation = self.escalation()
        outcome = signed_dlt_outcome(subject)
        changed = escalation.reconcile_outcome(subject.subject_id, outcome, audit)
        return [escalation] if changed else []

    def _form_fields(self, entry: Entry) -> list[str]:
        return list(self.forms.get(entry.form, entry.version).schema.get("properties", {}))

    def enrol_subject(
        self, actor: Actor, subject_id: str, command: EnrolSubject
    ) -> tuple[Subject, Slot, int]:
        """Enrol a consented, eligible subject in the next open slot (one atomic save)."""

        def run() -> tuple[Subject, Slot, int]:
            subject, role = self._subject(actor, subject_id, Action.ENROL)
            if subject.status == SubjectStatus.ENROLLED:
                raise ConflictError(
                    f"subject {subject_id} is already enrolled at {subject.dose_level} "
                    f"(slot {subject.slot})"
                )
            if subject.status != SubjectStatus.SCREENING:
                raise ConflictError(f"subject {subject_id} is {subject.status}, not in screening")
            problems = enrolment_problems(subject, self._form_fields)
            if problems:
                raise NotEligibleError(
                    f"subject {subject_id} is not eligible for enrolment: {'; '.join(problems)}"
                )
            escalation = self.escalation()
            audit = actor.stamp(role, subject.site, command.reason or "")
            slot = escalation.assign_slot(subject.subject_id, audit)
            subject.enrol(slot.dose_level, slot.slot, audit)
            return subject, slot, self._save(subject, escalation)

        return self._retrying(run)

    def decide_dose(
        self, actor: Actor, command: DecideDose
    ) -> tuple[DoseEscalation, Decision, int]:
        """Record a signed Safety Review Committee decision (password re-entered, 11.200)."""
        role = actor.role_for(Action.DECIDE_DOSE)
        statement = self.forms.signature_meaning(command.meaning)
        try:
            # A wrong password is recorded as a failed login and counts towards lockout.
            self.authenticate(actor.username, command.password, actor.request_id)
        except NotAuthenticatedError:
            raise ForbiddenError("signature refused: incorrect password") from None

        def run() -> tuple[DoseEscalation, Decision, int]:
            escalation = self.escalation()
            decision = escalation.decide(
                command.action,
                command.dose_level,
                command.rationale,
                command.meaning,
                statement,
                actor.stamp(role, "", command.rationale),
            )
            return escalation, decision, self._save(escalation)

        return self._retrying(run)

    def cohorts(self, actor: Actor) -> EscalationSnapshot:
        """The escalation now, with which enrolled subjects are infused (any clinical role)."""
        actor.role_for(Action.READ_CLINICAL)
        position = self.max_position()
        escalation = self.escalation()
        infused, visible = set(), set()
        for slot in escalation.slots.values():
            subject = self._get(subject_stream(slot.subject_id), Subject, "subject not found")
            if subject.live_entries(INFUSION_FORM):
                infused.add(slot.subject_id)
            if actor.sees_site(subject.site, Action.READ_CLINICAL):
                visible.add(slot.subject_id)
        return EscalationSnapshot(escalation, frozenset(infused), frozenset(visible), position)


@dataclass(frozen=True)
class SignOff:
    """An entry's signatures and SDV, and the casebook signatures that held, before an event."""

    entry: Entry | None
    casebook_signatures: tuple[CasebookSignature, ...]

    @classmethod
    def of(cls, subject: Subject | None, entry_id: Any) -> SignOff:
        """The sign-off of ``subject`` (before its next event) around ``entry_id``."""
        if subject is None:
            return cls(None, ())
        entry = subject.entries.get(entry_id) if isinstance(entry_id, str) else None
        valid = tuple(s for s in subject.casebook_signatures if subject.casebook_signature_valid(s))
        return cls(entry, valid)

    def undone_by(self, after: Subject) -> dict[str, Any]:
        """Signatures that held before and no longer do, and an SDV that went stale."""
        undone: dict[str, Any] = {}
        changed = after.entries.get(self.entry.entry_id) if self.entry is not None else None
        if self.entry is not None and changed is not None:
            before = self.entry
            lost = [
                s
                for s in before.signatures
                if before.signature_valid(s) and not changed.signature_valid(s)
            ]
            if lost:
                undone["invalidated_signatures"] = [_manifestation(s) for s in lost]
            if before.sdv == "verified" and changed.sdv != "verified":
                undone["stale_sdv"] = {
                    "revision": before.verified_revision,
                    "verified_by": before.verified_by,
                    "verified_at": before.verified_at,
                }
        lost_casebook = [
            s.signature for s in self.casebook_signatures if not after.casebook_signature_valid(s)
        ]
        if lost_casebook:
            undone["invalidated_casebook_signatures"] = [_manifestation(s) for s in lost_casebook]
        return undone


def _manifestation(signature: Signature) -> dict[str, Any]:
    return {
        "signer": signature.signer,
        "signer_name": signature.signer_name,
        "at": signature.at,
        "meaning": signature.meaning,
        "revision": signature.revision,
        "data_hash": signature.data_hash,
    }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def audit_record(domain_event: Any, position: int) -> dict[str, Any]:
    """One audit record, readable on its own: who, when, role, why, and what changed."""
    state = vars(domain_event)
    audit: dict[str, Any] = state.get("audit", {})
    changes: list[dict[str, Any]] = []
    if "changes" in state:
        changes = [{"path": c["path"], "old": c["old"], "new": c["new"]} for c in state["changes"]]
    elif isinstance(state.get("data"), dict):
        changes = [
            {"path": c["path"], "old": None, "new": c["new"]} for c in diff({}, state["data"])
        ]
    details = {
        key: state[key]
        for key in (
            "query_id",
            "path",
            "text",
            "meaning",
            "statement",
            "data_hash",
            "entries",
            "dose_level",
            "slot",
            "form_version",
            "from_version",
            "to_version",
            "schema_sha256",
        )
        if state.get(key) is not None
    }
    return {
        "position": position,
        "event_id": state.get("hash", ""),
        "version": domain_event.originator_version,
        "at": domain_event.timestamp,
        "action": _snake(type(domain_event).__name__),
        "user": audit.get("user", ""),
        "user_name": audit.get("user_name", ""),
        "role": audit.get("role", ""),
        "site": audit.get("site", ""),
        "reason": audit.get("reason", ""),
        "request_id": audit.get("request_id", ""),
        "entry_id": state.get("entry_id"),
        "form": state.get("form"),
        "revision": state.get("revision", 1 if "entry_id" in state else None),
        "changes": changes,
        "details": details,
    }
