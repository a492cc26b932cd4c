"""The aggregates and merge patch on their own: no database, no server."""

from __future__ import annotations

from typing import Any

import pytest

from ecrf.application import SignOff
from ecrf.domain.errors import ConflictError, InvalidInputError, LockedError, NotFoundError
from ecrf.domain.patch import diff, merge_patch
from ecrf.domain.subject import Subject
from ecrf.domain.user import User

AUDIT: dict[str, Any] = {"user": "crc", "user_name": "Carol", "role": "site_staff", "site": "CHH"}


def _subject_with_entry() -> Subject:
    subject = Subject(subject_id="CHH-S1", site="CHH", screening_number="S1", audit=AUDIT)
    subject.record_entry("e1", "demographics", 1, "SCR", {"age": 50, "sex": "F"}, "sha", AUDIT)
    return subject


class TestSubject:
    def test_a_correction_moves_the_revision_and_keeps_the_changes(self) -> None:
        subject = _subject_with_entry()
        changes = diff({"age": 50, "sex": "F"}, {"age": 51, "sex": "F"})
        subject.correct_entry("e1", 1, {"age": 51, "sex": "F"}, changes, {**AUDIT, "reason": "r"})
        entry = subject.entry("e1")
        assert (entry.revision, entry.data["age"]) == (2, 51)
        last = subject.collect_events()[-1]
        assert type(last).__name__ == "EntryCorrected"
        assert last.changes == [{"path": "/age", "op": "replace", "old": 50, "new": 51}]  # type: ignore[attr-defined]

    def test_a_stale_revision_conflicts(self) -> None:
        subject = _subject_with_entry()
        subject.correct_entry("e1", 1, {"age": 51}, [{"path": "/age"}], AUDIT)
        with pytest.raises(ConflictError, match="revision 2"):
            subject.correct_entry("e1", 1, {"age": 52}, [{"path": "/age"}], AUDIT)

    def test_a_voided_entry_cannot_be_corrected(self) -> None:
        subject = _subject_with_entry()
        subject.void_entry("e1", 1, AUDIT)
        with pytest.raises(ConflictError, match="voided"):
            subject.correct_entry("e1", 2, {"age": 52}, [{"path": "/age"}], AUDIT)

    def test_unknown_entries_are_not_found(self) -> None:
        with pytest.raises(NotFoundError):
            _subject_with_entry().entry("nope")

    def test_locks_refuse_changes(self) -> None:
        subject = _subject_with_entry()
        subject.lock_entry("e1", AUDIT)
        with pytest.raises(LockedError):
            subject.void_entry("e1", 1, AUDIT)
        subject.unlock_entry("e1", AUDIT)
        subject.lock_casebook(AUDIT)
        with pytest.raises(LockedError):
            subject.record_entry("e2", "labs", 1, "SCR", {}, "sha", AUDIT)

    def test_replaying_the_events_gives_the_same_casebook(self) -> None:
        subject = _subject_with_entry()
        subject.correct_entry("e1", 1, {"age": 51, "sex": "F"}, [{"path": "/age"}], AUDIT)
        subject.open_query("e1", "/age", "Check age", AUDIT)
        replayed: Any = None
        for domain_event in subject.collect_events():
            replayed = domain_event.mutate(replayed)
        assert replayed.entry("e1") == subject.entry("e1")
        assert replayed.queries == subject.queries

    def test_a_correction_names_its_form_version_and_schema(self) -> None:
        subject = _subject_with_entry()
        subject.correct_entry("e1", 1, {"age": 51}, [{"path": "/age"}], AUDIT)
        subject.correct_entry("e1", 2, {"age": 52}, [{"path": "/age"}], AUDIT, schema_sha256="sha")
        first, second = subject.collect_events()[-2:]
        for corrected in (first, second):
            assert (corrected.form_version, corrected.schema_sha256) == (1, "sha")  # type: ignore[attr-defined]
        assert Subject.EntryCorrected.class_version == 2

    def test_corrections_of_version_1_are_upcast_without_a_schema(self) -> None:
        state: dict[str, Any] = {"entry_id": "e1", "form": "demographics", "revision": 2}
        Subject.EntryCorrected.upcast_v1_v2(state)
        assert (state["form_version"], state["schema_sha256"]) == (None, None)
        assert state["revision"] == 2

    def test_signing_a_revision_the_signer_did_not_read_conflicts(self) -> None:
        subject = _subject_with_entry()
        subject.correct_entry("e1", 1, {"age": 51}, [{"path": "/age"}], AUDIT)
        with pytest.raises(ConflictError, match="revision 2, not 1"):
            subject.sign_entry("e1", "review", "I reviewed.", AUDIT, expected_revision=1)
        with pytest.raises(ConflictError, match="casebook CHH-S1 is at revision 3"):
            subject.sign_casebook("approval", "I approve.", AUDIT, expected_revision=2)
        assert subject.sign_entry("e1", "review", "I reviewed.", AUDIT, 2).revision == 2
        assert subject.sign_casebook("approval", "I approve.", AUDIT, 4).signature.revision == 5


