"""The form registry: start-up checks of the forms folder, and error pointers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ecrf.forms import FormDefinitionError, FormRegistry, default_forms_dir

REGISTRY = FormRegistry()


@pytest.fixture
def forms_copy(tmp_path: Path) -> Path:
    target = tmp_path / "forms"
    shutil.copytree(default_forms_dir(), target)
    return target


def test_every_shipped_form_loads() -> None:
    assert {f.form for f in REGISTRY} >= {"demographics", "adverse_event", "crs_assessment"}
    assert REGISTRY.get("demographics").version == 1


def test_a_bad_schema_stops_start_up_naming_the_file(forms_copy: Path) -> None:
    broken = forms_copy / "demographics" / "v1.json"
    schema = json.loads(broken.read_text())
    schema["properties"]["age"]["type"] = "whole number"
    broken.write_text(json.dumps(schema))
    with pytest.raises(FormDefinitionError, match=r"demographics/v1\.json"):
        FormRegistry(forms_copy)


def test_a_file_that_is_not_json_stops_start_up(forms_copy: Path) -> None:
    (forms_copy / "labs" / "v2.json").write_text("{not json")
    with pytest.raises(FormDefinitionError, match=r"labs/v2\.json"):
        FormRegistry(forms_copy)


def test_the_id_must_match_the_path(forms_copy: Path) -> None:
    shutil.copy(forms_copy / "labs" / "v1.json", forms_copy / "labs" / "v2.json")
    with pytest.raises(FormDefinitionError, match=r"\$id must be"):
        FormRegistry(forms_copy)


def test_problems_point_at_the_fields() -> None:
    form = REGISTRY.get("demographics")
    data = dict(form.schema["examples"][0])
    data["sex"] = "X"
    data["unexpected"] = 1
    del data["age"]
    paths = [p.path for p in form.problems(data)]
    assert paths == ["/age", "/sex", "/unexpected"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**70])
def test_numbers_json_cannot_hold_are_refused(bad: float) -> None:
    form = REGISTRY.get("demographics")
    data = dict(form.schema["examples"][0])
    data["weight_kg"] = bad
    assert [p.path for p in form.problems(data)] == ["/weight_kg"]


@pytest.mark.parametrize(
    ("pointer", "defined"),
    [("/weight_kg", True), ("/sex", True), ("/nope", False), ("", False), ("weight_kg", False)],
)
def test_defines_answers_for_json_pointers(pointer: str, defined: bool) -> None:
    assert REGISTRY.get("demographics").defines(pointer) is defined
