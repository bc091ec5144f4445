"""The shipper as the runner drives it, on SQLite and PostgreSQL: every recorded event
reaches Graylog, across outages, refusals and a killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from api.followers import REGISTRY, build_followers
from audit_core import Ledger
from audit_core.followers import Backoff, FollowerRunner, FollowerStore, open_store
from audit_core.graylog import GraylogShipper
from tests.events import audit_event, audit_events
from tests.graylog.receivers import HttpReceiver, Receiver, TcpReceiver, UdpReceiver
from tests.stores import Store

QUICK = Backoff(base=0.02, cap=0.2)
ROOT = Path(__file__).parents[2]


@contextmanager
def shipping(
    store: Store, ledger: Ledger, destinations: str, **fields: Any
) -> Iterator[tuple[FollowerStore, list[FollowerRunner]]]:
    """The Graylog followers that these settings enable, as ``vigil worker`` builds them."""
    settings = store.settings(graylog_destinations=destinations, **fields)
    followers_store = open_store(settings.ledger_env())
    # The registry's entry, as every entry point builds it (alone, so that another
    # consumer's configuration cannot fail these tests).
    (spec,) = [spec for spec in REGISTRY if spec.name == "graylog"]
    followers = spec.build(settings, ledger, followers_store)
    runners = [FollowerRunner(ledger, f, followers_store, backoff=QUICK) for f in followers]
    try:
        yield followers_store, runners
    finally:
        for runner in runners:
            runner.stop()
            runner.follower.close()
        followers_store.close()


def assert_exactly(receiver: Receiver, records: list[dict[str, Any]]) -> None:
    """Every record arrived, as its own message; a repeat is the same message again."""
    arrived = receiver.by_event_id()
    assert sorted(arrived) == sorted(record["id"] for record in records)
    for record in records:
        first, *repeats = arrived[record["id"]]
        assert first["_hash"] == record["hash"]
        assert first["_seq"] == record["seq"]
        assert first["_tenant"] == record["tenant"]
        assert all(repeat == first for repeat in repeats)


def test_every_event_reaches_each_destination_with_its_fields(
    store: Store, ledger: Ledger, tcp_receiver: TcpReceiver, http_receiver: HttpReceiver
) -> None:
    records = ledger.record("acme", audit_events(30, prefix="a")) + ledger.record(
        "globex", audit_events(20, prefix="g", outcome="denied")
    )
    destinations = (
        f"siem=tcp://127.0.0.1:{tcp_receiver.port},"
        f"cluster=http://127.0.0.1:{http_receiver.port}/gelf"
    )
    with shipping(store, ledger, destinations, graylog_host="vigil-eu-1") as (_, runners):
        assert sorted(runner.name for runner in runners) == ["graylog:cluster", "graylog:siem"]
        for runner in runners:
            assert runner.drain() == 50
            assert runner.status().lag_events == 0
    for receiver in (tcp_receiver, http_receiver):
        messages = receiver.wait_for(50)
        assert_exactly(receiver, records)
        # In ledger order, within each tenant.
        assert [m["_seq"] for m in messages if m["_tenant"] == "acme"] == list(range(30))
        denied = [m for m in messages if m["_tenant"] == "globex"]
        assert {(m["level"], m["_outcome"], m["host"]) for m in denied} == {
            (4, "denied", "vigil-eu-1")
        }


def test_an_outage_of_graylog_delays_the_shipper_and_loses_nothing(
    store: Store, ledger: Ledger, tcp_receiver: TcpReceiver
) -> None:
    with shipping(store, ledger, f"main=tcp://127.0.0.1:{tcp_receiver.port}") as (_, runners):
        (runner,) = runners
        runner.start()
        before = ledger.record("acme", audit_events(10, prefix="before"))
        runner.catch_up(timeout=30)  # delivered and confirmed
        # GELF over TCP acknowledges nothing: what was written may still sit unread in
        # the input's socket, and an input that goes down then drops it (so did this
        # test's, once in a CI run). The outage starts once the input has read it all.
        tcp_receiver.wait_for(len(before))
        tcp_receiver.stop()
        # Ingest goes on while Graylog is down; the shipper falls behind and says why.
        during = ledger.record("acme", audit_events(25, prefix="during"))
        runner.nudge()
        tcp_receiver.wait_until(lambda: runner.status().errors_total > 0)
        status = runner.status()
        assert status.lag_events == 25
        assert f"127.0.0.1:{tcp_receiver.port}" in (status.last_error or "")
        tcp_receiver.start()
        runner.catch_up(timeout=30)
    assert_exactly(tcp_receiver, before + during)


def test_an_input_answering_500_gets_everything_once_it_answers_202(
    store: Store, ledger: Ledger
) -> None:
    receiver = HttpReceiver(answer=lambda number, messages: 500 if number <= 3 else 202).start()
    try:
        records = ledger.record("acme", audit_events(12))
        url = f"main=http://127.0.0.1:{receiver.port}/gelf"
        with shipping(store, ledger, url) as (_, runners):
            (runner,) = runners
            runner.start()
            runner.catch_up(timeout=30)
            assert runner.status().errors_total == 3
        assert_exactly(receiver, records)
        assert receiver.statuses[:4] == [500, 500, 500, 202]
    finally:
        receiver.stop()


def test_a_record_graylog_always_refuses_stops_the_shipper_and_is_reported(
    store: Store, ledger: Ledger
) -> None:
    def answer(number: int, messages: list[dict[str, Any]]) -> int:
        return 400 if any(m["_event_id"] == "evt-7" for m in messages) else 202

    receiver = HttpReceiver(answer=answer).start()
    try:
        records = ledger.record("acme", audit_events(12))
        url = f"main=http://127.0.0.1:{receiver.port}/gelf"
        with shipping(store, ledger, url) as (_, runners):
            (runner,) = runners
            runner.backoff = Backoff(base=0.001, cap=0.001)
            runner.drain()
            status = runner.status()
            assert status.stopped
            assert "event 'evt-7' (tenant acme, seq 7)" in (status.stopped_reason or "")
            assert "refuses the message with HTTP 400" in (status.stopped_reason or "")
            assert status.lag_events == 5  # evt-7 and what follows wait for the operator
        assert {m["_event_id"] for m in receiver.messages} == {r["id"] for r in records[:7]}
    finally:
        receiver.stop()


def test_sensitive_metadata_never_crosses_the_wire_in_clear(
    store: Store, ledger: Ledger, tcp_receiver: TcpReceiver, udp_receiver: UdpReceiver
) -> None:
    secrets = ["alice@example.org", "+33 6 12 34 56 78", "4111-1111-1111-1111"]
    ledger.record(
        "acme",
        [
            audit_event(
                f"evt-{index}",
                metadata={"email": secrets[0], "billing": {"phone": secrets[1]}},
                changes={"card": {"from": None, "to": secrets[2]}},
            )
            for index in range(5)
        ],
    )
    destinations = (
        f"tcp=tcp://127.0.0.1:{tcp_receiver.port},udp=udp://127.0.0.1:{udp_receiver.port}"
    )
    with shipping(
        store,
        ledger,
        destinations,
        graylog_hmac_key="a-long-shared-secret-key",
        graylog_hmac_fields="email, billing.phone, card",
    ) as (_, runners):
        for runner in runners:
            runner.drain()
    for receiver in (tcp_receiver, udp_receiver):
        receiver.wait_for(5)
        for secret in secrets:
            assert secret.encode() not in receiver.wire
        assert all(len(m["_meta_email"]) == 64 for m in receiver.messages)


class Workers:
    """``vigil worker --only graylog:main`` processes shipping to ``receiver``, as an
    operator runs them; every one is killed at the end, and their output kept in a log
    that a failed wait shows."""

    def __init__(self, store: Store, receiver: TcpReceiver, tmp_path: Path):
        self.env = {
            **os.environ,
            "VIGIL_DATABASE_URL": store.url,
            "VIGIL_GRAYLOG_DESTINATIONS": f"main=tcp://127.0.0.1:{receiver.port}",
            "VIGIL_READMODEL_POLL_SECONDS": "0.05",
            # The source tree, wherever the test runs from.
            "PYTHONPATH": str(ROOT),
        }
        self.receiver = receiver
        self.log_path = tmp_path / "worker.log"
        self.log = self.log_path.open("wb")
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        command = [str(Path(sys.executable).with_name("vigil")), "worker", "--only", "graylog:main"]
        self.processes.append(subprocess.Popen(command, env=self.env, cwd=ROOT, stderr=self.log))
        return self.processes[-1]

    def wait_for_events(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` distinct events have arrived."""
        try:
            self.receiver.wait_until(lambda: len(self.receiver.by_event_id()) >= count, timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}; the workers said:\n{self.said()}") from None

    def said(self) -> str:
        return self.log_path.read_text()[-3000:]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.log.close()


