"""What a consumer of the ledger implements to plug into the follower runner.

A follower sees the ledger's notification log as pages of consecutive ``Recorded``
events, in notification order. It is one of two kinds:

- a :class:`View` writes its output and the position it reached in one transaction of
  its own database (``page.tracking``), so a crash loses both or neither;
- a :class:`Sink` delivers outside the database and returns once delivery is confirmed;
  the runner then records the position. A crash between the two delivers the page again,
  so what a sink delivers must carry the event id for the receiver to recognise it.

The runner (:mod:`audit_core.followers.runner`) does everything else: reading pages,
waking, backoff, leadership, lag, and stopping at a poison record.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from eventsourcing.persistence import Tracking, TrackingRecorder

from audit_core.application import Record
from audit_core.exceptions import LedgerError
from audit_core.persistence import LedgerMapper

Kind = Literal["view", "sink"]


class FollowerError(LedgerError):
    """Base of the follower runner's errors."""


class PoisonRecordError(FollowerError):
    """This record can never be processed: it is undecodable, or its destination
    refuses it every time. Raised by a follower (``index`` is the record's place in the
    page when known); the runner retries a bounded number of times, processes what comes
    before it, and then stops that follower at it, never skipping it silently.

    Any other exception is taken as transient (a destination down, a lost connection)
    and retried with capped exponential backoff for as long as it lasts."""

    def __init__(self, reason: str, index: int | None = None):
        self.reason = reason
        self.index = index
        super().__init__(reason)


@dataclass(frozen=True)
class Page:
    """Consecutive ``Recorded`` notifications of the ledger, in order."""

    follower: str
    ids: Sequence[int]
    """Their notification ids; ``ids[-1]`` is the position the page reaches."""
    states: Sequence[bytes]
    """Their stored states, as the ledger's mapper reads them."""
    mapper: LedgerMapper = field(repr=False)

    @property
    def position(self) -> int:
        return self.ids[-1]

    @property
    def tracking(self) -> Tracking:
        """What a view writes in the transaction that writes its output."""
        return Tracking(self.follower, self.position)

    @functools.cached_property
    def records(self) -> list[Record]:
        """The whole records (with ``hash``), decoded once. A record that cannot be
        decoded raises :class:`PoisonRecordError` naming its place."""
        records: list[Record] = []
        for index, state in enumerate(self.states):
            try:
                records.append(self.mapper.decode_record(state))
            except Exception as error:
                raise PoisonRecordError(f"undecodable record: {error}", index) from error
        return records

    def head(self, count: int) -> Page:
        """The first ``count`` notifications of this page."""
        return Page(self.follower, self.ids[:count], self.states[:count], self.mapper)


class Follower(ABC):
    """A named consumer of the ledger. ``name`` is stable: its position is tracked, and
    its leadership taken, under it, so renaming a follower starts it from the beginning.

    ``tracking`` is the recorder that holds the follower's position: a view's own
    recorder (its output lives beside it), or, for a sink, the one the runner's store
    gives (:meth:`audit_core.followers.store.FollowerStore.positions`).
    """

    kind: ClassVar[Kind]
    name: str
    tracking: TrackingRecorder

    def position(self) -> int:
        """The notification id processed up to (0: nothing yet)."""
        return self.tracking.max_tracking_id(self.name) or 0

    def skip_to(self, position: int) -> None:
        """Record ``position`` as processed without processing what lies before it:
        the operator's decision, after a poison record, to go past it."""
        self.tracking.insert_tracking(Tracking(self.name, position))

    def reload(self) -> None:  # noqa: B027  (optional hook)
        """Forget state held in memory: the runner is about to read again from
        :meth:`position` (on start, after an error, on taking the lead)."""

    def tick(self) -> None:  # noqa: B027  (optional hook)
        """Called by the runner at least every poll interval while this follower leads,
        pages or not: time-driven work (a checkpoint due, a segment to close)."""

    @abstractmethod
    def clear(self) -> None:
        """Forget the output and the position, atomically where the output is in the
        database, so that following starts again from the ledger's first event."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections and files."""


class View(Follower):
    kind: ClassVar[Kind] = "view"

    @abstractmethod
    def handle(self, page: Page) -> None:
        """Write the page's output and ``page.tracking`` in one transaction."""


class Sink(Follower):
    kind: ClassVar[Kind] = "sink"

    @abstractmethod
    def deliver(self, page: Page) -> int | None:
        """Deliver the page and return once the destination has confirmed it.

        Returns the highest notification id now confirmed: ``None`` for the whole page,
        or less when the sink holds part of it back (a segment still open). The runner
        records that position; on restart, following resumes after it."""

    def flush(self) -> int | None:
        """Called with :meth:`tick`: deliver what is held back if it is due; return a
        newly confirmed position, or ``None``."""
        return None

    def settle(self) -> int | None:
        """``flush``, then wait for whatever is still on its way: what a drain ends
        with, so that what it read is delivered when it returns."""
        return self.flush()
