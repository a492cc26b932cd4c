"""CDISC ODM 1.3.2: study metadata, AdminData and ClinicalData, written as a stream.

The document is produced subject by subject (`odm_chunks` yields bytes), so memory grows
with one casebook, not with the study. Layout and mapping decisions (docs/exports.md):

- Study / MetaDataVersion from ``forms/``: one StudyEventDef per visit (``SE.<visit>``), one
  FormDef and one ItemGroupDef per form *version* (entries are pinned to the version they
  were entered with), one ItemDef per leaf JSON Pointer (`ecrf.export.odm_items`), code
  lists from enums, measurement units from ``x-unit``.
- AdminData: every account at the cut (and the built-in ``system`` actor) as a User with
  its sites as LocationRefs; each site as a Location; each signature meaning of the study
  as an electronic SignatureDef.
- FormRepeatKey is always the entry id: it keeps a voided and re-entered form apart and
  lets anyone trace an item back to ``/subjects/{id}/entries/{entry_id}``.
- Snapshot: one SubjectData per subject; current values of live entries; the newest
  signature still valid on each entry (and on the casebook).
- Transactional (``Archival="Yes"``): one SubjectData per casebook event, in log order.
  Data events carry one ItemData per changed leaf (Insert / Update / Remove), each with
  its AuditRecord (who, site, when, reason, ``SourceID`` = log position); a void is a
  FormData ``Remove``; signatures are Signature elements; SDV, queries, locks and
  enrolment are audited ``Context`` transactions with an Annotation (comment and a flag
  from the ``CL.ECRF.ACTION`` code list), so every event of the audit trail is present.
- A migration to a newer form version changes the FormOID, so it is the old version's
  FormData ``Remove`` (audited, with the reason and an ``entry_migrated`` Annotation) and
  the new version's FormData ``Insert`` with every value, under the same FormRepeatKey.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import orjson

from ecrf.domain.patch import diff
from ecrf.domain.subject import Entry, Signature, Subject
from ecrf.export.casebooks import casebook_at, replay
from ecrf.export.cut import LogCut, SiteAtCut, iso_utc
from ecrf.export.odm_items import (
    JSON_POINTER_CONTEXT,
    JSON_TEXT_CONTEXT,
    FormSpec,
    ItemSpec,
    event_oid,
    form_oid,
    form_spec,
    group_oid,
    item_oid,
    leaves,
    location_oid,
    odm_value,
    signature_oid,
    unit_oid,
    user_oid,
    xml_safe,
)
from ecrf.forms import FormRegistry

if TYPE_CHECKING:
    from ecrf.application import EcrfApplication

ODM_NAMESPACE = "http://www.cdisc.org/ns/odm/v1.3"
ODM_VERSION = "1.3.2"
SNAPSHOT = "snapshot"
TRANSACTIONAL = "transactional"
KINDS = (SNAPSHOT, TRANSACTIONAL)
ACTION_CODELIST = "CL.ECRF.ACTION"
"""Code list of the Annotation flags that name what an audited non-data event did."""
ACTIONS = (
    "entry_verified",
    "entry_signed",
    "entry_migrated",
    "entry_locked",
    "entry_unlocked",
    "query_opened",
    "query_answered",
    "query_closed",
    "query_reopened",
    "casebook_signed",
    "casebook_locked",
    "casebook_unlocked",
    "enrolled",
)
SYSTEM_USER = "system"
_EDIT_POINT = {"monitor": "Monitoring", "data_manager": "DataManagement"}
_SITE_ROLES = frozenset({"site_staff", "investigator"})


class XmlWriter:
    """A minimal streaming XML writer: elements go into a buffer that `take` empties."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._open: list[str] = []

    def declaration(self) -> None:
        """The XML declaration (UTF-8)."""
        self._parts.append('<?xml version="1.0" encoding="UTF-8"?>\n')

    def start(self, tag: str, attrs: Mapping[str, str | None] | None = None) -> None:
        """Open an element; attributes whose value is None are left out."""
        self._parts.append(f"<{tag}{_attributes(attrs)}>")
        self._open.append(tag)

    def end(self, tag: str) -> None:
        """Close the innermost element, which must be ``tag``."""
        opened = self._open.pop()
        if opened != tag:
            raise ValueError(f"closing {tag} while {opened} is open")
        self._parts.append(f"</{tag}>")

    def empty(self, tag: str, attrs: Mapping[str, str | None] | None = None) -> None:
        """An element without content."""
        self._parts.append(f"<{tag}{_attributes(attrs)}/>")

    def text(self, tag: str, text: str, attrs: Mapping[str, str | None] | None = None) -> None:
        """An element holding text only."""
        # \r would be read back as \n; escaping it keeps reasons and comments exact.
        body = escape(xml_safe(text), {"\r": "&#13;"})
        self._parts.append(f"<{tag}{_attributes(attrs)}>{body}</{tag}>")

    def translated(self, tag: str, text: str) -> None:
        """An element holding one English TranslatedText."""
        self.start(tag)
        self.text("TranslatedText", text, {"xml:lang": "en"})
        self.end(tag)

    def take(self) -> bytes:
        """Everything written since the last call, as UTF-8."""
        chunk = "".join(self._parts).encode("utf-8")
        self._parts.clear()
        return chunk


