"""The escalation scheduler as a follower of the ledger, so that ``vigil worker`` (and
``vigil serve``) run it with no code of their own.

It consumes no records: it rides the follower runner for what the runner gives every
follower, one leader among all the worker processes and a ``tick`` at least every poll
interval while it leads. Each tick that is due takes the escalation steps due and
records in the ledger any incident action a crash left unaudited. Ticking twice, or
from two processes, is harmless: a step already taken is refused by the incident.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from eventsourcing.persistence import TrackingRecorder

from audit_core.followers import Page, Sink
from incident.application import Incidents

log = logging.getLogger("vigil.incident")

FOLLOWER_NAME = "incident-escalation"


class EscalationScheduler(Sink):
    def __init__(
        self,
        incidents: Incidents,
        positions: TrackingRecorder,
        *,
        every_seconds: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = FOLLOWER_NAME,
    ):
        self.name = name
        self.incidents = incidents
        self.tracking = positions
        self.every_seconds = every_seconds
        self._monotonic = monotonic
        self._last: float | None = None

    def position(self) -> int:
        """At least the ledger's head: the scheduler consumes no records, so a first
        start (or a restart after a long stop) skips the history instead of reading it."""
        head = self.incidents.ledger.recorder.max_notification_id() or 0
        return max(super().position(), head)

    def deliver(self, page: Page) -> int | None:
        return None  # nothing to deliver: the scheduler only needs the runner's ticks

    def tick(self) -> None:
        now = self._monotonic()
        if self._last is not None and now - self._last < self.every_seconds:
            return
        self._last = now
        for step in self.incidents.tick():
            log.info("escalation step taken", extra={"escalation": step})
        self.incidents.sync_audit()

    def clear(self) -> None:
        """Nothing to forget: escalation state lives in the incidents' events."""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.incidents.close()
