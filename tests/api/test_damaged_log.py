"""Over HTTP, a log whose Opened event was deleted is reported by /v1/verify, and a server
started afterwards refuses to append to it with a detail that says what to run."""

from __future__ import annotations

from tests.api.conftest import OpenApi
from tests.events import audit_event, audit_events


def test_a_log_without_its_opened_event_is_reported_and_refuses_appends(
    open_api: OpenApi,
) -> None:
    before = open_api()
    headers = before.headers("acme", "ingest", "auditor")
    assert (
        before.client.post("/v1/events", json=audit_events(3), headers=headers).status_code == 201
    )
    before.store.delete_seqs("acme", -1)
    api = open_api()  # a server started after the damage, with nothing cached

    refused = api.client.post("/v1/events", json=audit_event("late"), headers=headers)
    verified = api.client.get("/v1/verify", headers=headers)

    assert refused.status_code == 500
    assert "vigil verify --tenant acme" in refused.json()["detail"]
    assert verified.status_code == 200
    assert (verified.json()["ok"], verified.json()["reason"]) == (False, "opened_missing")
    assert api.store.stored_versions("acme") == [1, 2, 3]
    [recorded] = [r for r in api.trail("vigil-system") if r["action"] == "audit.verify"]
    assert recorded["metadata"]["tenant"] == "acme"
    assert recorded["metadata"]["tenant_log_damaged"] is True
