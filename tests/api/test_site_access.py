"""Site isolation: site-bound roles see only their sites; other sites' ids do not leak."""

from __future__ import annotations

from tests.api.conftest import Api


def _two_sites(api: Api) -> None:
    assert api.post("admin", "/sites", {"site_id": "RJH", "name": "Ruijin"}).status_code == 201
    api.user("rjh_crc", ["site_staff"], ["RJH"])
    api.user("rjh_cra", ["monitor"], ["RJH"])
    assert api.post("crc", "/subjects", {"site": "CHH", "screening_number": "S1"}).is_success
    assert api.post("rjh_crc", "/subjects", {"site": "RJH", "screening_number": "S1"}).is_success


def test_site_staff_cannot_register_at_another_site(api: Api) -> None:
    api.post("admin", "/sites", {"site_id": "RJH", "name": "Ruijin"})
    response = api.post("crc", "/subjects", {"site": "RJH", "screening_number": "S9"})
    assert response.status_code == 404


def test_another_sites_subject_looks_absent(api: Api) -> None:
    _two_sites(api)
    for user in ("rjh_crc", "rjh_cra"):
        assert api.get(user, "/subjects/CHH-S1").status_code == 404
        assert api.get(user, "/subjects/CHH-S1/audit").status_code == 404
    assert api.get("rjh_crc", "/subjects/CHH-NOPE").status_code == 404


def test_listings_are_filtered_by_site(api: Api) -> None:
    _two_sites(api)
    ids = {s["subject_id"] for s in api.get("crc", "/subjects").json()}
    assert ids == {"CHH-S1"}
    ids = {s["subject_id"] for s in api.get("rjh_cra", "/subjects").json()}
    assert ids == {"RJH-S1"}
    ids = {s["subject_id"] for s in api.get("dm", "/subjects").json()}
    assert ids == {"CHH-S1", "RJH-S1"}
    ids = {s["subject_id"] for s in api.get("dm", "/subjects", params={"site": "RJH"}).json()}
    assert ids == {"RJH-S1"}
