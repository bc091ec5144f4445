"""The archiver: a sink follower that cuts each tenant's records into segments and
writes them, with their digests, to S3.

Records are held per tenant until a segment closes: at ``segment_records`` records, or
on the runner's tick once its first record was received ``segment_seconds`` ago (by its
``received_at``, so that a restart does not restart the wait). A closed segment is
written by a thread while reading goes on, one write at a time per tenant (each digest
names the one before); ``settle`` waits for the writes under way. ``deliver``, ``flush``
and ``settle`` return the highest notification id whose records are all in written
segments, so the runner's position never passes a record that is only in memory; after
a crash the records after that position are read again, those already archived are
recognised by their seq (S3's chain head says how far each tenant is) and the rest are
cut and written again.

S3 errors propagate: the runner retries with backoff while ingest goes on, and the
follower's lag shows in ``vigil status``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime

from eventsourcing.persistence import TrackingRecorder

from audit_core.archive.segments import Segment
from audit_core.archive.writer import ArchiveWriter, ChainHead
from audit_core.followers.follower import Page, PoisonRecordError, Sink
from audit_core.persistence import RecordHead


@dataclass
class _Open:
    """A tenant's records waiting for their segment to close."""

    head: ChainHead
    lines: list[bytes] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    opened: float = 0.0
    """When the first held record was received (seconds since the epoch)."""
    end: int | None = None
    """The last seq of a segment found written without its digest: this segment must
    end there too, to be the same one."""
    end_checked: bool = False
    last_hash: str = ""
    writing: Future[ChainHead | None] | None = None
    """The write of this tenant's segment under way, of its first ``writing_count``
    held records."""
    writing_count: int = 0

    @property
    def next_seq(self) -> int:
        return self.head.next_seq + len(self.lines)


