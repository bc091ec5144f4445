"""The one loop that every follower of the ledger runs in.

For each follower, in a thread of its own: take the lead (or stand by), read the
ledger's notification log a page at a time after the follower's position, hand each
page to the follower, and wait for more (woken by PostgreSQL ``NOTIFY``, or polling on
SQLite). A failing page is retried with capped exponential backoff and jitter; a
:class:`~audit_core.followers.follower.PoisonRecordError` that persists stops this
follower at that record, on record in the database, and the others go on.

Why not the library's ``ProjectionRunner``: it commits one transaction per event, has
no subscription on SQLite, reads ``os.environ`` and has no leader election.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from eventsourcing.persistence import MapperDeserialisationError
from eventsourcing.postgres import PostgresDatastore
from psycopg.sql import SQL, Identifier

from audit_core.application import Ledger
from audit_core.followers.follower import Follower, Kind, Page, PoisonRecordError, Sink, View
from audit_core.followers.store import FollowerStore, connection_kwargs

log = logging.getLogger(__name__)

Leader = Literal["here", "elsewhere", "none"]


@dataclass(frozen=True)
class FollowerStatus:
    name: str
    kind: Kind
    position: int
    head: int
    """The ledger's newest notification id."""
    lag_events: int
    lag_seconds: float | None
    """Age of the oldest record not yet processed (0 when caught up; None when that
    record cannot be read)."""
    leader: Leader
    errors_total: int
    last_error: str | None
    stopped_at: int | None
    stopped_reason: str | None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter."""

    base: float = 0.1
    cap: float = 10.0

    def delay(self, failures: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * 2.0 ** min(failures, 30))


def follower_status(ledger: Ledger, follower: Follower, store: FollowerStore) -> FollowerStatus:
    """A follower's status, read from the database: any process may ask."""
    position = follower.position()
    head = ledger.recorder.max_notification_id() or 0
    lag_seconds: float | None = 0.0
    if head > position:
        notes = ledger.ledger_recorder.recorded_after(position, 1)
        if notes.states:
            try:
                stored = ledger.ledger_mapper.decode_recorded(notes.states[0])["timestamp"]
                received = datetime.fromisoformat(str(stored))
            except (MapperDeserialisationError, ValueError):
                lag_seconds = None  # a poison record: the follower's state says so
            else:
                lag_seconds = round((datetime.now(UTC) - received).total_seconds(), 3)
    if store.leadership.still_leads(follower.name):
        leader: Leader = "here"
    elif store.leadership.led_elsewhere(follower.name):
        leader = "elsewhere"
    else:
        leader = "none"
    state = store.states.state(follower.name)
    return FollowerStatus(
        name=follower.name,
        kind=follower.kind,
        position=position,
        head=head,
        lag_events=max(0, head - position),
        lag_seconds=None if lag_seconds is None else max(0.0, lag_seconds),
        leader=leader,
        errors_total=state.errors_total,
        last_error=state.last_error,
        stopped_at=state.stopped_at,
        stopped_reason=state.stopped_reason,
    )


