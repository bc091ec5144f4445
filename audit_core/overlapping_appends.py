"""Overlapping appends: one process hashes a tenant's next batch while the previous
one commits.

Appends of one process to one tenant form a line. Each batch is chained in memory
after the head left by the batch before it (not after what storage holds), so its
hashing needs no wait; it is then stored only once the batch before is stored, and only
if that one was (else it is chained again from storage)::

    group committer      Ledger.record_prepared          recorder (PostgreSQL)
    ---------------      ----------------------          ---------------------
    call 1 ──────────▶   chain batch 1 after storage ──▶ write id rows 1, lock, COPY 1,
                         (ChainedBatch 1, StoreTurn 1)     commit ─┐
      on_chained ◀────── "chained": start call 2                   │
    call 2 ──────────▶   chain batch 2 after batch 1's             │
                         head (ChainedBatch 2, turn 2)             │
                         store ─────────────────────────▶ wait for id rows 1, write id
                                                           rows 2, wait until batch 1 ◀┘
                                                           is stored, lock, COPY 2, commit

``api.group_commit`` starts the next call when the running one says it has chained its
batch (``on_chained``); ``Ledger.record_prepared`` keeps the latest :class:`ChainedBatch`
of each tenant; the recorders wait on the batch's :class:`StoreTurn`. A turn that
fails makes every batch chained after it fail with ``IntegrityError``, and each is
chained again from storage, so a chain never forks.
"""

from __future__ import annotations

import copy
import threading

from eventsourcing.persistence import IntegrityError

from audit_core.domain import TenantLog


class StoreTurn:
    """A batch's place in the line of batches that one process stores for one tenant.

    The batch before is the one this batch was chained after: this one may be stored
    only after it, and only if it was stored. Its id index rows may go in before that,
    but only after the batch before has written its own, so that the two transactions
    never wait for each other's rows in both directions when an id repeats.
    """

    def __init__(self, before: StoreTurn | None = None, patience: float | None = None):
        self._before = before
        self._patience = patience
        self._ids_written = threading.Event()
        self._finished = threading.Event()
        self._stored = False

    def wait_for_ids_before(self) -> None:
        before = self._before
        if before is not None and not before._ids_written.wait(self._patience):
            raise IntegrityError("the batch chained before this one did not get stored in time")

    def ids_written(self) -> None:
        self._ids_written.set()

    def wait_for_batch_before(self) -> None:
        """Return once the batch before is stored; raise if it was not, or not in time.

        No writer waits for id rows while it holds the table lock (each writes its ids
        before taking it), so waiting here closes no cycle; the time limit is a safety
        net, after which this batch is chained again rather than wait forever.
        """
        before = self._before
        if before is not None:
            if not before.stored(self._patience):
                raise IntegrityError("the batch chained before this one was not stored")
            self._before = None  # a line of finished turns must not pile up in memory

    def finish(self, stored: bool) -> None:
        self._stored = stored
        self._before = None
        self._ids_written.set()
        self._finished.set()

    def stored(self, timeout: float | None = None) -> bool:
        """Wait until this batch is stored or has failed; whether it was stored."""
        return self._finished.wait(timeout) and self._stored


class ChainedBatch:
    """A batch chained in memory and on its way to storage: the next batch of the same
    tenant chains after it, and is stored only if it was."""

    def __init__(self, log: TenantLog, before: ChainedBatch | None, patience: float | None):
        self._head = copy.copy(log)
        self._head._pending_events = []  # they are this batch's, saved with ``log``
        self.turn: StoreTurn = StoreTurn(before.turn if before else None, patience)

    def head(self) -> TenantLog:
        head = copy.copy(self._head)
        head._pending_events = []
        return head
