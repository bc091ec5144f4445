"""Every query, export, read, verification and key change is itself an audit event."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.events import audit_event


def test_reads_and_key_changes_are_recorded_with_the_key_as_actor(api: Api) -> None:
    api.client.post("/v1/events", json=[audit_event("e-1")], headers=api.headers("acme", "ingest"))
    api.catch_up()
    auditor, headers = api.key("acme", "auditor")
    admin, admin_headers = api.key("acme", "admin")
    headers = {**headers, "X-Request-ID": "req-abc"}
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
    assert audited[0]["request_id"] == "req-abc"
    assert audited[4]["target"] == {"type": "api_key", "id": created["key"]["key_id"], "name": None}

    api.catch_up()
    visible = api.client.get("/v1/events", params={"action": "audit.*"}, headers=headers).json()[
        "items"
    ]
    assert "audit.query" in [item["action"] for item in visible]