class ArchiveFollower(Sink):
    """Archives every tenant's log to S3 (see ``docs/archive.md``)."""

    def __init__(
        self,
        writer: ArchiveWriter,
        tracking: TrackingRecorder,
        *,
        segment_records: int = 10_000,
        segment_seconds: float = 30.0,
        name: str = "archive",
        clock: Callable[[], float] = time.time,
        writers: int = 8,
    ):
        """``writers``: how many tenants' segments are written to S3 at once (one
        tenant's always one after the other: each digest names the one before)."""
        self.writer = writer
        self.tracking = tracking
        self.name = name
        self.segment_records = segment_records
        self.segment_seconds = segment_seconds
        self.clock = clock
        self._open: dict[str, _Open] = {}
        self._delivered = 0
        """The position of the last page delivered."""
        self.segments_written = 0
        self.records_written = 0
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="vigil-archive")

    # -- the runner's hooks -------------------------------------------------------------

    def deliver(self, page: Page) -> int | None:
        checked_record = page.mapper.checked_record
        ids = page.ids
        for index, state in enumerate(page.states):
            try:
                line, stored_hash, head = checked_record(state)
            except Exception as error:
                raise PoisonRecordError(str(error), index) from error
            self._take(head, stored_hash, line, ids[index], index)
        self._delivered = max(self._delivered, page.position)
        self._write_due(by_time=False)
        return self._confirmed()

    def flush(self) -> int | None:
        self._write_due(by_time=True)
        return self._confirmed()

    def settle(self) -> int | None:
        while self._write_due(by_time=True):
            wait([state.writing for state in self._open.values() if state.writing is not None])
        return self._confirmed()

    def reload(self) -> None:
        # The runner reads again from the stored position; S3 says where each tenant is.
        # Writes under way end first, so that none lands after the heads are read again.
        wait([state.writing for state in self._open.values() if state.writing is not None])
        self._open.clear()
        self._delivered = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def clear(self) -> None:
        """Start following from the ledger's first record again. What S3 holds stays
        (it is locked); records already archived are recognised and skipped."""
        self.reload()
        rewind = getattr(self.tracking, "rewind", None)
        if rewind is not None:
            rewind(self.name, 0)

    # -- segments -----------------------------------------------------------------------

    def _take(
        self, head: RecordHead, stored_hash: str, line: bytes, notification_id: int, index: int
    ) -> None:
        """Hold one record; ``line`` is its canonical bytes, which hash to ``stored_hash``."""
        tenant, seq = head.tenant, head.seq
        state = self._open.get(tenant)
        if state is None:
            chain = self.writer.load_head(tenant, near=head.received_at)
            state = self._open[tenant] = _Open(chain, last_hash=chain.last_hash)
        if seq < state.next_seq:  # archived already, or held already
            if seq == state.head.next_seq - 1 and stored_hash != state.head.last_hash:
                raise PoisonRecordError(
                    f"tenant {tenant!r} seq {seq}: the ledger's record differs from the "
                    "archived one: the ledger forked from what was archived (restored from "
                    "an older backup?); `vigil archive verify --ledger` shows where",
                    index,
                )
            return
        if seq > state.next_seq:
            raise PoisonRecordError(
                f"tenant {tenant!r}: the ledger gave seq {seq} but the archive ends before "
                f"seq {state.next_seq}; objects are missing from the archive, or the "
                "follower's position is ahead of it (a new bucket or prefix: `vigil rebuild "
                "archive` archives from the first record)",
                index,
            )
        if head.prev_hash != state.last_hash:
            raise PoisonRecordError(
                f"tenant {tenant!r} seq {seq}: prev_hash is not the hash of the record "
                "archived before it (run `vigil verify`)",
                index,
            )
        if not state.lines:
            state.opened = _epoch(head.received_at)
        state.lines.append(line)
        state.ids.append(notification_id)
        state.received.append(head.received_at)
        state.last_hash = stored_hash

    def _due(self, state: _Open, *, by_time: bool) -> bool:
        if not state.end_checked:
            state.end = self.writer.written_end(state.head, state.received[0])
            state.end_checked = True
        if state.end is not None:
            return state.next_seq > state.end
        if len(state.lines) >= self.segment_records:
            return True
        return by_time and self.clock() - state.opened >= self.segment_seconds

    def _write_due(self, *, by_time: bool) -> bool:
        """Take in the writes that have ended, and start writing every segment that is
        due; True while writes are under way. Reading goes on meanwhile: the position
        confirmed never passes a record whose segment is not written."""
        failure: BaseException | None = None
        uncovered: set[str] = set()
        for tenant, state in self._open.items():
            writing = state.writing
            if writing is None or not writing.done():
                continue
            state.writing = None
            try:
                head = writing.result()
            except BaseException as error:  # raised below, once the others are taken in
                failure = failure or error
                continue
            if head is None:
                uncovered.add(tenant)  # no checkpoint covers it yet: cut again next time
            else:
                self._advance(state, head, state.writing_count)
        if failure is not None:
            raise failure
        for tenant, state in self._open.items():
            # One write at a time per tenant: each digest names the one before.
            if (
                state.writing is None
                and tenant not in uncovered
                and state.lines
                and self._due(state, by_time=by_time)
            ):
                segment, state.writing_count = self._cut(state)
                state.writing = self._pool.submit(self.writer.write, state.head, segment)
        return any(state.writing is not None for state in self._open.values())

    def _cut(self, state: _Open) -> tuple[Segment, int]:
        """The segment that is due, and how many held records it takes."""
        if state.end is not None:
            count = state.end - state.head.next_seq + 1
        else:
            count = min(len(state.lines), self.segment_records)
        segment = Segment(
            tenant=state.head.tenant,
            first_seq=state.head.next_seq,
            lines=tuple(state.lines[:count]),
            first_received_at=state.received[0],
            last_received_at=state.received[count - 1],
        )
        return segment, count

    def _advance(self, state: _Open, head: ChainHead, count: int) -> None:
        state.head = head
        del state.lines[:count], state.ids[:count], state.received[:count]
        state.end, state.end_checked = None, True
        if state.received:
            state.opened = _epoch(state.received[0])
        self.segments_written += 1
        self.records_written += count

    def _confirmed(self) -> int:
        """Every record up to this notification id is in a written segment."""
        held = [state.ids[0] for state in self._open.values() if state.ids]
        return min(held) - 1 if held else self._delivered


def _epoch(received_at: str) -> float:
    return datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp()