def _attributes(attrs: Mapping[str, str | None] | None) -> str:
    if not attrs:
        return ""
    return "".join(
        f" {name}={quoteattr(xml_safe(value))}"
        for name, value in attrs.items()
        if value is not None
    )


# The whole document -----------------------------------------------------------------------


def odm_chunks(
    application: EcrfApplication,
    cut: LogCut,
    kind: str,
    *,
    created: datetime | None = None,
) -> Iterator[bytes]:
    """The ODM document of a cut, in chunks: metadata first, then one subject at a time."""
    if kind not in KINDS:
        raise ValueError(f"unknown ODM export type {kind!r}")
    forms = application.forms
    metadata = StudyMetadata(forms)
    w = XmlWriter()
    w.declaration()
    w.start("ODM", root_attributes(forms.study, cut, kind, created or datetime.now(UTC)))
    write_study(w, metadata)
    write_admin(w, metadata, cut)
    w.start(
        "ClinicalData",
        {"StudyOID": metadata.study_oid, "MetaDataVersionOID": metadata.mdv_oid},
    )
    yield w.take()
    for ref in cut.subjects:
        if kind == SNAPSHOT:
            write_snapshot_subject(w, metadata, casebook_at(application, ref))
        else:
            for domain_event, position, subject in replay(application, ref):
                write_transaction(w, domain_event, position, subject)
        yield w.take()
    w.end("ClinicalData")
    w.end("ODM")
    yield w.take() + b"\n"


def file_oid(study_id: str, cut: LogCut, kind: str) -> str:
    """A file OID that names the cut: the same cut and type always get the same OID."""
    return f"{study_id}.{kind}.{cut.position}.{cut.head[:12]}"


def root_attributes(
    study: Mapping[str, Any], cut: LogCut, kind: str, created: datetime
) -> dict[str, str | None]:
    """Attributes of the ODM root, stating the ledger position and head the file reflects."""
    study_id = str(study["study_id"])
    as_of = iso_utc(cut.at) if cut.at is not None else "(empty log)"
    description = (
        f"ecrf {kind} export of {study_id}: ledger position {cut.position}, running head "
        f"{cut.head}, last event hash {cut.event_hash or '-'}; reproduce with as_of={as_of}"
    )
    return {
        "xmlns": ODM_NAMESPACE,
        "ODMVersion": ODM_VERSION,
        "FileType": "Snapshot" if kind == SNAPSHOT else "Transactional",
        "Archival": "Yes" if kind == TRANSACTIONAL else None,
        "Granularity": "All",
        "FileOID": file_oid(study_id, cut, kind),
        "CreationDateTime": iso_utc(created),
        "AsOfDateTime": iso_utc(cut.at) if cut.at is not None else None,
        "Description": description,
        "Originator": str(study.get("sponsor") or study_id),
        "SourceSystem": "ecrf",
        "SourceSystemVersion": "0.1.0",
    }


# Metadata -------------------------------------------------------------------------------