class FollowerRunner:
    """Runs one follower: in a background thread (``start``) or in the caller's
    (``drain``)."""

    leadership_check_seconds = 2.0
    poison_tries = 3
    """Tries of a page that raises ``PoisonRecordError`` before the follower stops."""
    stop_check_seconds = 2.0

    def __init__(
        self,
        ledger: Ledger,
        follower: Follower,
        store: FollowerStore,
        *,
        poll_interval: float = 0.2,
        page_size: int = 1000,
        backoff: Backoff | None = None,
    ):
        self.ledger = ledger
        self.follower = follower
        self.store = store
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.backoff = backoff or Backoff()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cursor: int | None = None
        """How far this process has read: past the stored position for a sink that
        holds records back."""
        self.leading = False
        self.stopped_at: int | None = None
        self.last_error: BaseException | None = None
        self.on_error: Callable[[str], None] | None = None
        self._leadership_checked = 0.0

    @property
    def name(self) -> str:
        return self.follower.name

    # -- the background thread ---------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"vigil-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        if self.leading:
            self.store.leadership.resign(self.name)
            self.leading = False

    def nudge(self) -> None:
        """Wake the follower now (new records were committed)."""
        self._wake.set()

    def catch_up(self, timeout: float = 10.0) -> None:
        """Block until the follower has processed what the ledger holds now; raise
        ``TimeoutError`` if it has not within ``timeout`` seconds."""
        target = self.ledger.recorder.max_notification_id() or 0
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self.follower.position() < target:
            if self.stopped_at is not None:
                raise TimeoutError(f"follower {self.name} stopped at {self.stopped_at}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"follower {self.name} at {self.follower.position()} of {target} "
                    f"after {timeout} s"
                )
            time.sleep(0.01)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self._lead():
                    self._cursor = None  # the leader moves on meanwhile
                    self._stopping.wait(self.leadership_check_seconds)
                    continue
                if self._is_stopped():
                    self._stopping.wait(self.stop_check_seconds)
                    continue
                processed = self.run_once()
                failures = 0
                self.last_error = None
                if processed >= self.page_size:
                    continue
            except Exception as error:  # transient: reload the position, back off, retry
                failures += 1
                self._failed(error, failures)
                self._stopping.wait(self.backoff.delay(failures))
                continue
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _failed(self, error: BaseException, failures: int) -> None:
        self.last_error = error
        self._cursor = None
        message = f"{type(error).__name__}: {error}"
        log.warning(
            "follower %s failed (%d in a row), retrying: %s",
            self.name,
            failures,
            message,
            extra={"follower": self.name, "failures": failures},
        )
        with contextlib.suppress(Exception):
            self.store.states.record_error(self.name, message)

    def _lead(self) -> bool:
        """Whether this process leads the follower (taking the lead if it is free)."""
        now = time.monotonic()
        if self.leading and now - self._leadership_checked < self.leadership_check_seconds:
            return True
        self._leadership_checked = now
        was_leading = self.leading
        leadership = self.store.leadership
        self.leading = leadership.still_leads(self.name) or leadership.try_lead(self.name)
        if self.leading != was_leading:
            log.info("follower %s %s", self.name, "leads" if self.leading else "stands by")
        return self.leading

    def _is_stopped(self) -> bool:
        """Whether the follower is stopped at a poison record (read from the database,
        so that ``vigil followers resume`` in another process takes effect)."""
        stopped_at = self.store.states.state(self.name).stopped_at
        if stopped_at is None and self.stopped_at is not None:
            log.info("follower %s resumes", self.name)
            self._cursor = None
        self.stopped_at = stopped_at
        return stopped_at is not None

    # -- one step, in whichever thread -------------------------------------------------

    def run_once(self) -> int:
        """Process one page (if any) and the follower's tick; return the page's size."""
        if self._cursor is None:
            self.follower.reload()
            self._cursor = self.follower.position()
        notes = self.ledger.ledger_recorder.recorded_after(self._cursor, self.page_size)
        processed = 0
        if notes.ids:
            page = Page(self.name, notes.ids, notes.states, self.ledger.ledger_mapper)
            processed = self._process(page)
        self.follower.tick()
        if isinstance(self.follower, Sink):
            self._confirm(self.follower.flush())
        return processed

    def _process(self, page: Page) -> int:
        """Hand ``page`` to the follower, and stop at a poison record in it."""
        error: PoisonRecordError | None = None
        for attempt in range(self.poison_tries):
            try:
                self._handle(page)
                return len(page.ids)
            except PoisonRecordError as poison:
                error = poison
                if attempt + 1 < self.poison_tries:
                    time.sleep(self.backoff.delay(attempt))
        assert error is not None
        # Process what comes before the poison record, then stop at it.
        index = error.index
        if index is None or not 0 <= index < len(page.ids):
            index = self._first_poisoned(page)
            if index is None:  # each record passed alone: nothing to stop at
                return len(page.ids)
        elif index:
            self._handle(page.head(index))
        self._stop_at(page.ids[index], error.reason)
        return index

    def _first_poisoned(self, page: Page) -> int | None:
        """Process the page one record at a time, up to the first one that fails."""
        for index in range(len(page.ids)):
            single = Page(
                self.name, page.ids[index : index + 1], page.states[index : index + 1], page.mapper
            )
            try:
                self._handle(single)
            except PoisonRecordError:
                return index
        return None

    def _handle(self, page: Page) -> None:
        follower = self.follower
        if isinstance(follower, View):
            follower.handle(page)
        elif isinstance(follower, Sink):
            confirmed = follower.deliver(page)
            self._confirm(page.position if confirmed is None else confirmed)
        else:  # pragma: no cover
            raise TypeError(f"{type(follower).__name__} is neither a View nor a Sink")
        self._cursor = page.position

    def _confirm(self, position: int | None) -> None:
        if position is not None and position > self.follower.position():
            self.follower.skip_to(position)

    def _stop_at(self, notification_id: int, reason: str) -> None:
        self.stopped_at = notification_id
        self._cursor = None
        log.error(
            "follower %s stopped at notification %d: %s; fix the cause, then run "
            "`vigil followers resume %s` (or `--skip` to go past it)",
            self.name,
            notification_id,
            reason,
            self.name,
            extra={"follower": self.name, "notification_id": notification_id},
        )
        self.store.states.record_stop(self.name, notification_id, reason)

    def drain(self, progress: Callable[[int], None] | None = None) -> int:
        """Process every pending page in this thread; return the records processed.
        ``progress`` is called with the position after each page."""
        self._cursor = None
        total = 0
        while True:
            if self._is_stopped():
                return total
            processed = self.run_once()
            total += processed
            if progress is not None:
                progress(self._cursor or 0)
            if processed < self.page_size:
                if isinstance(self.follower, Sink):
                    self._confirm(self.follower.settle())
                return total

    def status(self) -> FollowerStatus:
        return follower_status(self.ledger, self.follower, self.store)


