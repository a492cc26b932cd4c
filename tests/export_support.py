"""Test support for exports: the ODM 1.3.2 XSD (shipped in the odmlib package) and helpers."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import Any

from lxml import etree

ODM_XSD = files("odmlib") / "schemas" / "odm" / "1.3.2" / "ODM1-3-2.xsd"
"""The official ODM 1.3.2 schema; odmlib is used for nothing but these files."""


@cache
def odm_schema() -> etree.XMLSchema:
    """The compiled ODM 1.3.2 schema."""
    return etree.XMLSchema(etree.parse(str(ODM_XSD)))


def xsd_errors(document: bytes) -> list[str]:
    """Every schema violation of an ODM document (empty when valid)."""
    schema = odm_schema()
    root = etree.fromstring(document)
    if schema.validate(root):
        return []
    return str(schema.error_log).splitlines()


def without_creation_time(document: bytes) -> bytes:
    """The document with the only attribute that records when the file was made removed."""
    return re.sub(rb' CreationDateTime="[^"]*"', b"", document)


def pointer_tokens(pointer: str) -> tuple[str, ...]:
    """The tokens of a JSON Pointer."""
    if not pointer:
        return ()
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def expanded_changes(changes: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Audit-trail changes as (leaf pointer, new value): objects split into their leaves."""
    out: list[tuple[str, Any]] = []
    for change in changes:
        old, new = change["old"], change["new"]
        if isinstance(new, dict) or isinstance(old, dict):
            before = old if isinstance(old, dict) else {}
            after = new if isinstance(new, dict) else {}
            for key in sorted(before.keys() | after.keys()):
                if before.get(key) != after.get(key):
                    out.extend(
                        expanded_changes(
                            [
                                {
                                    "path": f"{change['path']}/{key}",
                                    "old": before.get(key),
                                    "new": after.get(key),
                                }
                            ]
                        )
                    )
        else:
            out.append((change["path"], new))
    return out
