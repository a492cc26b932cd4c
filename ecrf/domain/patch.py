"""JSON Merge Patch (RFC 7396) and field-level differences by JSON Pointer (RFC 6901).

Hand-written rather than a dependency: merge patch is a ten-line algorithm in the RFC,
and the diff must produce exactly the path/old/new records the audit trail shows.
"""

from __future__ import annotations

import copy
from typing import Any

MISSING: Any = object()
"""Marks a value that is absent (as opposed to JSON null)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7396 merge patch and return the result; inputs are not modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def escape_pointer_token(token: str) -> str:
    """Escape one reference token for a JSON Pointer."""
    return token.replace("~", "~0").replace("/", "~1")


def diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Leaf-level changes from ``old`` to ``new``: ``{"path", "op", "old", "new"}``.

    Objects are compared key by key; arrays and scalars are compared whole, as a merge
    patch replaces them whole. ``op`` is add, replace or remove; an absent side is null.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[dict[str, Any]] = []
        for key in sorted(old.keys() | new.keys()):
            child = f"{path}/{escape_pointer_token(key)}"
            changes.extend(diff(old.get(key, MISSING), new.get(key, MISSING), child))
        return changes
    if old is MISSING and new is MISSING:
        return []
    if old is MISSING:
        return [{"path": path, "op": "add", "old": None, "new": new}]
    if new is MISSING:
        return [{"path": path, "op": "remove", "old": old, "new": None}]
    if _same_json(old, new):
        return []
    return [{"path": path, "op": "replace", "old": old, "new": new}]


def _same_json(a: Any, b: Any) -> bool:
    # JSON has no bool/int distinction problem in Python equality (True == 1), so
    # compare types too: changing 1 to true is a real change.
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