class TestMigration:
    """Moving an entry to a newer form version (the application validates the data)."""

    def test_the_entry_moves_to_the_new_version_and_keeps_its_revision(self) -> None:
        subject = _subject_with_entry()
        data = {"age": 50, "sex": "F"}
        subject.migrate_entry("e1", 2, data, [], "sha2", {**AUDIT, "reason": "v2 released"})
        entry = subject.entry("e1")
        assert (entry.version, entry.revision, entry.schema_sha256) == (2, 1, "sha2")
        last = subject.collect_events()[-1]
        assert type(last).__name__ == "EntryMigrated"
        assert (last.from_version, last.to_version) == (1, 2)  # type: ignore[attr-defined]

    def test_changed_data_moves_the_revision(self) -> None:
        subject = _subject_with_entry()
        data = {"age": 50, "sex": "F", "bmi": 22.0}
        changes = diff({"age": 50, "sex": "F"}, data)
        subject.migrate_entry("e1", 2, data, changes, "sha2", AUDIT)
        assert (subject.entry("e1").revision, subject.entry("e1").data) == (2, data)

    @pytest.mark.parametrize("to_version", [0, 1])
    def test_only_a_newer_version(self, to_version: int) -> None:
        subject = _subject_with_entry()
        with pytest.raises(InvalidInputError) as raised:
            subject.migrate_entry("e1", to_version, {"age": 50}, [], "sha", AUDIT)
        assert raised.value.problems[0].path == "/to_version"

    def test_voided_locked_and_stale_entries_are_refused(self) -> None:
        subject = _subject_with_entry()
        with pytest.raises(ConflictError, match="revision 1, not 2"):
            subject.check_migration("e1", 2, expected_revision=2)
        subject.lock_entry("e1", AUDIT)
        with pytest.raises(LockedError):
            subject.check_migration("e1", 2)
        subject.unlock_entry("e1", AUDIT)
        subject.void_entry("e1", 1, AUDIT)
        with pytest.raises(ConflictError, match="voided"):
            subject.migrate_entry("e1", 2, {"age": 50}, [], "sha", AUDIT)

    def test_a_migration_that_changes_data_names_what_it_undid(self) -> None:
        subject = _subject_with_entry()
        subject.verify_entry("e1", 1, {**AUDIT, "user": "cra"})
        subject.sign_entry("e1", "authorship", "I am the author.", {**AUDIT, "user": "pi"})
        before = SignOff.of(subject, "e1")
        data = {"age": 50, "sex": "F", "bmi": 22.0}
        subject.migrate_entry("e1", 2, data, diff({"age": 50, "sex": "F"}, data), "sha2", AUDIT)
        undone = before.undone_by(subject)
        assert [s["signer"] for s in undone["invalidated_signatures"]] == ["pi"]
        assert (undone["stale_sdv"]["revision"], undone["stale_sdv"]["verified_by"]) == (1, "cra")

    def test_a_migration_of_unchanged_data_undoes_nothing(self) -> None:
        subject = _subject_with_entry()
        subject.verify_entry("e1", 1, AUDIT)
        subject.sign_entry("e1", "review", "I reviewed.", AUDIT)
        subject.sign_casebook("approval", "I approve.", AUDIT)
        before = SignOff.of(subject, "e1")
        subject.migrate_entry("e1", 2, {"age": 50, "sex": "F"}, [], "sha2", AUDIT)
        assert before.undone_by(subject) == {}

    def test_replaying_a_migration_gives_the_same_entry(self) -> None:
        subject = _subject_with_entry()
        subject.migrate_entry("e1", 2, {"age": 50, "sex": "F"}, [], "sha2", AUDIT)
        replayed: Any = None
        for domain_event in subject.collect_events():
            replayed = domain_event.mutate(replayed)
        assert replayed.entry("e1") == subject.entry("e1")


