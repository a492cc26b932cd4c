"""ClinicalFacts: the live entries behind the clinical reports, kept once for all of them.

The patient timeline, the safety tables, PK, MRD and RFS are computed at read time from
the same source facts (see ``projections.facts``); each of their modules names the forms
it reads (``FORMS``). This projection keeps the live entries of all those forms, so that an
entry is written once, not once per report: following the log, and above all rebuilding
it, costs one copy of the casebooks' clinical data instead of five.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from projections import mrd, pk, rfs, safety, timeline
from projections.facts import EntryFacts, fact_tables

metadata = MetaData()
tables = fact_tables("clinical_facts", metadata)


class ClinicalFacts(EntryFacts):
    """Subjects and the live entries of every form a clinical report reads."""

    name = "clinical_facts"
    metadata = metadata
    tables = tables
    forms = timeline.FORMS | safety.FORMS | pk.FORMS | mrd.FORMS | rfs.FORMS

    def __init__(self, forms: frozenset[str] | None = None) -> None:
        """Keep every clinical form, or only ``forms`` (a replay for one report)."""
        if forms is not None:
            self.forms = forms
