"""A database outage during ingest: a write in flight ends within VIGIL_WRITE_TIMEOUT_SECONDS
with 503, and a retry with the same event id records it once."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import KeyStore
from tests.api.test_health import Proxy, proxied_postgres  # noqa: F401  (the fixture)
from tests.events import audit_event
from tests.stores import PostgresStore


def test_a_write_during_an_outage_answers_503_and_its_retry_records_it_once(
    proxied_postgres: tuple[PostgresStore, Proxy],  # noqa: F811
) -> None:
    store, proxy = proxied_postgres
    settings = store.settings(
        write_timeout_seconds=1, postgres_connect_timeout_seconds=1, readmodel_follow=False
    )
    keys = KeyStore(settings.ledger_env())
    _, token = keys.create("acme", ["ingest"])
    keys.close()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/events", json=audit_event("before"), headers=headers).is_success
        proxy.cut()  # the database is gone for this process

        refused = client.post("/v1/events", json=audit_event("during"), headers=headers)
        assert refused.status_code == 503
        assert "retry with the same event ids" in refused.json()["detail"]

        proxy.open = True  # it returns
        retried = client.post("/v1/events", json=audit_event("during"), headers=headers)
        for _ in range(20):
            if retried.is_success:
                break
            retried = client.post("/v1/events", json=audit_event("during"), headers=headers)
        assert retried.is_success, retried.text

    ledger = store.open_ledger()
    assert [record["id"] for record in ledger.read("acme")] == ["before", "during"]
