"""Failed authentication, audited (PCI DSS 10.2.1.4: invalid logical access attempts).

Every 401 is recorded: in the tenant of the key the token names when that key exists
(a wrong secret, or an expired or revoked key), and otherwise (no key, a malformed
token, a key id nobody issued) in the reserved tenant ``vigil-system``, which no
client key can belong to and nothing can be ingested into.

A flood of bad tokens must not flood the ledger: each log takes at most ``limit``
records per ``window`` seconds; the rest are counted, and the count is recorded as one
``access.unauthenticated.suppressed`` event when the window ends (or when the process
stops), so the ledger says how many attempts it did not itemise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from audit_core.schema import format_timestamp

SYSTEM_TENANT = "vigil-system"
"""The log of failed authentications that no key's tenant can hold. Reserved: no key is
made for it and no event is ingested into it; an operator key reads it with
``?tenant=vigil-system`` and ``vigil verify`` checks it like every log."""

log = structlog.get_logger("vigil.auth")

Record = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Records one event in a tenant's log."""


@dataclass
class _Window:
    started: float
    started_at: str
    recorded: int = 0
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = None
    routes: dict[str, int] = field(default_factory=dict)


class FailedAuthAudit:
    """Records failed authentications, at most ``limit`` per log per ``window`` seconds."""

    def __init__(self, record: Record, limit: int, window: float):
        self._record = record
        self.limit = limit
        self.window = window
        self._windows: dict[str, _Window] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def failed(self, tenant: str, event: dict[str, Any]) -> None:
        """Record ``event`` (an ``access.unauthenticated`` event) in ``tenant``, or count
        it if that log has had its share of this window."""
        now = time.monotonic()
        window = self._windows.get(tenant)
        if window is None or now - window.started >= self.window:
            if window is not None:
                await self._flush(tenant, window)
            window = self._windows[tenant] = _Window(now, _timestamp())
        if window.recorded < self.limit:
            window.recorded += 1
            await self._safely(tenant, event)
            return
        window.suppressed += 1
        route = event["target"]["id"]
        window.routes[route] = window.routes.get(route, 0) + 1
        if window.timer is None:
            loop = asyncio.get_running_loop()
            window.timer = loop.call_later(
                max(0.0, window.started + self.window - now), self._flush_later, tenant, window
            )

    def _flush_later(self, tenant: str, window: _Window) -> None:
        task = asyncio.ensure_future(self._flush(tenant, window))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, tenant: str, window: _Window) -> None:
        event = self.suppressed_event(window)
        if event is not None:
            await self._safely(tenant, event)

    def suppressed_event(self, window: _Window) -> dict[str, Any] | None:
        """The event that records how many attempts a window did not itemise (None if
        none); taking it empties the window's count, so it is recorded once."""
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        if not window.suppressed:
            return None
        count, routes = window.suppressed, dict(sorted(window.routes.items())[:20])
        window.suppressed, window.routes = 0, {}
        return {
            "occurred_at": _timestamp(),
            "actor": {"id": "vigil", "type": "vigil"},
            "action": "access.unauthenticated.suppressed",
            "target": {"type": "api", "id": "authentication"},
            "outcome": "failure",
            "source": "system",
            "metadata": {
                "suppressed": count,
                "recorded": window.recorded,
                "window_started_at": window.started_at,
                "window_seconds": self.window,
                "routes": routes,
            },
        }

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """The suppressed counts not yet recorded, as (tenant, event): what a process
        that stops must still record."""
        events = []
        for tenant, window in self._windows.items():
            event = self.suppressed_event(window)
            if event is not None:
                events.append((tenant, event))
        return events

    async def _safely(self, tenant: str, event: dict[str, Any]) -> None:
        try:
            await self._record(tenant, event)
        except Exception as error:  # the 401 stands; only its record is missing
            log.warning(
                "failed authentication not recorded",
                tenant=tenant,
                action=event["action"],
                error=repr(error),
            )


def failed_auth_event(
    reason: str,
    route: str,
    path: str,
    *,
    key_id: str | None,
    presented_key_id: str | None,
    ip: str | None,
    user_agent: str | None,
    request_id: str | None,
) -> dict[str, Any]:
    """The ``access.unauthenticated`` event of one 401; never holds the token."""
    actor: dict[str, Any] = {"id": key_id or "unknown", "type": "api_key"}
    if ip is not None:
        actor["ip"] = ip
    if user_agent:
        actor["user_agent"] = user_agent[:1024]
    metadata: dict[str, Any] = {"reason": reason, "path": path[:1024]}
    if presented_key_id is not None and key_id is None:
        metadata["presented_key_id"] = presented_key_id
    event: dict[str, Any] = {
        "occurred_at": _timestamp(),
        "actor": actor,
        "action": "access.unauthenticated",
        "target": {"type": "api_route", "id": route[:256]},
        "outcome": "failure",
        "source": "api",
        "metadata": metadata,
    }
    if request_id:
        event["request_id"] = request_id[:256]
    return event


def _timestamp() -> str:
    return format_timestamp(datetime.now(UTC))


def record_pending(audit: FailedAuthAudit, record: Callable[[str, dict[str, Any]], Any]) -> None:
    """Record what ``audit`` still holds, synchronously (the event loop may be gone)."""
    for tenant, event in audit.pending():
        try:
            record(tenant, event)
        except Exception as error:  # stopping goes on; the log says what is missing
            log.warning(
                "suppressed failed authentications not recorded",
                tenant=tenant,
                suppressed=event["metadata"]["suppressed"],
                error=repr(error),
            )
