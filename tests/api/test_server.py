"""The app behind a real uvicorn server on a loopback port, spoken to over TCP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.keys import KeyStore
from tests.events import audit_event, audit_events
from tests.stores import Store


@pytest.fixture
def server(store: Store) -> Iterator[tuple[str, Store]]:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    settings = store.settings(readmodel_poll_seconds=0.05, key_cache_seconds=0)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(timeout=30)


def test_events_go_in_and_come_out_over_a_real_socket(server: tuple[str, Store]) -> None:
    url, store = server
    keys = KeyStore(store.settings().ledger_env())
    try:
        _, token = keys.create("acme", ["ingest", "auditor"])
    finally:
        keys.close()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        single = client.post("/v1/events", json=audit_event("s-1"))
        assert single.status_code == 201
        batch = client.post("/v1/events", json=audit_events(10))
        assert [r["seq"] for r in batch.json()["records"]] == list(range(1, 11))
        # The read model is eventually consistent: poll until the follower has caught up.
        deadline = time.monotonic() + 30
        while True:
            items = client.get("/v1/events", params={"source": "console"}).json()["items"]
            if len(items) == 11 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [i["seq"] for i in items] == list(range(10, -1, -1))
        assert client.get("/v1/events/evt-3").json()["seq"] == 4
        assert client.get("/v1/events", headers={"Authorization": "Bearer x"}).status_code == 401
