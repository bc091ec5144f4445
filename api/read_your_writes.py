"""Read-your-writes: a query that names a record it must see waits, bounded, for the
read model to hold it.

Queries are answered by the read model, which follows the ledger and trails it by its
lag (milliseconds when idle; more under load or while it rebuilds). A client that has
just recorded an event and wants it in its next query sends the position the write
answered with (``Vigil-Position``: the seq of the write's last record in its tenant's
log) as ``min_position``; the query then waits until the read model holds that record,
and so every earlier one of the tenant, for at most
``VIGIL_READ_YOUR_WRITES_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, status
from starlette.concurrency import run_in_threadpool

from api.services import Services
from audit_core.readmodel import InvalidQueryError, TrailQuery

POSITION_HEADER = "Vigil-Position"
"""On a write's answer: the seq of its last record in the tenant's log."""

_POLL_SECONDS = 0.01


def position_header(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The header that tells the writer which position to wait for."""
    return {POSITION_HEADER: str(max(record["seq"] for record in records))}


async def wait_for_position(services: Services, query: TrailQuery) -> None:
    """Return once the read model holds the tenant's record at ``query.min_seq``;
    422 if the tenant's log has no such record, 503 if the wait runs out."""
    seq = query.min_seq
    if seq is None:
        return
    view, tenant = services.view, query.tenant
    if await run_in_threadpool(view.holds, tenant, seq):
        return
    size = await run_in_threadpool(services.ledger.size, tenant)
    if seq >= size:
        raise InvalidQueryError(
            "min_position",
            f"{seq} is beyond the tenant's log, which holds {size} records "
            "(give the Vigil-Position header of a write's answer)",
        )
    timeout = services.settings.read_your_writes_timeout_seconds
    deadline = time.monotonic() + timeout
    if services.worker is not None:
        services.worker.nudge()
    while time.monotonic() < deadline:
        await asyncio.sleep(_POLL_SECONDS)
        if await run_in_threadpool(view.holds, tenant, seq):
            return
    raise HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"min_position: the read model has not reached record {seq} of {tenant} within "
        f"{timeout:g} s (VIGIL_READ_YOUR_WRITES_TIMEOUT_SECONDS); it is behind the "
        "ledger (see /readyz for its lag): retry later",
        headers={"Retry-After": "1"},
    )