class Waker:
    """Wakes runners when the ledger commits: ``LISTEN`` on PostgreSQL (the ledger
    ``NOTIFY``s on every commit), nothing on SQLite, where the runners poll."""

    def __init__(self, ledger: Ledger, runners: list[FollowerRunner]):
        self._runners = runners
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        recorder: Any = ledger.recorder
        datastore = getattr(recorder, "datastore", None)
        if isinstance(datastore, PostgresDatastore):
            self._datastore = datastore
            self._channel: str = recorder.channel_name
            self._thread = threading.Thread(target=self._listen, name="vigil-waker", daemon=True)

    def start(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)

    def _listen(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                kwargs = connection_kwargs(self._datastore)
                with psycopg.connect(autocommit=True, **kwargs) as conn:
                    conn.execute(SQL("LISTEN {0}").format(Identifier(self._channel)))
                    failures = 0
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            for runner in self._runners:
                                runner.nudge()
            except psycopg.Error as error:  # the runners still poll meanwhile
                failures += 1
                log.warning("cannot listen for ledger commits (%s), retrying", error)
                self._stopping.wait(Backoff().delay(failures))


class Worker:
    """Runs several followers in this process, each in its own thread."""

    def __init__(self, ledger: Ledger, store: FollowerStore, runners: list[FollowerRunner]):
        self.ledger = ledger
        self.store = store
        self.runners = runners
        self._waker = Waker(ledger, runners)

    def start(self) -> None:
        for runner in self.runners:
            runner.start()
        self._waker.start()

    def stop(self) -> None:
        self._waker.stop()
        for runner in self.runners:
            runner.stop()

    def nudge(self) -> None:
        for runner in self.runners:
            runner.nudge()

    def runner(self, name: str) -> FollowerRunner:
        for runner in self.runners:
            if runner.name == name:
                return runner
        raise KeyError(name)
