"""The composition root: builds the ledger, followers, key store and group committer.

Also the one helper that records the API's own actions (queries, exports, key changes)
as audit events, so that the auditors are audited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.auth_audit import SYSTEM_TENANT, FailedAuthAudit, record_pending
from api.followers import build_followers
from api.group_commit import GroupCommitter, WriteTimeoutError
from api.keys import ApiKey, KeyStore
from api.metrics import Metrics
from api.settings import Settings
from audit_core import DamagedLogError, Ledger, PreparedBatch, Record
from audit_core.followers import (
    Follower,
    FollowerRunner,
    FollowerStatus,
    FollowerStore,
    Worker,
    follower_status,
    open_store,
)
from audit_core.readmodel import TrailQuery, TrailView, trail_view_class
from audit_core.schema import format_timestamp


@dataclass
class Services:
    settings: Settings
    ledger: Ledger
    view: TrailView
    keys: KeyStore
    committer: GroupCommitter
    metrics: Metrics
    store: FollowerStore
    followers: list[Follower]
    """Every follower the settings enable, for their status; they run in this process
    only when ``worker`` is set (``VIGIL_READMODEL_FOLLOW``)."""
    worker: Worker | None = None
    _key_cache: dict[str, tuple[float, ApiKey | None]] = field(default_factory=dict)
    _known_tenants: set[str] = field(default_factory=set)
    auth_audit: FailedAuthAudit | None = None
    """Records failed authentications, rate-limited (``api.auth_audit``)."""
    closers: list[Callable[[], None]] = field(default_factory=list)
    """Called first on close: what a router built on first use (the incidents desk)."""

    def close(self) -> None:
        for closer in self.closers:
            closer()
        if self.worker is not None:
            self.worker.stop()
        for follower in self.followers:
            follower.close()
        if self.auth_audit is not None:
            record_pending(
                self.auth_audit, lambda tenant, event: self.ledger.record(tenant, [event])
            )
        self.keys.close()
        self.store.close()
        self.ledger.close()

    def has_tenant(self, tenant: str) -> bool:
        """Whether the tenant has a log; a tenant once seen is not looked up again
        (logs are never removed, short of tampering that verification reports)."""
        if tenant in self._known_tenants:
            return True
        if not self.ledger.has_log(tenant):
            return False
        self._known_tenants.add(tenant)
        return True

    def follower_statuses(self) -> list[FollowerStatus]:
        return [follower_status(self.ledger, f, self.store) for f in self.followers]

    def catch_up(self, timeout: float = 10.0) -> None:
        """Wait until the followers running in this process have processed what the
        ledger holds now."""
        if self.worker is not None:
            for runner in self.worker.runners:
                runner.catch_up(timeout)

    # -- keys -------------------------------------------------------------------------

    async def authenticate(self, token: str) -> ApiKey | None:
        ttl = self.settings.key_cache_seconds
        if ttl > 0:
            cached = self._key_cache.get(token)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
        key = await run_in_threadpool(self.keys.authenticate, token)
        if ttl > 0:
            if len(self._key_cache) > 10_000:
                self._key_cache.clear()
            self._key_cache[token] = (time.monotonic() + ttl, key)
        return key

    def forget_key(self, key_id: str) -> None:
        """Drop a key from this process's cache (after a revocation)."""
        for token in [t for t, (_, k) in self._key_cache.items() if k and k.key_id == key_id]:
            del self._key_cache[token]

    # -- recording --------------------------------------------------------------------

    async def record(self, batch: PreparedBatch) -> list[Record]:
        # Shielded: the write goes on when the client has its answer, so that a retry
        # with the same ids finds it recorded rather than racing it.
        try:
            records = await asyncio.wait_for(
                asyncio.shield(self.committer.record(batch)), self.settings.write_timeout_seconds
            )
        except TimeoutError:
            raise WriteTimeoutError(self.settings.write_timeout_seconds) from None
        if self.worker is not None:
            self.worker.nudge()
        return records

    # -- reading ----------------------------------------------------------------------

    def query_page(self, query: TrailQuery) -> tuple[list[Record], str | None]:
        """A page of a trail query and its next cursor: the read model finds the seqs,
        the ledger holds the records."""
        page = self.view.query(query)
        return self.ledger.records_at(query.tenant, page.seqs), page.next_cursor

    def export(self, query: TrailQuery) -> Iterator[Record]:
        """Every record a trail query matches, read a page at a time."""
        for seqs in self.view.iter_seqs(query):
            yield from self.ledger.records_at(query.tenant, seqs)

    async def audit(
        self,
        key: ApiKey,
        tenant: str,
        action: str,
        *,
        target: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        outcome: str = "success",
    ) -> Record:
        """Record an action taken through the API, with the key as its actor."""
        actor: dict[str, Any] = {"id": key.key_id, "type": "api_key"}
        if ip is not None:
            actor["ip"] = ip
        if user_agent:
            actor["user_agent"] = user_agent[:1024]
        event: dict[str, Any] = {
            "occurred_at": _now(),
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "source": "api",
            "metadata": metadata or {},
        }
        if request_id:
            event["request_id"] = request_id[:256]
        try:
            [record] = await self.record(self.ledger.prepare(tenant, [event]))
        except DamagedLogError:
            # A damaged log takes no append, yet the verification that finds the damage
            # must answer, and be recorded: in Vigil's own log, naming the tenant.
            event["metadata"] = {**event["metadata"], "tenant": tenant, "tenant_log_damaged": True}
            [record] = await self.record(self.ledger.prepare(SYSTEM_TENANT, [event]))
        return record


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def build_services(settings: Settings) -> Services:
    # VIGIL_POSTGRES_CONNECT_TIMEOUT_SECONDS (5 s) keeps readiness and requests
    # answering 503 within seconds when the server is unreachable.
    env = settings.ledger_env()
    ledger = Ledger(env, settings.limits())
    try:
        store = open_store(env)
    except BaseException:
        ledger.close()
        raise
    try:
        view = store.view_recorder(trail_view_class(env))
        keys = KeyStore(env)
        followers = build_followers(settings, ledger, store)
    except BaseException:
        store.close()
        ledger.close()
        raise
    metrics = Metrics()
    committer = GroupCommitter(
        ledger,
        settings.group_commit_max_events,
        on_commit=metrics.group_size.observe,
    )
    services = Services(settings, ledger, view, keys, committer, metrics, store, followers)

    async def record_failure(tenant: str, event: dict[str, Any]) -> None:
        try:
            await services.record(ledger.prepare(tenant, [event]))
        except DamagedLogError:  # as Services.audit does
            event["metadata"] = {**event["metadata"], "tenant": tenant, "tenant_log_damaged": True}
            await services.record(ledger.prepare(SYSTEM_TENANT, [event]))

    services.auth_audit = FailedAuthAudit(
        record_failure,
        settings.auth_failure_audit_limit,
        settings.auth_failure_audit_window_seconds,
    )
    metrics.watch_followers(services.follower_statuses)
    if settings.readmodel_follow:
        runners = [
            FollowerRunner(ledger, follower, store, poll_interval=settings.readmodel_poll_seconds)
            for follower in followers
        ]
        services.worker = Worker(ledger, store, runners)
        services.worker.start()
    return services
