"""Archive throughput to a local S3 server, beside a bare put_object loop of the same
bytes, and `archive verify` throughput, in one run.

Run ``python bench/archive.py`` (see ``--help``). It starts moto's S3 server as a
process of its own on loopback, records ``--records`` events of ``bench/ledger.py``'s
shape into a fresh ledger (SQLite file by default, or ``--database-url``), then:

0. Floor: the follower runner reading every page for a sink that does nothing with it.
1. Vigil: the archiver (the real sink follower, driven by the follower runner) reads
   every record, cuts segments of ``--segment-records``, gzips them, writes each segment
   and its signed digest with Object Lock, SHA-256 checksum and SSE; records/s from the
   first page to the last digest.
2. Baseline: a bare ``put_object`` loop of the very segment bytes the archiver wrote
   (no lock, no checksum, no digest, nothing read from the ledger); records/s for the
   same records.
3. ``archive verify`` from S3 alone: every digest opened and checked, every segment
   re-hashed and its tree recomputed; records/s.

4. Lag: a fresh ledger fed at ``--rate`` events/s for ``--lag-seconds`` while the
   archiver runs in its own thread (segments of ``--lag-segment-seconds``); the age of
   its oldest unconfirmed record, sampled four times a second, beside the target.

The script only prints. Targets (issue 13): archive >= 50,000 records/s; archive lag at
2,000 events/s <= the segment interval + 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import (  # type: ignore[import-not-found]  # bench/ledger.py
    connect,
    fresh_schema,
    make_events,
    with_schema,
)

from api.settings import Settings
from audit_core import Ledger
from audit_core.archive.digests import LogKeys
from audit_core.archive.follower import ArchiveFollower
from audit_core.archive.s3 import ArchiveBucket, BucketSettings
from audit_core.archive.verify import ArchiveVerifier
from audit_core.archive.writer import ArchiveWriter
from audit_core.followers import FollowerRunner, FollowerStore, Page, Sink, open_store
from audit_core.transparency.note import Signer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_s3() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return process, endpoint
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("moto_server did not start")


class NullSink(Sink):
    """Takes every page the runner reads, and does nothing with it: the floor."""

    name = "bench-null"

    def __init__(self, store: FollowerStore):
        self.tracking = store.positions

    def deliver(self, page: Page) -> int | None:
        return None

    def clear(self) -> None:
        pass


def fill(ledger: Ledger, records: int, tenants: int) -> None:
    events = make_events(records, "archive")
    for start in range(0, records, 1000):
        tenant = f"tenant-{(start // 1000) % tenants}"
        ledger.record(tenant, [orjson.loads(raw) for raw in events[start : start + 1000]])


def measure_lag(
    options: argparse.Namespace,
    endpoint: str,
    workdir: Path,
    bucket: ArchiveBucket,
    keys: LogKeys,
) -> None:
    env = Settings(database_url=f"sqlite:///{workdir / 'lag.db'}").ledger_env()
    ledger = Ledger(env)
    store = open_store(env)
    follower = ArchiveFollower(
        ArchiveWriter(bucket, keys),
        store.positions,
        segment_records=1_000_000,
        segment_seconds=options.lag_segment_seconds,
        name="archive-lag",
    )
    runner = FollowerRunner(ledger, follower, store, poll_interval=0.2, page_size=2000)
    events = make_events(int(options.rate * options.lag_seconds) + options.rate, "lag")
    stop = threading.Event()
    lags: list[float] = []

    def sample() -> None:
        while not stop.wait(0.25):
            lag = runner.status().lag_seconds
            if lag is not None:
                lags.append(lag)

    sampler = threading.Thread(target=sample, daemon=True)
    runner.start()
    sampler.start()
    tick, sent, started = 0.1, 0, time.perf_counter()
    per_tick = max(1, int(options.rate * tick))
    while time.perf_counter() - started < options.lag_seconds:
        batch = [orjson.loads(raw) for raw in events[sent : sent + per_tick]]
        ledger.record("tenant-lag", batch)
        runner.nudge()
        sent += len(batch)
        time.sleep(max(0.0, started + sent / options.rate - time.perf_counter()))
    achieved = sent / (time.perf_counter() - started)
    runner.catch_up(timeout=options.lag_segment_seconds + 60)
    stop.set()
    sampler.join()
    runner.stop()
    follower.close()
    store.close()
    ledger.close()
    lags.sort()

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))] if lags else float("nan")

    print(
        f"lag at {achieved:,.0f} events/s for {options.lag_seconds:.0f} s, segments every "
        f"{options.lag_segment_seconds:g} s: p50 {pct(0.5):.1f} s, p99 {pct(0.99):.1f} s, "
        f"max {lags[-1] if lags else float('nan'):.1f} s  (target <= "
        f"{options.lag_segment_seconds + 5:g} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--segment-records", type=int, default=10_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--rate", type=int, default=2000, help="events/s for the lag run")
    parser.add_argument("--lag-seconds", type=float, default=20.0, help="0: no lag run")
    parser.add_argument("--lag-segment-seconds", type=float, default=5.0)
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-archive-"))
    url = options.database_url or f"sqlite:///{workdir / 'ledger.db'}"
    with contextlib.ExitStack() as stack:
        if url.startswith("postgres"):
            # A fresh schema, dropped afterwards: never the database's own tables.
            admin = stack.enter_context(connect(Settings(database_url=url).ledger_env()))
            url = with_schema(url, stack.enter_context(fresh_schema(admin, "archive")))
        run(options, url, workdir)


def run(options: argparse.Namespace, url: str, workdir: Path) -> None:
    server, endpoint = start_s3()
    env = Settings(database_url=url, encryption_key=None).ledger_env()
    try:
        ledger = Ledger(env)
        started = time.perf_counter()
        fill(ledger, options.records, options.tenants)
        print(f"recorded {options.records} events in {time.perf_counter() - started:.1f} s")

        s3 = BucketSettings(
            bucket="vigil-bench",
            prefix="bench",
            endpoint_url=endpoint,
            region="eu-west-1",
            access_key_id="bench",
            secret_access_key="bench",  # noqa: S106 (moto's, on loopback)
            retention_days=1,
        )
        bucket = ArchiveBucket(s3)
        bucket.create()
        keys = LogKeys("bench.vigil/log", Signer.generate("bench"))
        store = open_store(env)
        now = [time.time()]
        follower = ArchiveFollower(
            ArchiveWriter(bucket, keys),
            store.positions,
            segment_records=options.segment_records,
            segment_seconds=3600,
            clock=lambda: now[0],
        )
        reader = NullSink(store)
        started = time.perf_counter()
        FollowerRunner(ledger, reader, store, page_size=2000).drain()
        read_time = time.perf_counter() - started

        runner = FollowerRunner(ledger, follower, store, page_size=2000)
        started = time.perf_counter()
        runner.drain()
        now[0] += 7200  # the last, partly filled segments are due: the next tick closes them
        follower.settle()
        archive_time = time.perf_counter() - started
        segments = [k for k in bucket.keys("bench/") if k.endswith(".jsonl.gz")]
        assert follower.records_written == options.records, follower.records_written

        bodies = [bucket.get(key) or b"" for key in segments]
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="eu-west-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106
        )
        client.create_bucket(
            Bucket="vigil-bench-bare",
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )
        started = time.perf_counter()
        for number, body in enumerate(bodies):
            client.put_object(Bucket="vigil-bench-bare", Key=f"bare/{number}", Body=body)
        bare_time = time.perf_counter() - started

        started = time.perf_counter()
        reports = ArchiveVerifier(bucket, keys).verify()
        verify_time = time.perf_counter() - started
        assert all(report.ok for report in reports)
        verified = sum(report.records for report in reports)

        megabytes = sum(map(len, bodies)) / 1e6
        n = options.records
        print(
            f"{n} records, {options.tenants} tenants, {len(segments)} segments of up to "
            f"{options.segment_records} records, {megabytes:.1f} MB gzip'd"
        )
        row = "{:<34}{:>12,.0f} records/s  {:6.2f} s{}"
        print(row.format("archive (Vigil)", n / archive_time, archive_time, ""))
        print(row.format("ledger pages read, nothing sent", n / read_time, read_time, "  floor"))
        print(row.format("bare put_object, same bytes", n / bare_time, bare_time, "  baseline"))
        print(row.format("archive verify (S3 alone)", verified / verify_time, verify_time, ""))
        store.close()
        ledger.close()
        if options.lag_seconds > 0:
            measure_lag(options, endpoint, workdir, bucket, keys)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
