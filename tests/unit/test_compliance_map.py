"""docs/compliance.md names tests as evidence; every one of them must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)*)`")


def _names(path: Path) -> set[str]:
    """Every `Class::test` and `test` defined in a test file."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return names


def test_every_test_named_in_the_compliance_map_exists() -> None:
    text = (ROOT / "docs" / "compliance.md").read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert len(references) > 40
    missing = []
    for file, parts in references:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
            continue
        name = parts.removeprefix("::")
        if name and name not in _names(path):
            missing.append(f"{file}::{name}")
    assert missing == []


PART_11 = [
    *(f"11.10({p})" for p in "abcdefghijk"),
    "11.50(a)",
    "11.50(b)",
    "11.70",
    "11.100(a)",
    "11.100(b)",
    "11.100(c)",
    "11.200(a)(1)",
    "11.200(a)(2)",
    "11.200(a)(3)",
    "11.200(b)",
    *(f"11.300({p})" for p in "abcde"),
]
"""Every paragraph of 21 CFR 11.10, 11.50, 11.70, 11.100, 11.200 and 11.300 (issue 9)."""

E6_R3 = [
    "4.2.1",
    "4.2.2(a)(i)",
    "4.2.2(a)(ii)",
    "4.2.2(a)(iii)",
    "4.2.2(b)",
    "4.2.2(c)",
    "4.2.2(d)",
    "4.2.2(e)",
    *(f"4.2.{n}" for n in range(3, 9)),
    *(f"4.3.{n}" for n in range(1, 9)),
]
"""ICH E6(R3) (Step 4, 2025) section 4.2, data life cycle elements, with the audit-trail
items of 4.2.2 one by one, and 4.3, computerised systems."""


def _rows(text: str) -> dict[str, str]:
    """Each mapped paragraph and the evidence column of its table row."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and re.fullmatch(r"(11|4)\.[\w().]+", cells[0]):
            assert cells[0] not in rows, f"{cells[0]} is mapped twice"
            rows[cells[0]] = cells[-1]
    return rows


@pytest.mark.parametrize("paragraph", PART_11 + E6_R3)
def test_every_paragraph_is_mapped_to_a_test(paragraph: str) -> None:
    rows = _rows((ROOT / "docs" / "compliance.md").read_text(encoding="utf-8"))
    assert paragraph in rows, f"no row for {paragraph}"
    assert REFERENCE.search(rows[paragraph]), f"{paragraph} names no test"


def test_no_row_maps_a_paragraph_that_is_not_required() -> None:
    rows = _rows((ROOT / "docs" / "compliance.md").read_text(encoding="utf-8"))
    assert set(rows) == set(PART_11 + E6_R3)


def test_the_e6_r3_section_is_named_as_in_the_final_guideline() -> None:
    text = (ROOT / "docs" / "compliance.md").read_text(encoding="utf-8")
    assert "### 4.2 Data life cycle elements" in text
    assert "### 4.3 Computerised systems" in text
    assert "section 4.2 (computerised systems" not in text
