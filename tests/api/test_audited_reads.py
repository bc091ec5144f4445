"""Every query, export, read, verification and key change is itself an audit event."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.events import audit_event


def test_reads_and_key_changes_are_recorded_with_the_key_as_actor(api: Api) -> None:
    api.client.post("/v1/events", json=[audit_event("e-1")], headers=api.headers("acme", "ingest"))
    api.catch_up()
    auditor, headers = api.key("acme", "auditor")
    admin, admin_headers = api.key("acme", "admin")
    headers = {**headers, "X-Request-ID": "req-abc", "User-Agent": "auditor-console/1"}
    api.client.get("/v1/events", params={"actor_id": "u-1001"}, headers=headers)
    api.client.get("/v1/events/export", params={"format": "csv"}, headers=headers)
    api.client.get("/v1/events/e-1", headers=headers)
    api.client.get("/v1/verify", headers=headers)
    created = api.client.post(
        "/v1/keys", json={"tenant": "acme", "roles": ["analyst"]}, headers=admin_headers
    ).json()
    api.client.delete(f"/v1/keys/{created['key']['key_id']}", headers=admin_headers)

    audited = [r for r in api.trail("acme") if r["source"] == "api"]
    assert [r["action"] for r in audited] == [
        "audit.query",
        "audit.export",
        "audit.read",
        "audit.verify",
        "api_key.create",
        "api_key.revoke",
    ]
    assert {r["actor"]["type"] for r in audited} == {"api_key"}
    assert [r["actor"]["id"] for r in audited] == [auditor.key_id] * 4 + [admin.key_id] * 2
    assert audited[0]["metadata"]["filters"]["actor_id"] == "u-1001"
    assert {r["request_id"] for r in audited[:4]} == {"req-abc"}
    assert {r["actor"]["user_agent"] for r in audited[:4]} == {"auditor-console/1"}
    assert audited[4]["target"] == {"type": "api_key", "id": created["key"]["key_id"], "name": None}

    api.catch_up()
    visible = api.client.get("/v1/events", params={"action": "audit.*"}, headers=headers).json()[
        "items"
    ]
    assert "audit.query" in [item["action"] for item in visible]


def test_refusals_are_recorded_in_the_key_s_own_tenant(api: Api) -> None:
    api.client.post("/v1/events", json=audit_event("g-1"), headers=api.headers("globex", "ingest"))
    analyst, headers = api.key("acme", "analyst")
    fenced, fenced_headers = api.key("acme", "ingest", networks=["203.0.113.0/24"])
    headers = {**headers, "X-Request-ID": "req-denied"}

    wrong_role = api.client.post("/v1/events", json=audit_event("a-1"), headers=headers)
    other_tenant = api.client.get("/v1/events", params={"tenant": "globex"}, headers=headers)
    wrong_network = api.client.post("/v1/events", json=audit_event("a-2"), headers=fenced_headers)
    assert [wrong_role.status_code, other_tenant.status_code, wrong_network.status_code] == [
        403,
        403,
        403,
    ]

    denied = [r for r in api.trail("acme") if r["action"] == "access.denied"]
    assert [(r["actor"]["id"], r["target"]["id"], r["outcome"]) for r in denied] == [
        (analyst.key_id, "POST /v1/events", "denied"),
        (analyst.key_id, "GET /v1/events", "denied"),
        (fenced.key_id, "POST /v1/events", "denied"),
    ]
    assert denied[0]["metadata"]["reason"] == wrong_role.json()["detail"]
    assert denied[0]["request_id"] == "req-denied"
    assert denied[1]["metadata"]["requested_tenant"] == "globex"
    assert "may not be used from" in denied[2]["metadata"]["reason"]
    # Nothing of the attempt lands in the tenant it was aimed at, and nothing was ingested.
    assert [r["id"] for r in api.trail("globex")] == ["g-1"]
    assert not [r for r in api.trail("acme") if r["id"] in ("a-1", "a-2")]
