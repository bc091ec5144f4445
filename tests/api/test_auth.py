"""API keys: 401 without a valid key, 403 for a role, network or tenant it lacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api import keys as keys_module
from api.keys import token_hash
from tests.api.conftest import Api, OpenApi
from tests.events import audit_event


def test_a_request_without_a_valid_key_gets_401(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = api.client.get("/v1/events", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    _, good = api.key("acme", "analyst")
    forged = good["Authorization"][:-4] + "AAAA"
    assert api.client.get("/v1/events", headers={"Authorization": forged}).status_code == 401


def test_every_documented_v1_operation_takes_a_key(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operations = [
        (method, path)
        for path, methods in schema["paths"].items()
        if path.startswith("/v1/")
        for method in methods
    ]
    assert len(operations) >= 8
    for method, path in operations:
        assert schema["paths"][path][method]["security"] == [{"HTTPBearer": []}]
        response = api.client.request(method, path.replace("{", "").replace("}", ""))
        assert response.status_code == 401, (method, path)


def test_the_scheme_is_case_insensitive(api: Api) -> None:
    _, headers = api.key("acme", "analyst")
    token = headers["Authorization"].removeprefix("Bearer ")
    for scheme in ("bearer", "BEARER"):
        response = api.client.get("/v1/events", headers={"Authorization": f"{scheme} {token}"})
        assert response.status_code == 200


def test_only_a_hash_of_the_token_is_stored(api: Api) -> None:
    key, headers = api.key("acme", "analyst")
    token = headers["Authorization"].removeprefix("Bearer ")
    rows = api.services.keys._execute(f"SELECT * FROM {api.services.keys.table}", ())
    stored = repr(rows)
    assert key.key_id in stored
    assert token.split("_")[-1] not in stored
    assert token_hash(token) in [bytes(row[1]) for row in rows]


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("ingest", {"ingest"}),
        ("analyst", {"query", "read"}),
        ("responder", {"query", "read"}),
        ("auditor", {"query", "read", "export", "verify"}),
        ("admin", {"ingest", "query", "read", "export", "verify", "keys"}),
    ],
)
def test_each_role_reaches_only_its_endpoints(api: Api, role: str, allowed: set[str]) -> None:
    api.client.post("/v1/events", json=audit_event("e-1"), headers=api.headers("acme", "ingest"))
    headers = api.headers("acme", role)
    calls = {
        "ingest": lambda: api.client.post("/v1/events", json=audit_event("e-2"), headers=headers),
        "query": lambda: api.client.get("/v1/events", headers=headers),
        "read": lambda: api.client.get("/v1/events/e-1", headers=headers),
        "export": lambda: api.client.get("/v1/events/export", headers=headers),
        "verify": lambda: api.client.get("/v1/verify", headers=headers),
        "keys": lambda: api.client.get("/v1/keys", headers=headers),
    }
    for name, call in calls.items():
        status = call().status_code
        assert (status < 400) == (name in allowed), f"{role} {name}: {status}"
        if name not in allowed:
            assert status == 403


def test_an_expired_key_gets_401(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    _, headers = api.key("acme", "analyst", expires_at=expires)
    assert api.client.get("/v1/events", headers=headers).status_code == 200
    later = expires + timedelta(seconds=1)
    monkeypatch.setattr(keys_module, "_now", lambda: later)
    response = api.client.get("/v1/events", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_a_key_cannot_be_made_already_expired(api: Api) -> None:
    _, admin = api.key("acme", "admin")
    response = api.client.post(
        "/v1/keys",
        json={"tenant": "acme", "roles": ["analyst"], "expires_at": "2001-01-01T00:00:00Z"},
        headers=admin,
    )
    assert response.status_code == 422
    assert response.json()["problems"][0]["field"] == "expires_at"


def test_a_key_limited_to_networks_is_refused_elsewhere(open_api: OpenApi) -> None:
    inside = open_api(client=("10.1.2.3", 40000))
    _, headers = inside.key("acme", "analyst", networks=["10.0.0.0/8", "2001:db8::/32"])
    assert inside.client.get("/v1/events", headers=headers).status_code == 200
    outside = open_api(client=("192.0.2.7", 40000))
    response = outside.client.get("/v1/events", headers=headers)
    assert response.status_code == 403
    assert "192.0.2.7" in response.json()["detail"]


def test_a_revoked_key_is_refused_at_once(api: Api) -> None:
    key, headers = api.key("acme", "analyst")
    _, admin = api.key("acme", "admin")
    assert api.client.get("/v1/events", headers=headers).status_code == 200
    revoked = api.client.delete(f"/v1/keys/{key.key_id}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    response = api.client.get("/v1/events", headers=headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_an_admin_creates_lists_and_revokes_keys_over_http(api: Api) -> None:
    admin_key, admin = api.key("acme", "admin")
    created = api.client.post(
        "/v1/keys",
        json={"tenant": "acme", "roles": ["ingest"], "networks": ["10.0.0.0/8"]},
        headers=admin,
    )
    assert created.status_code == 201
    body = created.json()
    token = body["token"]
    assert token.startswith(f"vgl_{body['key']['key_id']}_")
    listed = api.client.get("/v1/keys", params={"tenant": "acme"}, headers=admin).json()
    assert [k["key_id"] for k in listed] == [admin_key.key_id, body["key"]["key_id"]]
    assert "token" not in listed[0]
    assert token not in str(listed)
    assert api.client.delete("/v1/keys/nope", headers=admin).status_code == 404
    bad_role = api.client.post(
        "/v1/keys", json={"tenant": "acme", "roles": ["root"]}, headers=admin
    )
    assert bad_role.status_code == 422
    bad_tenant = api.client.post(
        "/v1/keys", json={"tenant": "acme\n", "roles": ["analyst"]}, headers=admin
    )
    assert bad_tenant.status_code == 422
    assert "tenant" in bad_tenant.text
