"""The follower runner, with fake followers and with the read model, on both stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from audit_core import Ledger
from audit_core.followers import (
    Backoff,
    FollowerRunner,
    FollowerStore,
    Page,
    PoisonRecordError,
    Sink,
    Worker,
    follower_status,
    open_store,
)
from tests.events import audit_event, audit_events
from tests.followers import OpenedReadModel, wait_for
from tests.stores import Store

FAST = Backoff(base=0.001, cap=0.01)


class _Crash(BaseException):
    """The process dies (nothing in the runner catches a BaseException)."""


class ListSink(Sink):
    """Delivers event ids to a list; can fail, refuse a record, or die after delivering."""

    def __init__(self, store: FollowerStore, name: str = "list"):
        self.name = name
        self.tracking = store.positions
        self.delivered: list[str] = []
        self.pages: list[list[str]] = []
        self.transient_failures = 0
        self.refuse: Callable[[dict[str, Any]], bool] = lambda record: False
        self.die_after_delivery = False
        self.gate: threading.Event | None = None
        self.says_which = True

    def deliver(self, page: Page) -> int | None:
        if self.gate is not None:
            self.gate.wait()
        if self.transient_failures:
            self.transient_failures -= 1
            raise ConnectionError("the destination is down")
        for index, record in enumerate(page.records):
            if self.refuse(record):
                where = index if self.says_which else None
                raise PoisonRecordError(f"the destination refuses {record['id']}", where)
        ids = [record["id"] for record in page.records]
        self.delivered += ids
        self.pages.append(ids)
        return None

    def skip_to(self, position: int) -> None:
        if self.die_after_delivery:
            raise _Crash
        super().skip_to(position)

    def clear(self) -> None:
        self.delivered.clear()


@pytest.fixture
def follower_store(store: Store) -> Iterator[FollowerStore]:
    opened = open_store(store.settings().ledger_env())
    yield opened
    opened.close()


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n}" for n in range(count)]


def test_pages_arrive_in_order_and_the_position_survives_a_restart(
    ledger: Ledger, follower_store: FollowerStore
) -> None:
    ledger.record("acme", audit_events(7, "a"))
    ledger.record("globex", audit_events(3, "g"))
    sink = ListSink(follower_store)
    runner = FollowerRunner(ledger, sink, follower_store, page_size=4)
    assert runner.drain() == 10
    assert sink.delivered == ids("a", 7) + ids("g", 3)
    assert [len(page) for page in sink.pages] == [4, 4, 2]

    ledger.record("acme", audit_events(2, "b"))
    restarted = ListSink(follower_store)  # a new process: nothing in memory
    FollowerRunner(ledger, restarted, follower_store, page_size=4).drain()
    assert restarted.delivered == ids("b", 2)
    assert follower_status(ledger, restarted, follower_store).lag_events == 0


def test_a_crash_between_delivery_and_position_delivers_only_that_page_again(
    ledger: Ledger, follower_store: FollowerStore
) -> None:
    ledger.record("acme", audit_events(6, "a"))
    sink = ListSink(follower_store)
    runner = FollowerRunner(ledger, sink, follower_store, page_size=4)
    runner.run_once()
    ledger.record("acme", audit_events(2, "b"))
    sink.die_after_delivery = True
    with pytest.raises(_Crash):
        runner.run_once()  # delivered a-4, a-5, b-0, b-1; the process dies before the position

    after_restart = ListSink(follower_store)
    FollowerRunner(ledger, after_restart, follower_store, page_size=4).drain()
    assert sink.delivered[4:] == after_restart.delivered == ["a-4", "a-5", "b-0", "b-1"]


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(base=0.1, cap=2.0)
    for failures, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.6), (5, 2.0), (40, 2.0)]:
        delays = [backoff.delay(failures) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1  # jittered, so that many followers do not retry in step


def test_a_destination_down_is_retried_until_it_returns_and_each_failure_is_counted(
    ledger: Ledger, follower_store: FollowerStore
) -> None:
    ledger.record("acme", audit_events(5))
    sink = ListSink(follower_store)
    sink.transient_failures = 3
    runner = FollowerRunner(ledger, sink, follower_store, poll_interval=0.01, backoff=FAST)
    runner.start()
    try:
        runner.catch_up(timeout=30)
    finally:
        runner.stop()
    assert sink.delivered == ids("evt", 5)
    status = follower_status(ledger, sink, follower_store)
    assert (status.errors_total, status.stopped) == (3, False)
    assert status.last_error == "ConnectionError: the destination is down"


def test_a_poison_record_stops_that_follower_only_and_is_reported(
    store: Store, ledger: Ledger, follower_store: FollowerStore
) -> None:
    ledger.record("acme", audit_events(3, "a"))
    ledger.record("acme", [audit_event("bad", action="poison.pill")])
    ledger.record("acme", audit_events(2, "c"))
    sink = ListSink(follower_store, "picky")
    sink.refuse = lambda record: record["action"] == "poison.pill"
    opened = OpenedReadModel(store.settings().ledger_env())
    runners = [
        FollowerRunner(ledger, follower, follower_store, poll_interval=0.01, backoff=FAST)
        for follower in (sink, opened.follower)
    ]
    worker = Worker(ledger, follower_store, runners)
    worker.start()
    try:
        runners[1].catch_up(timeout=30)  # the read model goes on
        deadline = time.monotonic() + 30
        while runners[0].stopped_at is None:
            assert time.monotonic() < deadline, "the picky sink never stopped"
            time.sleep(0.01)
        ledger.record("acme", audit_events(1, "d"))
        runners[1].catch_up(timeout=30)
    finally:
        worker.stop()
    assert sink.delivered == ids("a", 3)  # what precedes the poison record, nothing after
    status = follower_status(ledger, sink, follower_store)
    poison_id = sink.position() + 1
    assert status.stopped_at == poison_id
    assert status.stopped_reason == "the destination refuses bad"
    assert status.errors_total >= 1
    assert follower_status(ledger, opened.follower, follower_store).lag_events == 0
    assert opened.view.count("acme") == 7
    opened.close()

    # The operator decides to go past it; the sink delivers the rest, never the poison.
    sink.skip_to(poison_id)
    follower_store.states.clear_stop("picky")
    FollowerRunner(ledger, sink, follower_store).drain()
    assert sink.delivered == ids("a", 3) + ids("c", 2) + ["d-0"]


def test_a_poison_record_the_follower_cannot_place_is_found_one_record_at_a_time(
    ledger: Ledger, follower_store: FollowerStore
) -> None:
    ledger.record("acme", [*audit_events(3, "a"), audit_event("bad", action="poison.pill")])
    ledger.record("acme", audit_events(2, "c"))
    sink = ListSink(follower_store)
    sink.refuse = lambda record: record["action"] == "poison.pill"
    sink.says_which = False  # a destination that refuses the batch without saying why
    runner = FollowerRunner(ledger, sink, follower_store, backoff=FAST)
    runner.drain()
    assert sink.delivered == ids("a", 3)
    assert runner.stopped_at == sink.position() + 1
    assert follower_store.states.state("list").stopped_reason == "the destination refuses bad"


def test_two_followers_on_one_database_do_not_wait_for_each_other(
    store: Store, ledger: Ledger, follower_store: FollowerStore
) -> None:
    slow = ListSink(follower_store, "slow")
    slow.gate = threading.Event()  # its destination hangs
    opened = OpenedReadModel(store.settings().ledger_env())
    runners = [
        FollowerRunner(ledger, follower, follower_store, poll_interval=0.01)
        for follower in (slow, opened.follower)
    ]
    worker = Worker(ledger, follower_store, runners)
    worker.start()
    try:
        ledger.record("acme", audit_events(20))
        runners[1].catch_up(timeout=30)
        assert opened.view.count("acme") == 20
        assert slow.delivered == []
        slow.gate.set()
        runners[0].catch_up(timeout=30)
        assert slow.delivered == ids("evt", 20)
    finally:
        slow.gate.set()
        worker.stop()
        opened.close()


def _worker(store: Store, tmp_path: Path) -> subprocess.Popen[bytes]:
    """``vigil worker --only readmodel`` in a process of its own (its log in tmp_path)."""
    with open(tmp_path / f"worker-{time.monotonic_ns()}.log", "wb") as log:
        return _start_worker(store, tmp_path, log)


def _start_worker(store: Store, tmp_path: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": store.url,
        "VIGIL_READMODEL_POLL_SECONDS": "0.05",
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "vigil"), "worker", "--only", "readmodel"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def test_of_two_worker_processes_one_leads_and_the_other_takes_over_when_it_is_killed(
    store: Store, tmp_path: Path
) -> None:
    env = store.settings().ledger_env()
    ledger = store.open_ledger()
    opened = OpenedReadModel(env)
    status = lambda: follower_status(ledger, opened.follower, opened.store)  # noqa: E731
    first = _worker(store, tmp_path)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: status().leader == "elsewhere", "the first worker never led")
        second = _worker(store, tmp_path)
        ledger.record("acme", audit_events(10, "a"))
        wait_for(lambda: status().lag_events == 0, "the read model never caught up")

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        ledger.record("acme", audit_events(5, "b"))
        wait_for(lambda: status().lag_events == 0, "the second worker never took over")
        assert status().leader == "elsewhere"
        assert opened.view.count("acme") == 15
        assert second.poll() is None
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        opened.close()


def test_a_stopped_follower_is_reported_by_status_and_readyz_and_resumed_by_the_operator(
    store: Store, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.api.test_cli import Vigil

    ledger = store.open_ledger()
    ledger.record("acme", audit_events(4))
    store.set_stored_state("acme", 2, b"\x00not a record")  # storage damaged behind our back
    settings = store.settings(readmodel_poll_seconds=0.01)
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        runner = services.worker.runner("readmodel")
        runner.backoff = FAST
        wait_for(lambda: runner.stopped_at is not None, "the read model never stopped")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "readmodel is stopped at notification" in ready.json()["detail"]
        metrics = client.get("/metrics").text
        assert 'vigil_follower_stopped{follower="readmodel"} 1.0' in metrics

    vigil = Vigil(store, tmp_path)
    shown = vigil("status")
    assert shown.exit_code == 1
    assert "readmodel" in shown.stdout
    assert "STOPPED at notification" in shown.stdout
    assert "cannot decode a stored audit record" in shown.stdout

    def readmodel_status() -> dict[str, Any]:
        lines = vigil("status", "--json").stdout.splitlines()
        [found] = [s for s in map(orjson.loads, lines) if s["name"] == "readmodel"]
        return dict(found)

    as_json = readmodel_status()
    assert as_json["position"] == as_json["stopped_at"] - 1

    resumed = vigil("followers", "resume", "readmodel", "--skip")
    assert resumed.exit_code == 0, resumed.stderr
    opened = OpenedReadModel(settings.ledger_env())
    try:
        opened.runner(ledger).drain()
        assert opened.view.count("acme") == 3  # every record but the damaged one
    finally:
        opened.close()
    assert readmodel_status()["stopped"] is False
