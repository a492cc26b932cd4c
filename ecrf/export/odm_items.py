"""Form schemas as CDISC ODM items: OIDs, data types, units, code lists, and values.

Pure code: a form version's JSON Schema becomes one ItemGroup of items, one item per
*leaf* JSON Pointer, exactly the granularity of the audit trail (`ecrf.domain.patch.diff`):

- a scalar property is an item (``I.<form>.v<n>.<name>``);
- an object property with declared ``properties`` is split into its leaves, named with
  dots (``I.adverse_event.v1.sae_criteria.death`` for ``/sae_criteria/death``);
- an array is one item whose value is the array as compact JSON text (DataType ``text``),
  because corrections replace an array whole and the audit trail records it whole; a
  repeating ItemGroup per element would turn one recorded change into several.

Every ItemDef carries an ``Alias Context="JSONPointer"`` naming its pointer, so a reader
can put values back where they came from without parsing OIDs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from ecrf.domain.patch import escape_pointer_token
from ecrf.forms import FormVersion

TEXT = "text"
INTEGER = "integer"
FLOAT = "float"
DATE = "date"
DATETIME = "datetime"
BOOLEAN = "boolean"

JSON_POINTER_CONTEXT = "JSONPointer"
"""The Alias context under which an ItemDef names its JSON Pointer."""
JSON_TEXT_CONTEXT = "JSONText"
"""The Alias context marking an item whose value is JSON text (an array)."""

# XML 1.0 forbids these characters outright; JSON strings may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class ItemSpec:
    """One ODM item: a leaf of a form version's data."""

    oid: str
    name: str
    pointer: str
    data_type: str
    json_text: bool = False
    length: int | None = None
    unit: str | None = None
    codes: tuple[str | int | float, ...] = ()
    code_type: str = TEXT
    description: str = ""
    mandatory: bool = False

    @property
    def codelist_oid(self) -> str | None:
        """The OID of the item's code list, if its values are enumerated."""
        return f"CL.{self.oid[2:]}" if self.codes else None


@dataclass(frozen=True)
class FormSpec:
    """One form version as ODM metadata: a FormDef holding one ItemGroupDef."""

    form: str
    version: int
    title: str
    description: str
    items: tuple[ItemSpec, ...]

    @property
    def oid(self) -> str:
        """The FormDef OID."""
        return form_oid(self.form, self.version)

    @property
    def group_oid(self) -> str:
        """The ItemGroupDef OID."""
        return group_oid(self.form, self.version)


def form_oid(form: str, version: int) -> str:
    """OID of a form version's FormDef."""
    return f"F.{form}.v{version}"


def group_oid(form: str, version: int) -> str:
    """OID of a form version's (single) ItemGroupDef."""
    return f"IG.{form}.v{version}"


def item_oid(form: str, version: int, tokens: tuple[str, ...]) -> str:
    """OID of the item at a leaf path (its JSON Pointer tokens)."""
    return f"I.{form}.v{version}.{'.'.join(tokens)}"


def event_oid(visit: str) -> str:
    """OID of a visit's StudyEventDef."""
    return f"SE.{visit}"


def user_oid(username: str) -> str:
    """OID of a User in AdminData."""
    return f"USR.{username}"


def location_oid(site: str) -> str:
    """OID of a site's Location in AdminData."""
    return f"LOC.{site}"


def signature_oid(meaning: str) -> str:
    """OID of the SignatureDef of a signature meaning."""
    return f"SD.{meaning}"


def unit_oid(unit: str) -> str:
    """OID of a MeasurementUnit (the UCUM-style unit text of ``x-unit``)."""
    return f"MU.{unit}"


def pointer(tokens: tuple[str, ...]) -> str:
    """The JSON Pointer of a leaf path."""
    return "".join(f"/{escape_pointer_token(t)}" for t in tokens)


def form_spec(form: FormVersion) -> FormSpec:
    """The ODM metadata of one form version, read from its JSON Schema."""
    schema = form.schema
    items = tuple(_items(form, schema, schema, (), required=True))
    return FormSpec(
        form=form.form,
        version=form.version,
        title=form.title,
        description=str(schema.get("description", "")),
        items=items,
    )