class StudyMetadata:
    """The study definition and every form version, as ODM metadata (pure, no I/O)."""

    def __init__(self, forms: FormRegistry) -> None:
        self.study: Mapping[str, Any] = forms.study
        self.study_oid = str(self.study["study_id"])
        self.specs: dict[tuple[str, int], FormSpec] = {
            (f.form, f.version): form_spec(f) for f in forms
        }
        self.visits: list[Mapping[str, Any]] = list(self.study.get("visits", []))
        self.meanings: Mapping[str, Mapping[str, str]] = self.study.get("signature_meanings", {})
        fingerprint = hashlib.sha256(orjson.dumps(dict(self.study), option=orjson.OPT_SORT_KEYS))
        for form in forms:
            fingerprint.update(f"{form.form}/{form.version}:{form.sha256}".encode())
        self.mdv_oid = f"MDV.{fingerprint.hexdigest()[:12]}"
        repeating = {f for v in self.visits if v.get("repeatable") for f in v.get("forms", [])}
        self.repeating_forms = frozenset(repeating)

    def versions_of(self, form: str) -> list[FormSpec]:
        """Every version of one form, oldest first."""
        return [s for (name, _), s in sorted(self.specs.items()) if name == form]

    def units(self) -> list[str]:
        """Every measurement unit an item uses, sorted."""
        return sorted({i.unit for s in self.specs.values() for i in s.items if i.unit})

    def visit_order(self) -> list[str]:
        """Visit codes in the order of the schedule."""
        return [str(v["code"]) for v in self.visits]


def write_study(w: XmlWriter, metadata: StudyMetadata) -> None:
    """The Study element: global variables, units, and the MetaDataVersion."""
    study = metadata.study
    w.start("Study", {"OID": metadata.study_oid})
    w.start("GlobalVariables")
    w.text("StudyName", metadata.study_oid)
    w.text("StudyDescription", str(study.get("title") or metadata.study_oid))
    registration = study.get("registration", {})
    w.text("ProtocolName", str(registration.get("identifier") or metadata.study_oid))
    w.end("GlobalVariables")
    units = metadata.units()
    if units:
        w.start("BasicDefinitions")
        for unit in units:
            w.start("MeasurementUnit", {"OID": unit_oid(unit), "Name": unit})
            w.translated("Symbol", unit)
            w.end("MeasurementUnit")
        w.end("BasicDefinitions")
    w.start(
        "MetaDataVersion",
        {
            "OID": metadata.mdv_oid,
            "Name": f"{metadata.study_oid} forms",
            "Description": "Form schemas under forms/ (JSON Schema 2020-12) and study.json",
        },
    )
    _write_protocol(w, metadata)
    for visit in metadata.visits:
        _write_event_def(w, metadata, visit)
    for spec in metadata.specs.values():
        _write_form_def(w, metadata, spec)
    for spec in metadata.specs.values():
        w.start("ItemGroupDef", {"OID": spec.group_oid, "Name": spec.title, "Repeating": "No"})
        for order, item in enumerate(spec.items, start=1):
            w.empty(
                "ItemRef",
                {
                    "ItemOID": item.oid,
                    "OrderNumber": str(order),
                    "Mandatory": "Yes" if item.mandatory else "No",
                },
            )
        w.end("ItemGroupDef")
    for spec in metadata.specs.values():
        for item in spec.items:
            _write_item_def(w, item)
    for spec in metadata.specs.values():
        for item in spec.items:
            _write_codelist(w, item)
    w.start("CodeList", {"OID": ACTION_CODELIST, "Name": "Audited action", "DataType": "text"})
    for action in ACTIONS:
        w.start("CodeListItem", {"CodedValue": action})
        w.translated("Decode", action.replace("_", " "))
        w.end("CodeListItem")
    w.end("CodeList")
    w.end("MetaDataVersion")
    w.end("Study")


def _write_protocol(w: XmlWriter, metadata: StudyMetadata) -> None:
    w.start("Protocol")
    w.translated("Description", str(metadata.study.get("design") or metadata.study_oid))
    for order, visit in enumerate(metadata.visits, start=1):
        w.empty(
            "StudyEventRef",
            {
                "StudyEventOID": event_oid(str(visit["code"])),
                "OrderNumber": str(order),
                "Mandatory": "Yes" if visit.get("target_day") is not None else "No",
            },
        )
    w.end("Protocol")


