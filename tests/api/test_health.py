"""/healthz, /readyz (fails when the database is unreachable) and /metrics."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.conftest import Api
from tests.events import audit_event, audit_events
from tests.stores import PostgresStore


def test_healthz_answers_without_a_key(api: Api) -> None:
    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_readyz_reports_the_database_ready_and_each_followers_lag(api: Api) -> None:
    api.client.post("/v1/events", json=audit_events(3), headers=api.headers("acme", "ingest"))
    api.catch_up()
    response = api.client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    readmodel = body["followers"]["readmodel"]
    assert (readmodel["kind"], readmodel["lag_events"], readmodel["stopped_at"]) == (
        "view",
        0,
        None,
    )
    assert readmodel["leader"] == "here"


def test_metrics_count_ingested_events_latencies_and_errors(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    api.client.post("/v1/events", json=audit_events(3), headers=headers)
    api.client.post("/v1/events", json=audit_event("one"), headers=headers)
    api.client.post("/v1/events", json=audit_event("bad", action="NOPE"), headers=headers)
    api.client.get("/v1/events")
    text = api.client.get("/metrics").text
    assert 'vigil_events_ingested_total{mode="batch"} 3.0' in text
    assert 'vigil_events_ingested_total{mode="single"} 1.0' in text
    assert 'vigil_ingest_errors_total{reason="invalid"} 1.0' in text
    assert 'vigil_http_requests_total{method="POST",route="/v1/events",status="422"} 1.0' in text
    assert 'vigil_http_request_duration_seconds_count{method="POST",route="/v1/events"} 3.0' in text
    assert 'vigil_auth_failures_total{status="401"} 1.0' in text
    # Two writes of events, and the record of the 401 (access.unauthenticated).
    assert "vigil_group_commit_requests_count 3.0" in text
    assert 'vigil_follower_lag_events{follower="readmodel"}' in text
    assert 'vigil_follower_lag_seconds{follower="readmodel"}' in text
    assert 'vigil_follower_errors_total{follower="readmodel"} 0.0' in text


class Proxy:
    """A TCP forwarder to PostgreSQL that the test can cut, as a network outage would."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture
def proxied_postgres(postgres_store: PostgresStore) -> Iterator[tuple[PostgresStore, Proxy]]:
    url = urlsplit(postgres_store.url)
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 5432)
    netloc = f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}"
    postgres_store.url = urlunsplit(url._replace(netloc=netloc))
    yield postgres_store, proxy
    proxy.close()


def test_readyz_fails_when_the_database_is_unreachable(
    proxied_postgres: tuple[PostgresStore, Proxy],
) -> None:
    store, proxy = proxied_postgres
    settings = store.settings(postgres_pool_size=1, readmodel_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        proxy.cut()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "database unavailable" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200
