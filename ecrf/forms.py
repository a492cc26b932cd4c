"""The form registry: loads `forms/`, compiles every validator once, validates entries.

Schemas are checked against the 2020-12 meta-schema with `jsonschema` at load; entries
are validated on the request path with `jsonschema-rs` (format assertions on).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs

from ecrf.domain.errors import InvalidInputError, NotFoundError, Problem
from ecrf.domain.patch import escape_pointer_token

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.json$")
SCHEMA_ID_BASE = "https://ecrf.invalid/forms/"


class FormDefinitionError(ValueError):
    """A file under forms/ is not a valid study definition or form schema."""


def default_forms_dir() -> Path:
    """``ECRF_FORMS_DIR``, or the `forms/` folder shipped beside the package."""
    configured = os.environ.get("ECRF_FORMS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "forms"


@dataclass(frozen=True)
class FormVersion:
    """One released version of one form, with its compiled validator."""

    form: str
    version: int
    title: str
    schema: dict[str, Any]
    sha256: str
    validator: Any  # jsonschema_rs validator (untyped extension module)

    @property
    def read_only_fields(self) -> frozenset[str]:
        """Top-level properties the server derives; clients may not send them."""
        props = self.schema.get("properties", {})
        return frozenset(k for k, v in props.items() if isinstance(v, dict) and v.get("readOnly"))

    def defines(self, pointer: str) -> bool:
        """Whether a JSON Pointer names a field this form's schema declares."""
        if not pointer.startswith("/"):
            return False
        node: Any = self.schema
        for raw in pointer[1:].split("/"):
            token = raw.replace("~1", "/").replace("~0", "~")
            node = self._resolve(node)
            properties = node.get("properties", {}) if isinstance(node, dict) else {}
            if token in properties:
                node = properties[token]
            elif isinstance(node, dict) and "items" in node and token.isdigit():
                node = node["items"]
            else:
                return False
        return True

    def _resolve(self, node: Any) -> Any:
        # Forms use local references only ("#/$defs/..."), resolved within the schema.
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref: str = node["$ref"]
            if not ref.startswith("#/"):
                return node
            target: Any = self.schema
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            node = target
        return node

    def problems(self, data: Any) -> list[Problem]:
        """Every hard-check failure of ``data``, each located by JSON Pointer."""
        found = [Problem(p, m) for p, m in _unstorable_values(data, "")]
        if found:
            return found
        try:
            for error in self.validator.iter_errors(data):
                found.extend(_readable(error))
        except ValueError as error:  # e.g. the validator's own recursion limit
            return [Problem("", f"cannot be validated: {error}")]
        found.sort(key=lambda p: (p.path, p.message))
        return found