def _write_event_def(w: XmlWriter, metadata: StudyMetadata, visit: Mapping[str, Any]) -> None:
    code = str(visit["code"])
    if visit.get("target_day") is not None:
        kind = "Scheduled"
    elif visit.get("repeatable") and any(
        metadata.study.get("forms", {}).get(f, {}).get("log") for f in visit.get("forms", [])
    ):
        kind = "Common"
    elif visit.get("repeatable"):
        kind = "Unscheduled"
    else:
        kind = "Scheduled"
    w.start(
        "StudyEventDef",
        {
            "OID": event_oid(code),
            "Name": str(visit.get("label") or code),
            "Repeating": "Yes" if visit.get("repeatable") else "No",
            "Type": kind,
        },
    )
    order = 0
    for form in visit.get("forms", []):
        for spec in metadata.versions_of(str(form)):
            order += 1
            w.empty("FormRef", {"FormOID": spec.oid, "OrderNumber": str(order), "Mandatory": "No"})
    w.end("StudyEventDef")


def _write_form_def(w: XmlWriter, metadata: StudyMetadata, spec: FormSpec) -> None:
    w.start(
        "FormDef",
        {
            "OID": spec.oid,
            "Name": f"{spec.title} (v{spec.version})",
            "Repeating": "Yes" if spec.form in metadata.repeating_forms else "No",
        },
    )
    if spec.description:
        w.translated("Description", spec.description)
    w.empty("ItemGroupRef", {"ItemGroupOID": spec.group_oid, "Mandatory": "Yes"})
    w.empty("Alias", {"Context": "ecrf.form", "Name": f"{spec.form}/v{spec.version}"})
    w.end("FormDef")


def _write_item_def(w: XmlWriter, item: ItemSpec) -> None:
    w.start(
        "ItemDef",
        {
            "OID": item.oid,
            "Name": item.name,
            "DataType": item.data_type,
            "Length": str(item.length) if item.length else None,
        },
    )
    if item.description:
        w.translated("Description", item.description)
    if item.unit:
        w.empty("MeasurementUnitRef", {"MeasurementUnitOID": unit_oid(item.unit)})
    if item.codelist_oid:
        w.empty("CodeListRef", {"CodeListOID": item.codelist_oid})
    w.empty("Alias", {"Context": JSON_POINTER_CONTEXT, "Name": item.pointer})
    if item.json_text:
        w.empty("Alias", {"Context": JSON_TEXT_CONTEXT, "Name": "JSON array as text"})
    w.end("ItemDef")


def _write_codelist(w: XmlWriter, item: ItemSpec) -> None:
    if not item.codelist_oid:
        return
    w.start("CodeList", {"OID": item.codelist_oid, "Name": item.name, "DataType": item.code_type})
    for code in item.codes:
        text = odm_value(code) or ""
        w.start("CodeListItem", {"CodedValue": text})
        w.translated("Decode", text)
        w.end("CodeListItem")
    w.end("CodeList")


# AdminData ----------------------------------------------------------------------------------


def _user_type(roles: Iterable[str]) -> str:
    roles = set(roles)
    if roles & _SITE_ROLES:
        return "Investigator"
    if roles & {"monitor", "data_manager", "safety_reviewer"}:
        return "Sponsor"
    return "Other"