class TestUser:
    def _user(self) -> User:
        return User(
            username="pi",
            full_name="Pat",
            password_hash="h",
            roles=["investigator"],
            sites=["CHH"],
            audit=AUDIT,
        )

    def test_the_fifth_consecutive_failure_locks(self) -> None:
        user = self._user()
        outcomes = [user.record_login(False, 5, AUDIT) for _ in range(5)]
        assert outcomes == ["wrong password"] * 4 + ["now locked"]
        assert user.locked
        assert user.record_login(True, 5, AUDIT) == "locked"

    def test_a_success_resets_the_count_and_unlock_reopens(self) -> None:
        user = self._user()
        user.record_login(False, 5, AUDIT)
        assert user.record_login(True, 5, AUDIT) == "ok"
        assert user.failures == 0
        with pytest.raises(ConflictError):
            user.unlock(AUDIT)

    def test_an_inactive_account_cannot_log_in(self) -> None:
        user = self._user()
        user.deactivate(AUDIT)
        assert user.record_login(True, 5, AUDIT) == "inactive"

    def test_a_new_printed_name_is_an_event(self) -> None:
        user = self._user()
        user.change_full_name("Dr Pat Ito", {**AUDIT, "reason": "name changed"})
        assert user.full_name == "Dr Pat Ito"
        last = user.collect_events()[-1]
        assert type(last).__name__ == "FullNameChanged"
        assert last.audit["reason"] == "name changed"  # type: ignore[attr-defined]


class TestMergePatch:
    # RFC 7396 appendix A examples.
    @pytest.mark.parametrize(
        ("target", "patch", "result"),
        [
            ({"a": "b"}, {"a": "c"}, {"a": "c"}),
            ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
            ({"a": "b"}, {"a": None}, {}),
            ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
            ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
            ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
            ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
            ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
            ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
            ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
        ],
    )
    def test_rfc_7396_examples(self, target: Any, patch: Any, result: Any) -> None:
        assert merge_patch(target, patch) == result

    def test_diff_reports_each_leaf_with_escaped_pointers(self) -> None:
        old = {"a/b": 1, "n": {"x": 1}, "gone": True}
        new = {"a/b": 2, "n": {"x": 1, "y": 2}, "flag": 1}
        assert diff(old, new) == [
            {"path": "/a~1b", "op": "replace", "old": 1, "new": 2},
            {"path": "/flag", "op": "add", "old": None, "new": 1},
            {"path": "/gone", "op": "remove", "old": True, "new": None},
            {"path": "/n/y", "op": "add", "old": None, "new": 2},
        ]

    def test_true_and_one_are_different_values(self) -> None:
        assert diff({"a": 1}, {"a": True}) != []
