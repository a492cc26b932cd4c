"""Property tests: random JSON to every form and random merge patches to entries never
produce a 5xx, and whatever is stored always validates against its pinned schema version
(checked independently with the `jsonschema` package)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecrf.api.app import create_app
from ecrf.config import Settings
from ecrf.forms import FormRegistry
from ecrf.persistence import DatabaseUrl
from tests.api.conftest import PASSWORD

FORMS = FormRegistry()
FORM_IDS = sorted({f.form for f in FORMS})
VISIT_OF = {
    form: next(v["code"] for v in FORMS.visits() if form in v.get("forms", [])) for form in FORM_IDS
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["2024-02-30", "2024-03-01", "2024-03-01T09:00:00+08:00", "DL1", "none"]),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _field_values(form: str) -> st.SearchStrategy[dict[str, Any]]:
    """Objects using the form's own field names (and a few others), with random values."""
    names = [*FORMS.get(form).schema.get("properties", {}), "unknown", ""]
    return st.dictionaries(st.sampled_from(names), json_values, max_size=12)


def _mutated_example(form: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid example with a few fields replaced or removed: near the valid boundary."""
    example = FORMS.get(form).schema["examples"][0]
    return st.builds(
        lambda changes, removed: {
            **{k: v for k, v in example.items() if k not in removed},
            **changes,
        },
        st.dictionaries(st.sampled_from(sorted(example)), json_values, max_size=2),
        st.sets(st.sampled_from(sorted(example)), max_size=2),
    )


class World:
    """A running application with one site-staff user and one subject."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        admin = self._login("admin")
        client.post(
            "/users",
            json={
                "username": "crc",
                "full_name": "CRC",
                "password": PASSWORD,
                "roles": ["site_staff"],
                "sites": ["CHH"],
            },
            headers=admin,
        )
        self.headers = self._login("crc")
        self.subjects = 0

    def new_subject(self) -> str:
        """A fresh casebook, so that examples never see each other's entries."""
        self.subjects += 1
        subject = {"site": "CHH", "screening_number": f"P{self.subjects}"}
        response = self.client.post("/subjects", json=subject, headers=self.headers)
        assert response.status_code == 201, response.text
        subject_id: str = response.json()["subject_id"]
        return subject_id

    def _login(self, username: str) -> dict[str, str]:
        response = self.client.post(
            "/auth/token", data={"username": username, "password": PASSWORD}
        )
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def post(self, url: str, body: Any) -> Any:
        """POST as site staff; NaN and Infinity are sent as Python's json writes them."""
        headers = {**self.headers, "Content-Type": "application/json"}
        return self.client.post(url, content=json.dumps(body), headers=headers)

    def check_stored(self, subject_id: str, entry_id: str) -> None:
        """The stored entry validates against the schema version it is pinned to."""
        url = f"/subjects/{subject_id}/entries/{entry_id}"
        entry = self.client.get(url, headers=self.headers).json()
        schema = FORMS.get(entry["form"], entry["version"]).schema
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        errors = [e.message for e in validator.iter_errors(entry["data"])]
        assert errors == [], (entry["form"], entry["data"], errors)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("properties")
    app_settings = Settings(
        database=DatabaseUrl.parse(f"sqlite:///{data_dir / 'p.sqlite'}"),
        data_dir=data_dir,
        run_projections=False,
        bootstrap_admin=f"admin:{PASSWORD}",
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        yield World(client)


PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@pytest.mark.parametrize("form", FORM_IDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_random_entries_never_fail_the_server(world: World, form: str, data: st.DataObject) -> None:
    payload = data.draw(st.one_of(_field_values(form), _mutated_example(form), json_values))
    subject_id = world.new_subject()
    body = {"form": form, "visit": VISIT_OF[form], "data": payload}
    response = world.post(f"/subjects/{subject_id}/entries", body)
    assert response.status_code in (201, 409, 422), response.text
    if response.status_code == 201:
        world.check_stored(subject_id, response.json()["entry_id"])


@pytest.mark.parametrize("form", ["adverse_event", "crs_assessment", "pk_sample", "demographics"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_random_merge_patches_keep_stored_data_valid(
    world: World, form: str, data: st.DataObject
) -> None:
    example = FORMS.get(form).schema["examples"][0]
    patch = data.draw(st.dictionaries(st.sampled_from([*example, "x"]), json_values, max_size=3))
    subject_id = world.new_subject()
    body = {"form": form, "visit": VISIT_OF[form], "data": example}
    created = world.post(f"/subjects/{subject_id}/entries", body)
    assert created.status_code == 201, created.text
    entry_id = created.json()["entry_id"]
    correction = {"changes": patch, "reason": "property test", "expected_revision": 1}
    url = f"/subjects/{subject_id}/entries/{entry_id}/corrections"
    response = world.post(url, correction)
    assert response.status_code in (200, 409, 422), response.text
    world.check_stored(subject_id, entry_id)
