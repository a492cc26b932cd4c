"""The form registry: start-up checks of the forms folder, and error pointers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _edit_study(forms_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    study_file = forms_dir / "study.json"
    study = json.loads(study_file.read_text(encoding="utf-8"))
    change(study)
    study_file.write_text(json.dumps(study, indent=2, ensure_ascii=False), encoding="utf-8")


def test_a_missing_study_schema_stops_start_up_naming_the_file(forms_copy: Path) -> None:
    (forms_copy / "study.schema.json").unlink()
    with pytest.raises(FormDefinitionError, match=r"study\.schema\.json: missing"):
        FormRegistry(forms_copy)


def test_a_missing_study_definition_stops_start_up_naming_the_file(forms_copy: Path) -> None:
    (forms_copy / "study.json").unlink()
    with pytest.raises(FormDefinitionError, match=r"study\.json: missing"):
        FormRegistry(forms_copy)


def test_new_entries_get_the_studys_current_version() -> None:
    assert REGISTRY.study["forms"]["adverse_event"]["current_version"] == 2
    assert REGISTRY.current_version("adverse_event") == 2
    assert REGISTRY.get("adverse_event").version == 2
    assert REGISTRY.get("adverse_event", 1).version == 1  # released versions stay readable


def test_the_current_version_need_not_be_the_newest_file(forms_copy: Path) -> None:
    # A version can be published before the study switches new entries to it.
    _edit_study(forms_copy, lambda s: s["forms"]["adverse_event"].update(current_version=1))
    registry = FormRegistry(forms_copy)
    assert registry.get("adverse_event").version == 1
    assert registry.get("adverse_event", 2).version == 2


def test_a_current_version_without_its_file_stops_start_up(forms_copy: Path) -> None:
    _edit_study(forms_copy, lambda s: s["forms"]["labs"].update(current_version=3))
    with pytest.raises(FormDefinitionError) as raised:
        FormRegistry(forms_copy)
    assert "forms.labs.current_version is 3" in str(raised.value)
    assert str(forms_copy / "labs" / "v3.json") in str(raised.value)