class FormRegistry:
    """All forms and versions under one folder, plus the study definition."""

    def __init__(self, forms_dir: Path | None = None) -> None:
        self.forms_dir = forms_dir or default_forms_dir()
        self.study: dict[str, Any] = self._load_study()
        self._versions: dict[str, dict[int, FormVersion]] = {}
        for form_dir in sorted(p for p in self.forms_dir.iterdir() if p.is_dir()):
            for file in sorted(form_dir.iterdir()):
                match = _VERSION_FILE.match(file.name)
                if match:
                    self._add(form_dir.name, int(match.group(1)), file)
        self._check_current_versions()

    def _load_study(self) -> dict[str, Any]:
        study_file = self.forms_dir / "study.json"
        schema_file = self.forms_dir / "study.schema.json"
        # Without its schema the study definition would go unchecked: both must be there.
        study: dict[str, Any] = _read_json(study_file, "the study definition")
        schema = _read_json(schema_file, "the schema of the study definition")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise FormDefinitionError(
                f"{schema_file}: not a valid JSON Schema 2020-12: {error.message}"
            ) from None
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        errors = sorted(validator.iter_errors(study), key=lambda e: list(e.path))
        if errors:
            details = "; ".join(f"/{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
            raise FormDefinitionError(f"{study_file} is not a valid study definition: {details}")
        return study

    def _check_current_versions(self) -> None:
        """Every ``forms.<form>.current_version`` of the study names a released file."""
        missing = []
        for form, meta in sorted(self.study.get("forms", {}).items()):
            current = meta.get("current_version")
            if current not in self._versions.get(form, {}):
                file = self.forms_dir / form / f"v{current}.json"
                missing.append(f"forms.{form}.current_version is {current} but {file} is missing")
        if missing:
            raise FormDefinitionError(f"{self.forms_dir / 'study.json'}: {'; '.join(missing)}")

    def _add(self, form: str, version: int, file: Path) -> None:
        raw = file.read_bytes()
        try:
            schema = json.loads(raw)
            jsonschema.Draft202012Validator.check_schema(schema)
        except (ValueError, jsonschema.SchemaError) as error:
            # Start-up stops here, naming the file, rather than failing on first use.
            message = getattr(error, "message", str(error))
            raise FormDefinitionError(
                f"{file}: not a valid JSON Schema 2020-12: {message}"
            ) from None
        expected_id = f"{SCHEMA_ID_BASE}{form}/v{version}.json"
        if schema.get("$id") != expected_id:
            raise FormDefinitionError(f"{file}: $id must be {expected_id}")
        if schema.get("additionalProperties") is not False:
            raise FormDefinitionError(f"{file}: a form must set additionalProperties to false")
        self._versions.setdefault(form, {})[version] = FormVersion(
            form=form,
            version=version,
            title=str(schema.get("title", form)),
            schema=schema,
            sha256=hashlib.sha256(raw).hexdigest(),
            validator=jsonschema_rs.validator_for(schema, validate_formats=True),
        )

    def __iter__(self) -> Iterator[FormVersion]:
        for form in sorted(self._versions):
            for version in sorted(self._versions[form]):
                yield self._versions[form][version]

    def get(self, form: str, version: int | None = None) -> FormVersion:
        """A form version (the study's current one when ``version`` is None), or NotFoundError."""
        versions = self._versions.get(form)
        if not versions:
            raise NotFoundError(f"unknown form {form!r}")
        if version is None:
            return versions[self.current_version(form)]
        try:
            return versions[version]
        except KeyError:
            raise NotFoundError(f"form {form!r} has no version {version}") from None

    def current_version(self, form: str) -> int:
        """The version new entries get: the study's ``current_version``, else the newest file."""
        versions = self._versions.get(form)
        if not versions:
            raise NotFoundError(f"unknown form {form!r}")
        current = self.study.get("forms", {}).get(form, {}).get("current_version")
        return int(current) if current in versions else max(versions)

    def validate(self, form: FormVersion, data: Any) -> None:
        """Raise InvalidInputError listing every hard-check failure."""
        problems = form.problems(data)
        if problems:
            raise InvalidInputError(problems)

    # The study definition -------------------------------------------------------

    @property
    def study_id(self) -> str:
        """The study's identifier."""
        return str(self.study["study_id"])

    def visits(self) -> list[dict[str, Any]]:
        """The schedule of visits."""
        visits: list[dict[str, Any]] = self.study["visits"]
        return visits

    def visit(self, code: str) -> dict[str, Any]:
        """One visit by code, or NotFoundError."""
        for visit in self.visits():
            if visit["code"] == code:
                return visit
        raise NotFoundError(f"unknown visit {code!r}")

    def check_visit(self, form: str, visit_code: str) -> dict[str, Any]:
        """The visit, if ``form`` may be entered there; otherwise a 422 on /visit."""
        try:
            visit = self.visit(visit_code)
        except NotFoundError:
            raise InvalidInputError.single("/visit", f"unknown visit {visit_code!r}") from None
        if form not in visit.get("forms", []):
            raise InvalidInputError.single(
                "/visit", f"form {form!r} is not collected at visit {visit_code!r}"
            )
        return visit

    def signature_meaning(self, meaning: str) -> str:
        """The statement a signature with ``meaning`` makes; 422 for unknown meanings."""
        meanings: dict[str, dict[str, str]] = self.study.get("signature_meanings", {})
        if meaning not in meanings:
            known = ", ".join(sorted(meanings))
            raise InvalidInputError.single("/meaning", f"unknown meaning; use one of: {known}")
        return str(meanings[meaning].get("statement", meanings[meaning].get("label", meaning)))

    def sites(self) -> list[dict[str, str]]:
        """The sites the study ships with."""
        sites: list[dict[str, str]] = self.study.get("sites", [])
        return sites


def _read_json(file: Path, what: str) -> Any:
    """A JSON file under forms/; start-up stops, naming the file, if it is absent or broken."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormDefinitionError(f"{file}: missing ({what})") from None
    except (OSError, ValueError) as error:
        raise FormDefinitionError(f"{file}: cannot be read as JSON: {error}") from None


def load_forms(forms_dir: Path | None = None) -> FormRegistry:
    """The registry of a forms folder, compiled once per process while its files are unchanged.

    Released form versions are never edited, so instances (tests, CLI commands, several
    apps in one process) can share one compiled registry; a changed file (size or
    modification time) makes a new one.
    """
    folder = (forms_dir or default_forms_dir()).resolve()
    fingerprint = tuple(
        (str(path), path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*.json"))
    )
    return _load_forms(folder, fingerprint)


@functools.lru_cache(maxsize=8)
def _load_forms(folder: Path, fingerprint: tuple[tuple[str, int, int], ...]) -> FormRegistry:
    return FormRegistry(folder)


def _readable(error: Any) -> list[Problem]:
    """Problems a person can act on; ``not: {required: [...]}`` means "must be absent"."""
    kind = error.kind
    forbidden = getattr(kind, "schema", None) if getattr(kind, "name", "") == "not" else None
    if isinstance(forbidden, dict) and set(forbidden) == {"required"}:
        base = "".join(f"/{escape_pointer_token(str(t))}" for t in error.instance_path)
        return [
            Problem(
                f"{base}/{escape_pointer_token(str(name))}", "not allowed with the other values"
            )
            for name in forbidden["required"]
        ]
    return [Problem(_pointer(error), error.message)]


def _pointer(error: Any) -> str:
    path = "".join(f"/{escape_pointer_token(str(t))}" for t in error.instance_path)
    kind = error.kind
    name = getattr(kind, "name", "")
    if name == "required":
        return f"{path}/{escape_pointer_token(str(kind.property))}"
    if name in ("additionalProperties", "unevaluatedProperties"):
        unexpected = list(getattr(kind, "unexpected", []) or [])
        if len(unexpected) == 1:
            return f"{path}/{escape_pointer_token(str(unexpected[0]))}"
    return path


MAX_DEPTH = 32
"""Deepest nesting accepted in form data; no form needs more than a few levels."""


def _unstorable_values(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    # Python's JSON parser accepts NaN and Infinity; JSON does not, and a canonical
    # event could not store them, so they are refused before schema validation.
    # NUL is valid JSON ("\u0000") but PostgreSQL text and jsonb cannot hold it, and the
    # read models copy form data there: refused in any string, key or value, at any depth.
    if depth > MAX_DEPTH:
        yield path, f"nested more than {MAX_DEPTH} levels deep"
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, "numbers must be finite (NaN and Infinity are not JSON)"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        yield path, "integers must fit in 64 bits"
    elif isinstance(value, str):
        if "\x00" in value:
            yield path, _NUL_MESSAGE
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}/{escape_pointer_token(str(key))}"
            if "\x00" in str(key):
                yield child, f"property names {_NUL_MESSAGE}"
            yield from _unstorable_values(item, child, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unstorable_values(item, f"{path}/{index}", depth + 1)


_NUL_MESSAGE = "must not contain NUL characters (\\u0000)"
