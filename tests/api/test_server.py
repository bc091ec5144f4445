"""The app behind a real uvicorn server on a loopback port, spoken to over TCP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app, proxy_options
from api.keys import KeyStore
from tests.events import audit_event, audit_events
from tests.followers import wait_for
from tests.stores import Store


@contextlib.contextmanager
def running(store: Store, **fields: Any) -> Iterator[str]:
    """The app on a loopback port, configured as ``vigil serve`` configures uvicorn."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    settings = store.settings(readmodel_poll_seconds=0.05, key_cache_seconds=0, **fields)
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **proxy_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def server(store: Store) -> Iterator[tuple[str, Store]]:
    with running(store) as url:
        yield url, store


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


@pytest.mark.parametrize(
    ("trusted_proxies", "status"),
    [("", 403), ("127.0.0.1", 201), ("10.0.0.0/8, 127.0.0.0/8", 201)],
)
def test_a_forwarded_address_counts_only_from_a_trusted_proxy(
    store: Store, trusted_proxies: str, status: int
) -> None:
    keys = KeyStore(store.settings().ledger_env())
    try:
        _, token = keys.create("acme", ["ingest"], networks=["203.0.113.0/24"])
    finally:
        keys.close()
    with (
        running(store, trusted_proxies=trusted_proxies) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        answer = client.post(
            "/v1/events",
            json=audit_event("fwd-1"),
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.9"},
        )
    assert answer.status_code == status, answer.text


def _workers(pid: int) -> list[int]:
    """The follower worker processes that ``pid`` started (Linux /proc), not the
    resource tracker that multiprocessing starts beside them."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            for child in children.read().split():
                with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as cmd:
                    if b"resource_tracker" not in cmd.read():
                        found.append(int(child))
    return found


def test_vigil_serve_starts_its_follower_worker_again_when_it_dies(
    sqlite_store: Store, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    keys = KeyStore(sqlite_store.settings().ledger_env())
    _, token = keys.create("acme", ["ingest", "analyst"])
    keys.close()
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": sqlite_store.url,
        "VIGIL_PORT": str(port),
        "VIGIL_READMODEL_POLL_SECONDS": "0.05",
    }
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "vigil"), "serve"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}

    def indexed(count: int) -> bool:
        # Filtered: each query is itself recorded (audit.query).
        query = {"action": "conversation.assign"}
        response = httpx.get(f"{url}/v1/events", params=query, headers=headers, timeout=5)
        return response.status_code == 200 and len(response.json()["items"]) == count

    try:
        wait_for(lambda: _reachable(url), "vigil serve never answered")
        [worker] = wait_for(lambda: _workers(serve.pid), "no follower worker started")
        httpx.post(f"{url}/v1/events", json=audit_events(3), headers=headers, timeout=10)
        wait_for(lambda: indexed(3), "the read model never caught up")

        os.kill(worker, signal.SIGKILL)
        replacement = wait_for(
            lambda: [pid for pid in _workers(serve.pid) if pid != worker],
            "the follower worker was not started again",
        )
        assert len(replacement) == 1
        httpx.post(f"{url}/v1/events", json=audit_event("later"), headers=headers, timeout=10)
        wait_for(lambda: indexed(4), "the new worker never caught up")
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def _reachable(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
