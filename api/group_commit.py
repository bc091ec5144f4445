"""Group commit: writes that arrive together are recorded in one ledger transaction.

Each tenant has at most one ledger call in flight from this process. Requests that
arrive while it runs wait in the tenant's queue and go together in the next call, so
there is no added delay when traffic is light and one transaction per round trip, not
per request, when it is heavy. It also keeps concurrent batches of one tenant from
racing each other for the log's head (a lost race costs a reload and a re-hash).

Requests arrive prepared (validated, ids keyed) by ``Ledger.prepare``, outside the
queue: a malformed event fails its own request only, and preparing the next requests
overlaps the commit in flight. A batch request stays atomic: it is never split across
calls, and if a combined call fails on an id (reused with other content, or two
concurrent retries of one id), each request is recorded on its own, so the error
reaches its sender only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from audit_core import DuplicateEventIdError, InvalidEventError, Ledger, PreparedBatch, Record

Outcome = list[Record] | BaseException


@dataclass
class _Pending:
    batch: PreparedBatch
    future: asyncio.Future[list[Record]]


@dataclass
class GroupCommitter:
    ledger: Ledger
    max_events: int = 2000
    """Most events per combined call (a larger batch request goes alone)."""
    on_commit: Callable[[int], None] | None = None
    """Told how many requests each ledger call recorded (for metrics)."""
    _queues: dict[str, list[_Pending]] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def record(self, batch: PreparedBatch) -> list[Record]:
        """Record a prepared batch, with whatever else of its tenant is waiting."""
        tenant = batch.tenant
        future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, []).append(_Pending(batch, future))
        if tenant not in self._tasks:
            self._tasks[tenant] = asyncio.create_task(self._drain(tenant))
        return await future

    def _take_group(self, queue: list[_Pending]) -> list[_Pending]:
        size = len(queue[0].batch)
        taken = 1
        while taken < len(queue) and size + len(queue[taken].batch) <= self.max_events:
            size += len(queue[taken].batch)
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
                    outcomes = await run_in_threadpool(self._record_group, [p.batch for p in group])
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

    def _record_group(self, requests: list[PreparedBatch]) -> list[Outcome]:
        if len(requests) == 1:
            records = self.ledger.record_prepared(requests[0])
            self._committed(1)
            return [records]
        try:
            records = self.ledger.record_prepared(PreparedBatch.join(requests))
        except (DuplicateEventIdError, InvalidEventError):
            return [self._record_alone(batch) for batch in requests]
        self._committed(len(requests))
        outcomes: list[Outcome] = []
        start = 0
        for batch in requests:
            outcomes.append(records[start : start + len(batch)])
            start += len(batch)
        return outcomes

    def _record_alone(self, batch: PreparedBatch) -> Outcome:
        try:
            records = self.ledger.record_prepared(batch)
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