def write_admin(w: XmlWriter, metadata: StudyMetadata, cut: LogCut) -> None:
    """Users, Locations (sites) and SignatureDefs (the study's signature meanings)."""
    sites = {s.site_id: s for s in cut.sites}
    for ref in cut.subjects:
        # A site always precedes its subjects in the log; this only guards a bad cut.
        sites.setdefault(ref.site, SiteAtCut(ref.site, ref.site, cut.at or datetime.now(UTC)))
    w.start("AdminData", {"StudyOID": metadata.study_oid})
    usernames = {a.username for a in cut.accounts}
    for account in cut.accounts:
        w.start("User", {"OID": user_oid(account.username), "UserType": _user_type(account.roles)})
        w.text("LoginName", account.username)
        w.text("DisplayName", account.full_name or account.username)
        w.text("FullName", account.full_name or account.username)
        for granted in account.sites:
            if granted in sites:
                w.empty("LocationRef", {"LocationOID": location_oid(granted)})
        w.end("User")
    if SYSTEM_USER not in usernames:
        w.start("User", {"OID": user_oid(SYSTEM_USER), "UserType": "Other"})
        w.text("LoginName", SYSTEM_USER)
        w.text("DisplayName", "ecrf system")
        w.text("FullName", "ecrf system (automatic checks and set-up)")
        w.end("User")
    for site in sites.values():
        w.start(
            "Location",
            {"OID": location_oid(site.site_id), "Name": site.name or site.site_id},
        )
        w.empty(
            "MetaDataVersionRef",
            {
                "StudyOID": metadata.study_oid,
                "MetaDataVersionOID": metadata.mdv_oid,
                "EffectiveDate": site.added_at.astimezone(UTC).date().isoformat(),
            },
        )
        w.end("Location")
    for meaning, definition in metadata.meanings.items():
        w.start("SignatureDef", {"OID": signature_oid(meaning), "Methodology": "Electronic"})
        w.text("Meaning", str(definition.get("label") or meaning))
        w.text("LegalReason", str(definition.get("statement") or meaning))
        w.end("SignatureDef")
    w.end("AdminData")


# ClinicalData: snapshot -------------------------------------------------------------------------


def write_snapshot_subject(w: XmlWriter, metadata: StudyMetadata, subject: Subject) -> None:
    """One subject's current data: live entries by visit, with their valid signatures."""
    w.start("SubjectData", {"SubjectKey": subject.subject_id})
    valid = [c for c in subject.casebook_signatures if subject.casebook_signature_valid(c)]
    if valid:
        signed = valid[-1].signature
        _write_signature(
            w, signed.signer, subject.site, signed.meaning, signed.at, signed.data_hash
        )
    w.empty("SiteRef", {"LocationOID": location_oid(subject.site)})
    by_visit: dict[str, list[Entry]] = {}
    for entry in subject.entries.values():
        if not entry.voided:
            by_visit.setdefault(entry.visit, []).append(entry)
    order = metadata.visit_order()
    visits = [v for v in order if v in by_visit] + sorted(set(by_visit) - set(order))
    for visit in visits:
        w.start("StudyEventData", {"StudyEventOID": event_oid(visit)})
        for entry in by_visit[visit]:
            w.start(
                "FormData",
                {"FormOID": form_oid(entry.form, entry.version), "FormRepeatKey": entry.entry_id},
            )
            holding = [s for s in entry.signatures if entry.signature_valid(s)]
            if holding:
                _write_entry_signature(w, holding[-1], subject.site)
            w.start("ItemGroupData", {"ItemGroupOID": group_oid(entry.form, entry.version)})
            for tokens, value in leaves(entry.data):
                _write_item(w, item_oid(entry.form, entry.version, tokens), value, None)
            w.end("ItemGroupData")
            w.end("FormData")
        w.end("StudyEventData")
    w.end("SubjectData")


def _write_item(
    w: XmlWriter, oid: str, value: Any, transaction: str | None, audit: _Audit | None = None
) -> None:
    text = odm_value(value)
    attrs: dict[str, str | None] = {"ItemOID": oid, "TransactionType": transaction}
    if transaction != "Remove":
        if text is None:
            attrs["IsNull"] = "Yes"
        else:
            attrs["Value"] = text
    if audit is None:
        w.empty("ItemData", attrs)
        return
    w.start("ItemData", attrs)
    audit.write(w)
    w.end("ItemData")


def _write_signature(
    w: XmlWriter, signer: str, site: str, meaning: str, at: datetime, manifest: str
) -> None:
    w.start("Signature")
    w.empty("UserRef", {"UserOID": user_oid(signer)})
    w.empty("LocationRef", {"LocationOID": location_oid(site)})
    w.empty("SignatureRef", {"SignatureOID": signature_oid(meaning)})
    w.text("DateTimeStamp", iso_utc(at))
    # The SHA-256 of the signed data (canonical JSON): what the signature is bound to.
    w.text("CryptoBindingManifest", manifest)
    w.end("Signature")


