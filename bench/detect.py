"""Detection: throughput of the shipped rules, beside the ledger's read rate, and the
latency from commit to incident at a steady rate, in one run.

Run ``python bench/detect.py`` (see ``--help``; SQLite in a temporary directory unless
``--postgres URL``). It prints:

1. Throughput. Simulated days of a tenant (``incident.simulation``: logins, work,
   exports, integrations, with the attacks mixed in) are recorded in the ledger. Then
   the ledger's notification log is read and decoded, a page at a time, as the
   follower runner reads it (the baseline), and the same decoded records go through
   every shipped rule (``Detector.process``); each figure is records per second, best
   of ``--repeat`` passes, interleaved. The target is 20,000 records/s.
2. Latency. The detector follower runs in its runner's thread, woken by each commit as
   the API wakes its followers, while a writer records ordinary activity at a steady
   ``--rate`` (2,000 events/s) in batches every 100 ms; every ``--attack-every`` seconds
   one batch holds an admin grant outside the change window (a rule that fires on one
   record). Latency is from the moment ``record`` returned for that batch to the moment
   the transaction holding its incident committed; p50 and p99 are printed. The
   target is a p99 of at most one second.

The script only prints.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventsourcing.persistence import Tracking

from api.settings import Settings
from audit_core import Ledger
from audit_core.followers import FollowerRunner, Page, open_store
from incident.detector import Detection, Detector, StateChanges
from incident.follower import DetectorFollower, IncidentsSink
from incident.rules import load_rules
from incident.simulation import Event, Tenant

RULES = Path(__file__).resolve().parent.parent / "runbooks" / "rules"
PAGE = 1000


@contextlib.contextmanager
def database(postgres: str | None) -> Iterator[dict[str, str]]:
    """A fresh ledger database: a SQLite file, or a new PostgreSQL schema."""
    if postgres is None:
        with tempfile.TemporaryDirectory() as folder:
            yield Settings(database_url=f"sqlite:///{folder}/bench.db").ledger_env()
        return
    from ledger import connect, fresh_schema, ledger_env

    admin_env = Settings(database_url=postgres).ledger_env()
    with connect(admin_env) as admin, fresh_schema(admin, "detect") as schema:
        yield ledger_env(postgres, schema)


def simulated(days: int, users: int) -> list[Event]:
    tenant = Tenant.make("acme", users=users)
    start = date(2026, 11, 16)
    events = tenant.directory(datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
    for offset in range(days):
        day = start + timedelta(days=offset)
        events += tenant.ordinary_day(day)
        noon = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)
        events += tenant.brute_force(noon, tenant.users[offset % users])
        events += tenant.bulk_export(noon + timedelta(hours=1), tenant.users[(offset + 9) % users])
    events.sort(key=lambda event: event["occurred_at"])
    return events


def record(ledger: Ledger, events: Sequence[Event]) -> None:
    for start in range(0, len(events), 1000):
        ledger.record("acme", events[start : start + 1000])


def read_pages(ledger: Ledger) -> list[list[dict[str, Any]]]:
    """The notification log read and decoded as the runner gives it to a follower."""
    pages: list[list[dict[str, Any]]] = []
    position = 0
    while True:
        notes = ledger.ledger_recorder.recorded_after(position, PAGE)
        if not notes.ids:
            return pages
        pages.append(Page("bench", notes.ids, notes.states, ledger.ledger_mapper).records)
        position = notes.ids[-1]


def throughput(env: dict[str, str], days: int, users: int, repeat: int) -> None:
    events = simulated(days, users)
    ledger = Ledger(env)
    try:
        record(ledger, events)
        rules = load_rules(RULES)
        read_best = detect_best = float("inf")
        detections = 0
        for _ in range(repeat):
            began = time.perf_counter()
            pages = read_pages(ledger)
            read_best = min(read_best, time.perf_counter() - began)
            detector = Detector(rules)
            began = time.perf_counter()
            found = 0
            for page in pages:
                found += len(detector.process(page))
                detector.take_changes()
            detect_best = min(detect_best, time.perf_counter() - began)
            detections = found
    finally:
        ledger.close()
    count = len(events)
    print(f"throughput over {count:,} records ({days} simulated days, {len(rules)} rules):")
    print(f"  ledger read (notification log, decoded)  {count / read_best:>10,.0f} records/s")
    print(f"  detection (all shipped rules)            {count / detect_best:>10,.0f} records/s")
    print(
        f"  read and detect, one after the other     {count / (read_best + detect_best):>10,.0f}"
        " records/s"
    )
    print(f"  ({detections} detections; target >= 20,000 records/s for detection)")


class TimedSink(IncidentsSink):
    """The follower's sink, noting when each incident's transaction committed."""

    def __init__(self, sink: IncidentsSink):
        super().__init__(sink.incidents)
        self.opened: dict[int, float] = {}
        """Seq of the record that opened an incident → when its write returned."""

    def open_or_attach(
        self, detections: Sequence[Detection], changes: StateChanges, tracking: Tracking | None
    ) -> list[Any]:
        results = super().open_or_attach(detections, changes, tracking)
        now = time.perf_counter()
        for detection, _, opened in results:
            if opened:
                self.opened.setdefault(detection.evidence[0].seq, now)
        return results


def latency(env: dict[str, str], rate: int, seconds: float, attack_every: float) -> None:
    ledger = Ledger(env)
    store = open_store(env)
    follower = DetectorFollower.open(env, ledger, load_rules(RULES))
    sink = TimedSink(follower.sink)
    follower.sink = sink
    runner = FollowerRunner(ledger, follower, store, poll_interval=0.2)
    tenant = Tenant.make("acme", users=300)
    # Ordinary activity to draw batches from, and admin grants at 02:30 on a Saturday.
    pool = tenant.ordinary_day(date(2026, 11, 16))
    night = datetime(2026, 11, 21, 2, 30, tzinfo=UTC)
    committed: dict[int, float] = {}
    batch = max(1, rate // 10)
    try:
        runner.start()
        began = time.perf_counter()
        next_attack = began + attack_every
        sent = attacks = 0
        while time.perf_counter() - began < seconds:
            tick = began + sent / rate
            time.sleep(max(0.0, tick - time.perf_counter()))
            events = [dict(pool[(sent + n) % len(pool)]) for n in range(batch)]
            for event in events:
                event["id"] = f"bench-{sent}-{event['id']}"
            attack_index = None
            if time.perf_counter() >= next_attack:
                attacks += 1
                member = tenant.users[5 + attacks % 290]
                [grant] = tenant.privilege_escalation(
                    night + timedelta(seconds=attacks), tenant.users[0], member
                )
                grant["target"] = {"type": "user", "id": f"{member.id}-{attacks}"}
                events[-1] = grant
                attack_index = len(events) - 1
                next_attack += attack_every
            records = ledger.record("acme", events)
            if attack_index is not None:
                committed[records[attack_index]["seq"]] = time.perf_counter()
            runner.nudge()
            sent += batch
        elapsed = time.perf_counter() - began
        deadline = time.perf_counter() + 30
        while set(committed) - set(sink.opened) and time.perf_counter() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
        follower.close()
        store.close()
        ledger.close()
    delays = sorted(sink.opened[seq] - at for seq, at in committed.items() if seq in sink.opened)
    missing = len(committed) - len(delays)
    print(
        f"latency, commit -> incident committed, at {sent / elapsed:,.0f} events/s for "
        f"{elapsed:.1f} s ({len(committed)} incidents):"
    )
    if delays:
        p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
        print(
            f"  p50 {statistics.median(delays) * 1000:,.0f} ms   p99 {p99 * 1000:,.0f} ms   "
            f"max {delays[-1] * 1000:,.0f} ms   (target p99 <= 1,000 ms)"
        )
    if missing:
        print(f"  {missing} incident(s) not opened within 30 s of the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL instead of SQLite")
    parser.add_argument("--days", type=int, default=3, help="simulated days (throughput)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000, help="events/s (latency)")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run length")
    parser.add_argument("--attack-every", type=float, default=0.25, help="seconds")
    args = parser.parse_args()
    print(f"database: {'PostgreSQL' if args.postgres else 'SQLite (temporary file)'}")
    with database(args.postgres) as env:
        throughput(env, args.days, args.users, args.repeat)
    with database(args.postgres) as env:
        latency(env, args.rate, args.seconds, args.attack_every)


if __name__ == "__main__":
    main()