def _resolve(schema: Mapping[str, Any], node: Any) -> dict[str, Any]:
    """A property schema with local ``$ref``s followed (keywords beside the ref win)."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 20:
        ref: str = node["$ref"]
        if not ref.startswith("#/"):
            break
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = {**(target if isinstance(target, dict) else {}), **node}
        node.pop("$ref", None)
        seen += 1
    return node if isinstance(node, dict) else {}


def _items(
    form: FormVersion,
    schema: Mapping[str, Any],
    node: Mapping[str, Any],
    prefix: tuple[str, ...],
    *,
    required: bool,
) -> Iterator[ItemSpec]:
    needed = set(node.get("required", [])) if required else set()
    for name, raw in node.get("properties", {}).items():
        prop = _resolve(schema, raw)
        tokens = (*prefix, name)
        kind = _json_type(prop)
        if kind == "object" and isinstance(prop.get("properties"), dict):
            yield from _items(form, schema, prop, tokens, required=name in needed)
            continue
        data_type, json_text = _data_type(prop, kind)
        codes = _codes(prop) if not json_text else ()
        yield ItemSpec(
            oid=item_oid(form.form, form.version, tokens),
            name=".".join(tokens),
            pointer=pointer(tokens),
            data_type=data_type,
            json_text=json_text,
            length=_length(prop, data_type),
            unit=str(prop["x-unit"]) if isinstance(prop.get("x-unit"), str) else None,
            codes=codes,
            code_type=_code_type(codes),
            description=str(prop.get("description", "")),
            mandatory=name in needed,
        )


def _json_type(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if isinstance(kind, str):
        return kind
    values = prop.get("enum")
    if isinstance(values, list) and values:
        first = values[0]
        if isinstance(first, bool):
            return "boolean"
        if isinstance(first, int):
            return "integer"
        if isinstance(first, float):
            return "number"
    return "string"


def _data_type(prop: Mapping[str, Any], kind: str) -> tuple[str, bool]:
    if kind in ("array", "object"):
        return TEXT, True
    if kind == "boolean":
        return BOOLEAN, False
    if kind == "integer":
        return INTEGER, False
    if kind == "number":
        return FLOAT, False
    fmt = prop.get("format")
    if fmt == "date":
        return DATE, False
    if fmt == "date-time":
        return DATETIME, False
    return TEXT, False


def _length(prop: Mapping[str, Any], data_type: str) -> int | None:
    if data_type != TEXT:
        return None
    longest = prop.get("maxLength")
    if isinstance(longest, int) and not isinstance(longest, bool) and longest > 0:
        return longest
    values = [v for v in prop.get("enum", []) if isinstance(v, str)]
    return max((len(v) for v in values), default=0) or None


def _codes(prop: Mapping[str, Any]) -> tuple[str | int | float, ...]:
    values = prop.get("enum")
    if not isinstance(values, list):
        return ()
    return tuple(v for v in values if isinstance(v, str | int | float) and not isinstance(v, bool))


def _code_type(codes: tuple[str | int | float, ...]) -> str:
    if codes and all(isinstance(c, int) for c in codes):
        return INTEGER
    if codes and all(isinstance(c, int | float) for c in codes):
        return FLOAT
    return TEXT


# Values ---------------------------------------------------------------------------------


def leaves(data: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """The leaf paths and values of entry data: objects split, arrays and scalars whole."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, (*prefix, str(key)))
        return
    yield prefix, data


def xml_safe(text: str) -> str:
    """Text with the characters XML 1.0 cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def odm_value(value: Any) -> str | None:
    """A JSON value as ODM value text; ``None`` for JSON null (written as IsNull)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # ODM float is xs:decimal: no exponent. repr is the shortest exact form; a
        # decimal point keeps a float a float when read back (1.5e16 -> "15...0.0").
        text = format(Decimal(repr(value)), "f")
        return text if "." in text else f"{text}.0"
    if isinstance(value, str):
        return xml_safe(value)
    return xml_safe(orjson.dumps(value).decode("utf-8"))


def json_value(text: str | None, data_type: str, json_text: bool = False) -> Any:
    """The JSON value an ODM value text stands for (the inverse of `odm_value`)."""
    if text is None:
        return None
    if json_text:
        return orjson.loads(text)
    if data_type == BOOLEAN:
        return text in ("true", "1")
    if data_type == INTEGER:
        return int(text)
    if data_type == FLOAT:
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
        return float(text)
    return text