def _write_entry_signature(w: XmlWriter, signature: Signature, site: str) -> None:
    _write_signature(
        w, signature.signer, site, signature.meaning, signature.at, signature.data_hash
    )


# ClinicalData: transactional -----------------------------------------------------------------


class _Audit:
    """One AuditRecord: who, where, when, why, and the log position as SourceID."""

    def __init__(self, domain_event: Any, position: int, site: str) -> None:
        audit: Mapping[str, Any] = getattr(domain_event, "audit", {}) or {}
        self.user = str(audit.get("user") or SYSTEM_USER)
        self.role = str(audit.get("role") or "")
        self.site = str(audit.get("site") or site)
        self.reason = str(audit.get("reason") or "")
        self.at: datetime = domain_event.timestamp
        self.position = position

    def write(self, w: XmlWriter) -> None:
        """The AuditRecord element."""
        w.start("AuditRecord", {"EditPoint": _EDIT_POINT.get(self.role)})
        w.empty("UserRef", {"UserOID": user_oid(self.user)})
        w.empty("LocationRef", {"LocationOID": location_oid(self.site)})
        w.text("DateTimeStamp", iso_utc(self.at))
        if self.reason:
            w.text("ReasonForChange", self.reason)
        w.text("SourceID", str(self.position))
        w.end("AuditRecord")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _tokens(pointer: str) -> tuple[str, ...]:
    if not pointer:
        return ()
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def leaf_changes(
    changes: Iterable[Mapping[str, Any]],
) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Audit-trail changes at leaf granularity: a whole-object change becomes its leaves."""
    for change in changes:
        base = _tokens(str(change["path"]))
        old, new = change.get("old"), change.get("new")
        if isinstance(old, dict) or isinstance(new, dict):
            before = old if isinstance(old, dict) else {}
            after = new if isinstance(new, dict) else {}
            for inner in diff(before, after):
                yield (*base, *_tokens(inner["path"])), inner["old"], inner["new"]
        else:
            yield base, old, new


def data_changes(domain_event: Any) -> list[dict[str, Any]]:
    """The changes an entry event records, as the audit trail lists them."""
    if isinstance(domain_event, Subject.EntryCorrected):
        return list(domain_event.changes)
    if isinstance(domain_event, Subject.EntryRecorded):
        return [
            {"path": c["path"], "old": None, "new": c["new"]} for c in diff({}, domain_event.data)
        ]
    return []


def _transaction_of(old: Any, new: Any) -> str:
    if old is None:
        return "Insert"
    if new is None:
        return "Remove"
    return "Update"


def write_transaction(w: XmlWriter, domain_event: Any, position: int, subject: Subject) -> None:
    """One casebook event as one transaction (a SubjectData element), audited."""
    audit = _Audit(domain_event, position, subject.site)
    action = _snake(type(domain_event).__name__)
    if isinstance(domain_event, Subject.Registered):
        w.start("SubjectData", {"SubjectKey": subject.subject_id, "TransactionType": "Insert"})
        audit.write(w)
        w.empty("SiteRef", {"LocationOID": location_oid(subject.site)})
        w.end("SubjectData")
        return
    if isinstance(domain_event, Subject.CasebookSigned):
        w.start("SubjectData", {"SubjectKey": subject.subject_id, "TransactionType": "Context"})
        audit.write(w)
        manifest = subject.casebook_signatures[-1].signature.data_hash
        _write_signature(w, audit.user, audit.site, domain_event.meaning, audit.at, manifest)
        w.end("SubjectData")
        return
    entry_id = getattr(domain_event, "entry_id", None)
    entry = subject.entries.get(entry_id) if isinstance(entry_id, str) else None
    w.start("SubjectData", {"SubjectKey": subject.subject_id, "TransactionType": "Context"})
    if entry is None:
        audit.write(w)
        _write_annotation(w, audit, _comment(action, domain_event), action)
        w.end("SubjectData")
        return
    recorded = isinstance(domain_event, Subject.EntryRecorded)
    w.start(
        "StudyEventData",
        {
            "StudyEventOID": event_oid(entry.visit),
            "TransactionType": "Upsert" if recorded else "Context",
        },
    )
    if isinstance(domain_event, Subject.EntryMigrated):
        _write_migration(w, domain_event, entry, audit, action)
        w.end("StudyEventData")
        w.end("SubjectData")
        return
    form_attrs: dict[str, str | None] = {
        "FormOID": form_oid(entry.form, entry.version),
        "FormRepeatKey": entry.entry_id,
    }
    if recorded or isinstance(domain_event, Subject.EntryCorrected):
        transaction = "Insert" if recorded else "Update"
        w.start("FormData", {**form_attrs, "TransactionType": transaction})
        w.start(
            "ItemGroupData",
            {"ItemGroupOID": group_oid(entry.form, entry.version), "TransactionType": transaction},
        )
        for tokens, old, new in leaf_changes(data_changes(domain_event)):
            oid = item_oid(entry.form, entry.version, tokens)
            _write_item(w, oid, new, _transaction_of(old, new), audit)
        w.end("ItemGroupData")
    elif isinstance(domain_event, Subject.EntryVoided):
        w.start("FormData", {**form_attrs, "TransactionType": "Remove"})
        audit.write(w)
    else:
        w.start("FormData", {**form_attrs, "TransactionType": "Context"})
        audit.write(w)
        if isinstance(domain_event, Subject.EntrySigned):
            _write_signature(
                w, audit.user, audit.site, domain_event.meaning, audit.at, domain_event.data_hash
            )
        else:
            _write_annotation(w, audit, _comment(action, domain_event), action)
    w.end("FormData")
    w.end("StudyEventData")
    w.end("SubjectData")


def _write_migration(
    w: XmlWriter, migrated: Subject.EntryMigrated, entry: Entry, audit: _Audit, action: str
) -> None:
    """The old version's form instance removed, the new version's inserted with every value."""
    changed = len(migrated.changes)
    comment = (
        f"migrated from {entry.form} v{migrated.from_version} to v{migrated.to_version} "
        f"(schema sha256 {migrated.schema_sha256}); {changed} value(s) changed"
    )
    w.start(
        "FormData",
        {
            "FormOID": form_oid(entry.form, migrated.from_version),
            "FormRepeatKey": entry.entry_id,
            "TransactionType": "Remove",
        },
    )
    audit.write(w)
    _write_annotation(w, audit, comment, action)
    w.end("FormData")
    w.start(
        "FormData",
        {
            "FormOID": form_oid(entry.form, migrated.to_version),
            "FormRepeatKey": entry.entry_id,
            "TransactionType": "Insert",
        },
    )
    _write_annotation(w, audit, comment, action)
    w.start(
        "ItemGroupData",
        {"ItemGroupOID": group_oid(entry.form, migrated.to_version), "TransactionType": "Insert"},
    )
    for tokens, value in leaves(migrated.data):
        _write_item(w, item_oid(entry.form, migrated.to_version, tokens), value, "Insert", audit)
    w.end("ItemGroupData")
    w.end("FormData")


def _comment(action: str, domain_event: Any) -> str:
    state = vars(domain_event)
    if action == "entry_verified":
        return f"source data verified at revision {state.get('revision')}"
    if action.startswith("query_"):
        where = f" on {state['path']}" if state.get("path") else ""
        verb = action.removeprefix("query_")
        return f"query {state.get('query_id')} {verb}{where}: {state.get('text', '')}"
    if action == "enrolled":
        return f"enrolled at {state.get('dose_level')}, slot {state.get('slot')}"
    details = {
        k: v
        for k, v in state.items()
        if k not in ("audit", "originator_id", "originator_version", "timestamp", "hash")
        and k != "prev_hash"
    }
    text = action.replace("_", " ")
    if details:
        text += ": " + orjson.dumps(details, default=str, option=orjson.OPT_SORT_KEYS).decode()
    return text


def _write_annotation(w: XmlWriter, audit: _Audit, comment: str, action: str) -> None:
    w.start("Annotation", {"SeqNum": "1"})
    side = "Site" if audit.role in _SITE_ROLES else "Sponsor"
    w.text("Comment", comment, {"SponsorOrSite": side})
    if action in ACTIONS:
        w.start("Flag")
        w.text("FlagValue", action, {"CodeListOID": ACTION_CODELIST})
        w.end("Flag")
    w.end("Annotation")
