"""Concurrent single-event requests share ledger transactions; errors stay their own."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from api.group_commit import GroupCommitter
from audit_core import PreparedBatch
from tests.api.conftest import Api
from tests.events import audit_event


class GatedCommitter:
    """Counts the events of each group the committer records; the first group waits
    until the test opens the gate."""

    def __init__(self, committer: GroupCommitter):
        self.committer = committer
        self.original = committer._record_group
        self.calls: list[int] = []
        self.gate = threading.Event()
        committer._record_group = self.record_group  # type: ignore[method-assign]

    def record_group(
        self, requests: list[PreparedBatch], on_chained: Callable[[], None]
    ) -> list[Any]:
        self.calls.append(sum(len(batch) for batch in requests))
        if len(self.calls) == 1:
            self.gate.wait(timeout=30)
        return self.original(requests, on_chained)

    def waiting(self, api: Api) -> int:
        """Events in the gated first group plus those queued behind it."""
        return sum(self.calls[:1]) + len(api.services.committer._queues.get("acme", []))


async def _post_concurrently(
    api: Api,
    gated: GatedCommitter,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
    expect_refused: int = 0,
) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=api.client.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
        tasks = [
            asyncio.create_task(client.post("/v1/events", json=body, headers=headers))
            for body in bodies
        ]
        # Open the gate once every other request waits behind the first commit.
        deadline = time.monotonic() + 30
        while gated.waiting(api) < len(bodies) - expect_refused:
            assert time.monotonic() < deadline, "the requests never queued behind the gate"
            await asyncio.sleep(0.01)
        gated.gate.set()
        return list(await asyncio.gather(*tasks))


def test_concurrent_single_events_are_combined_into_few_transactions(api: Api) -> None:
    gated = GatedCommitter(api.services.committer)
    headers = api.headers("acme", "ingest")
    bodies = [audit_event(f"c-{i}") for i in range(40)]
    responses = asyncio.run(_post_concurrently(api, gated, bodies, headers))
    assert [r.status_code for r in responses] == [201] * 40
    seqs = sorted(r.json()["seq"] for r in responses)
    assert seqs == list(range(40))
    assert [r.json()["id"] for r in responses] == [b["id"] for b in bodies]
    # The first arrivals, then everyone queued behind them (or all of them at once, if
    # they all queued before the first group was taken).
    assert len(gated.calls) in (1, 2)
    assert sum(gated.calls) == 40
    assert api.size("acme") == 40


def test_one_conflicting_event_fails_alone_in_its_group(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    api.client.post("/v1/events", json=audit_event("taken"), headers=headers)
    gated = GatedCommitter(api.services.committer)
    bodies = [audit_event("first")] + [audit_event(f"ok-{i}") for i in range(5)]
    bodies.insert(3, audit_event("taken", outcome="failure"))  # same id, other content
    bodies.insert(4, audit_event("ok-1"))  # a concurrent retry of ok-1
    responses = asyncio.run(_post_concurrently(api, gated, bodies, headers))
    statuses = [r.status_code for r in responses]
    assert statuses[3] == 409
    assert responses[3].json()["problems"][0]["field"] == "id"
    assert all(status in (200, 201) for i, status in enumerate(statuses) if i != 3)
    ok_1 = [r.json() for r, b in zip(responses, bodies, strict=True) if b["id"] == "ok-1"]
    assert ok_1[0] == ok_1[1]
    assert api.size("acme") == 1 + 1 + 5


def test_a_malformed_event_never_joins_a_group(api: Api) -> None:
    gated = GatedCommitter(api.services.committer)
    headers = api.headers("acme", "ingest")
    bodies = [audit_event(f"g-{i}") for i in range(6)]
    bad = audit_event("bad", action="NOPE")
    bodies.insert(2, bad)

    responses = asyncio.run(_post_concurrently(api, gated, bodies, headers, expect_refused=1))
    assert responses[2].status_code == 422
    assert [r.status_code for i, r in enumerate(responses) if i != 2] == [201] * 6
    assert len(gated.calls) in (1, 2)
    assert sum(gated.calls) == 6
