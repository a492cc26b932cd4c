"""The aggregates and merge patch on their own: no database, no server."""

from __future__ import annotations

from typing import Any

import pytest

from ecrf.domain.errors import ConflictError, LockedError, NotFoundError
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
