"""The study definition as the API serves it: what issue 5 item 1 asks ``GET /study`` for."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api


def test_the_study_definition_is_served(api: Api) -> None:
    response = api.get("crc", "/study")
    assert response.status_code == 200, response.text
    study = response.json()
    assert study["study_id"] == "CEA-CART-CRLM-01"
    assert study["title"].strip()
    assert [s["site_id"] for s in study["sites"]] == ["CHH"]
    assert [(d["dose_level"], d["dose_per_kg"]) for d in study["dose_levels"]] == [
        ("DL1", 1_000_000),
        ("DL2", 3_000_000),
        ("DL3", 6_000_000),
    ]
    visits = {v["code"]: v for v in study["visits"]}
    # Screening counts from consent (up to 28 days after it), the rest from the infusion.
    scr = visits["SCR"]
    assert (scr["anchor"], scr["target_day"], scr["window_after"]) == ("consent", 0, 28)
    assert (visits["D0"]["anchor"], visits["D0"]["target_day"]) == ("infusion", 0)
    d7 = visits["D7"]
    assert (d7["target_day"], d7["window_before"], d7["window_after"]) == (7, 1, 1)
    assert "cart_infusion" in visits["D0"]["forms"]
    assert set(visits["LOG"]["forms"]) == {"adverse_event", "concomitant_medication"}
    settings = study["settings"]
    escalation = settings["escalation"]
    assert (escalation["allow_deescalation"], escalation["mtd_requires"]) == (True, 6)
    assert escalation["dlt_window_days"] == 28
    assert (settings["pk"]["method"], settings["pk"]["interval_days"]) == (
        "linear-up/log-down",
        [0, 28],
    )
    assert (settings["rfs"]["origin"], settings["rfs"]["horizon_months"]) == ("infusion", 24)
    assert settings["mrd"] == {"origin": "resection", "horizon_months": 24}
    assert study["forms"]["adverse_event"]["current_version"] == 2


@pytest.mark.parametrize("user", ["pi", "cra", "dm", "src", "fda", "admin"])
def test_every_account_reads_the_study(api: Api, user: str) -> None:
    assert api.get(user, "/study").status_code == 200


def test_anonymous_callers_are_401(api: Api) -> None:
    assert api.client.get("/study").status_code == 401
