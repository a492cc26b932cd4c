"""Reading an ecrf ODM export back: entry data from a snapshot, audit records and a replay
of a transactional file. Items are put back by their ``JSONPointer`` Alias, typed by
their ItemDef's DataType, so a reader needs nothing but the file itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

from ecrf.export.odm import ODM_NAMESPACE
from ecrf.export.odm_items import JSON_POINTER_CONTEXT, JSON_TEXT_CONTEXT, json_value

_NS = f"{{{ODM_NAMESPACE}}}"
EntryData = dict[str, dict[str, dict[str, Any]]]
"""subject key -> entry id (FormRepeatKey) -> entry data."""


def _tag(name: str) -> str:
    return f"{_NS}{name}"


@dataclass(frozen=True)
class ItemDefinition:
    """What a reader needs of an ItemDef: where the value goes and how it is typed."""

    oid: str
    pointer: str
    data_type: str
    json_text: bool


@dataclass(frozen=True)
class AuditEntry:
    """One AuditRecord, with the element it is attached to and what it recorded."""

    subject: str
    level: str
    entry_id: str | None
    item_oid: str | None
    transaction: str | None
    value: Any
    user: str
    location: str
    at: str
    reason: str
    source: int
    edit_point: str | None


def parse(document: bytes) -> ElementTree.Element:
    """The root element of an ODM document."""
    return ElementTree.fromstring(document)


def item_definitions(root: ElementTree.Element) -> dict[str, ItemDefinition]:
    """Every ItemDef of the document by OID."""
    found = {}
    for item in root.iter(_tag("ItemDef")):
        aliases = {a.get("Context"): a.get("Name", "") for a in item.findall(_tag("Alias"))}
        oid = item.get("OID", "")
        found[oid] = ItemDefinition(
            oid=oid,
            pointer=aliases.get(JSON_POINTER_CONTEXT, ""),
            data_type=item.get("DataType", "text"),
            json_text=JSON_TEXT_CONTEXT in aliases,
        )
    return found


def _tokens(pointer: str) -> list[str]:
    return (
        [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")] if pointer else []
    )


def put(data: dict[str, Any], pointer: str, value: Any) -> None:
    """Set the value at a JSON Pointer, creating objects on the way."""
    tokens = _tokens(pointer)
    node = data
    for token in tokens[:-1]:
        node = node.setdefault(token, {})
    node[tokens[-1]] = value


def remove(data: dict[str, Any], pointer: str) -> None:
    """Remove the value at a JSON Pointer; objects left empty are removed too."""
    tokens = _tokens(pointer)
    trail = [data]
    for token in tokens[:-1]:
        child = trail[-1].get(token)
        if not isinstance(child, dict):
            return
        trail.append(child)
    trail[-1].pop(tokens[-1], None)
    for depth in range(len(trail) - 1, 0, -1):
        if not trail[depth]:
            trail[depth - 1].pop(tokens[depth - 1], None)


def _value(item: ElementTree.Element, definitions: dict[str, ItemDefinition]) -> Any:
    definition = definitions.get(item.get("ItemOID", ""))
    if item.get("IsNull") == "Yes" or definition is None:
        return None
    return json_value(item.get("Value"), definition.data_type, definition.json_text)


def snapshot_entries(document: bytes) -> EntryData:
    """Entry data per subject and entry id, from a snapshot file."""
    root = parse(document)
    definitions = item_definitions(root)
    entries: EntryData = {}
    for subject in root.iter(_tag("SubjectData")):
        books = entries.setdefault(subject.get("SubjectKey", ""), {})
        for form in subject.iter(_tag("FormData")):
            data = books.setdefault(form.get("FormRepeatKey", ""), {})
            for item in form.iter(_tag("ItemData")):
                definition = definitions[item.get("ItemOID", "")]
                put(data, definition.pointer, _value(item, definitions))
    return entries


def replay(document: bytes) -> EntryData:
    """Entry data per subject and entry id, by applying a transactional file in order."""
    root = parse(document)
    definitions = item_definitions(root)
    entries: EntryData = {}
    for subject in root.iter(_tag("SubjectData")):
        books = entries.setdefault(subject.get("SubjectKey", ""), {})
        for form in subject.iter(_tag("FormData")):
            key = form.get("FormRepeatKey", "")
            if form.get("TransactionType") == "Remove":
                books.pop(key, None)
                continue
            for item in form.iter(_tag("ItemData")):
                data = books.setdefault(key, {})
                pointer = definitions[item.get("ItemOID", "")].pointer
                if item.get("TransactionType") == "Remove":
                    remove(data, pointer)
                else:
                    put(data, pointer, _value(item, definitions))
    return entries


def audit_entries(document: bytes) -> Iterator[AuditEntry]:
    """Every AuditRecord of a transactional file, in document order."""
    root = parse(document)
    definitions = item_definitions(root)
    for subject in root.iter(_tag("SubjectData")):
        key = subject.get("SubjectKey", "")
        yield from _audits(subject, key, "SubjectData", None, definitions)


def _audits(
    element: ElementTree.Element,
    subject: str,
    level: str,
    entry_id: str | None,
    definitions: dict[str, ItemDefinition],
) -> Iterator[AuditEntry]:
    record = element.find(_tag("AuditRecord"))
    if record is not None:
        is_item = level == "ItemData"
        yield AuditEntry(
            subject=subject,
            level=level,
            entry_id=entry_id,
            item_oid=element.get("ItemOID") if is_item else None,
            transaction=element.get("TransactionType"),
            value=_value(element, definitions) if is_item else None,
            user=_ref(record, "UserRef", "UserOID"),
            location=_ref(record, "LocationRef", "LocationOID"),
            at=record.findtext(_tag("DateTimeStamp"), ""),
            reason=record.findtext(_tag("ReasonForChange"), ""),
            source=int(record.findtext(_tag("SourceID"), "0")),
            edit_point=record.get("EditPoint"),
        )
    for child in element:
        name = child.tag.removeprefix(_NS)
        if name in ("StudyEventData", "FormData", "ItemGroupData", "ItemData"):
            inner = child.get("FormRepeatKey", entry_id) if name == "FormData" else entry_id
            yield from _audits(child, subject, name, inner, definitions)


def _ref(record: ElementTree.Element, tag: str, attribute: str) -> str:
    found = record.find(_tag(tag))
    return found.get(attribute, "") if found is not None else ""
