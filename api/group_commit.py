"""Group commit: writes that arrive together are recorded in one ledger transaction.

Requests that arrive while a tenant's ledger call runs wait in the tenant's queue and
go together in the next call, so there is no added delay when traffic is light and one
transaction per round trip, not per request, when it is heavy. The next call starts as
soon as the running one has chained its batch in memory: it hashes its batch after that
one while that one commits (``Ledger.record_prepared`` stores it only once that one is
stored). Calls of one process thus never race each other for the log's head.

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


class WriteTimeoutError(Exception):
    """A write did not finish within ``VIGIL_WRITE_TIMEOUT_SECONDS`` (the database is
    slow or down). It may still be recorded when the database returns: a client that
    retries with the same event ids records it once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(
            f"storage did not answer within {seconds:g} s (VIGIL_WRITE_TIMEOUT_SECONDS); "
            "the events may or may not be recorded: retry with the same event ids, which "
            "records each of them once"
        )


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
    pipeline_depth: int = 2
    """Ledger calls in flight per tenant: one committing while the next is hashed."""
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
            running: list[asyncio.Task[None]] = []
            while queue or running:
                if queue and len(running) < self.pipeline_depth:
                    chained = asyncio.Event()
                    running.append(asyncio.create_task(self._commit(queue, chained)))
                    # The next group is taken once this one is chained in memory: it is
                    # then hashed while this one commits, and holds what arrived since.
                    waiter = asyncio.create_task(chained.wait())
                    await asyncio.wait((running[-1], waiter), return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                else:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running = [task for task in running if not task.done()]
        finally:
            del self._tasks[tenant]
            if not self._queues.get(tenant):
                self._queues.pop(tenant, None)

    async def _commit(self, queue: list[_Pending], chained: asyncio.Event) -> None:
        group = self._take_group(queue)
        loop = asyncio.get_running_loop()

        def on_chained() -> None:
            loop.call_soon_threadsafe(chained.set)

        try:
            outcomes = await run_in_threadpool(
                self._record_group, [p.batch for p in group], on_chained
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

    def _record_group(
        self, requests: list[PreparedBatch], on_chained: Callable[[], None]
    ) -> list[Outcome]:
        if len(requests) == 1:
            records = self.ledger.record_prepared(requests[0], on_chained)
            self._committed(1)
            return [records]
        try:
            records = self.ledger.record_prepared(PreparedBatch.join(requests), on_chained)
        except (DuplicateEventIdError, InvalidEventError):
            on_chained()
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
