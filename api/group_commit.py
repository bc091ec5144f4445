"""Group commit: writes that arrive together are recorded in one ledger transaction.

Each tenant has at most one ledger call in flight from this process. Requests that
arrive while it runs wait in the tenant's queue and go together in the next call, so
there is no added delay when traffic is light and one transaction per round trip, not
per request, when it is heavy. It also keeps concurrent batches of one tenant from
racing each other for the log's head (a lost race costs a reload and a re-hash).

A batch request stays atomic: it is never split across calls, and if a combined call
fails on an id (reused with other content, or two concurrent retries of one id) or on
validation, each request is recorded on its own, so the error reaches its sender only.
Callers validate single events first, so a malformed one never costs its group that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from audit_core import DuplicateEventIdError, InvalidEventError, Ledger, Record

Outcome = list[Record] | BaseException


@dataclass
class _Pending:
    events: Sequence[Mapping[str, Any]]
    future: asyncio.Future[list[Record]]


@dataclass
class GroupCommitter:
    ledger: Ledger
    max_events: int = 500
    """Most events per combined call (a larger batch request goes alone)."""
    on_commit: Callable[[int], None] | None = None
    """Told how many requests each ledger call recorded (for metrics)."""
    _queues: dict[str, list[_Pending]] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def record(self, tenant: str, event: Mapping[str, Any]) -> Record:
        return (await self.record_batch(tenant, [event]))[0]

    async def record_batch(self, tenant: str, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, []).append(_Pending(events, future))
        if tenant not in self._tasks:
            self._tasks[tenant] = asyncio.create_task(self._drain(tenant))
        return await future

    def _take_group(self, queue: list[_Pending]) -> list[_Pending]:
        size = len(queue[0].events)
        taken = 1
        while taken < len(queue) and size + len(queue[taken].events) <= self.max_events:
            size += len(queue[taken].events)
            taken += 1
        group = queue[:taken]
        del queue[:taken]
        return group

    async def _drain(self, tenant: str) -> None:
        try:
            queue = self._queues[tenant]
            while queue:
                group = self._take_group(queue)
                try:
                    outcomes = await run_in_threadpool(
                        self._record_group, tenant, [p.events for p in group]
                    )
                except BaseException as error:  # storage down: every waiter hears it
                    outcomes = [error] * len(group)
                for pending, outcome in zip(group, outcomes, strict=True):
                    if pending.future.done():  # the caller went away
                        continue
                    if isinstance(outcome, BaseException):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome)
        finally:
            del self._tasks[tenant]
            if not self._queues.get(tenant):
                self._queues.pop(tenant, None)

    def _record_group(
        self, tenant: str, requests: list[Sequence[Mapping[str, Any]]]
    ) -> list[Outcome]:
        if len(requests) == 1:
            records = self.ledger.record(tenant, requests[0])
            self._committed(1)
            return [records]
        combined = [event for events in requests for event in events]
        try:
            records = self.ledger.record(tenant, combined)
        except (DuplicateEventIdError, InvalidEventError):
            return [self._record_alone(tenant, events) for events in requests]
        self._committed(len(requests))
        outcomes: list[Outcome] = []
        start = 0
        for events in requests:
            outcomes.append(records[start : start + len(events)])
            start += len(events)
        return outcomes

    def _record_alone(self, tenant: str, events: Sequence[Mapping[str, Any]]) -> Outcome:
        try:
            records = self.ledger.record(tenant, events)
        except Exception as error:
            return error
        self._committed(1)
        return records

    def _committed(self, requests: int) -> None:
        if self.on_commit is not None:
            self.on_commit(requests)

    async def aclose(self) -> None:
        """Let the commits in flight finish."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