def test_a_shipper_killed_mid_stream_resumes_where_graylog_confirmed(
    store: Store, ledger: Ledger, tmp_path: Path
) -> None:
    # A slow input, so that the kill lands while the stream is flowing.
    receiver = TcpReceiver(read_delay=0.002).start()
    records: list[dict[str, Any]] = []
    for batch in range(6):
        records += ledger.record("acme", audit_events(1000, prefix=f"b{batch}"))
    try:
        with Workers(store, receiver, tmp_path) as workers:
            first = workers.start()
            workers.wait_for_events(1500)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            assert len(receiver.messages) < len(records)  # it died mid-stream
            second = workers.start()
            workers.wait_for_events(len(records))
            second.terminate()
            assert second.wait(timeout=30) == 0
    finally:
        receiver.stop()
    assert_exactly(receiver, records)


def test_one_shipper_leads_and_a_standby_takes_over_when_it_dies(
    store: Store, ledger: Ledger, tmp_path: Path
) -> None:
    receiver = TcpReceiver().start()
    followers_store = open_store(store.settings().ledger_env())
    positions = followers_store.positions
    try:
        with Workers(store, receiver, tmp_path) as workers:
            leader = workers.start()
            first = ledger.record("acme", audit_events(100, prefix="first"))
            workers.wait_for_events(100)
            workers.start()  # stands by
            second = ledger.record("acme", audit_events(100, prefix="second"))
            workers.wait_for_events(200)
            head = ledger.recorder.max_notification_id()
            receiver.wait_until(lambda: positions.max_tracking_id("graylog:main") == head, 120)
            # Two processes ran, one shipped: nothing came twice.
            twice = [event for event, copies in receiver.by_event_id().items() if len(copies) > 1]
            assert not twice, f"sent twice: {twice}; the workers said: {workers.said()}"
            leader.send_signal(signal.SIGKILL)
            third = ledger.record("acme", audit_events(100, prefix="third"))
            workers.wait_for_events(300)
    finally:
        receiver.stop()
        followers_store.close()
    assert_exactly(receiver, first + second + third)


def test_the_follower_is_named_after_its_destination(store: Store, ledger: Ledger) -> None:
    with shipping(store, ledger, "eu=udp://127.0.0.1:9,us=udp://127.0.0.1:9") as (_, runners):
        shippers = [runner.follower for runner in runners]
    assert all(isinstance(shipper, GraylogShipper) for shipper in shippers)
    assert [shipper.name for shipper in shippers] == ["graylog:eu", "graylog:us"]


def test_no_destination_means_no_shipper(store: Store, ledger: Ledger) -> None:
    settings = store.settings()
    followers_store = open_store(settings.ledger_env())
    try:
        followers = build_followers(settings, ledger, followers_store)
        assert not [f for f in followers if f.name.startswith("graylog")]
        for follower in followers:
            follower.close()
    finally:
        followers_store.close()


def test_an_unknown_destination_is_refused_by_name(store: Store, ledger: Ledger) -> None:
    settings = store.settings(graylog_destinations="main=tcp://127.0.0.1:9")
    followers_store = open_store(settings.ledger_env())
    try:
        with pytest.raises(ValueError, match="graylog:main"):
            build_followers(settings, ledger, followers_store, only=["graylog:nowhere"])
    finally:
        followers_store.close()
