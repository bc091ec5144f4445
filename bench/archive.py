"""Archive throughput to a local S3 server, beside a bare put_object loop of the same
bytes, and `archive verify` throughput, in one run.

Run ``python bench/archive.py`` (see ``--help``). It starts moto's S3 server as a
process of its own on loopback, records ``--records`` events of ``bench/ledger.py``'s
shape into a fresh ledger (SQLite file by default, or ``--database-url``), then:

0. Floor: the follower runner reading and decoding every page for a sink that sends
   nothing.
1. Vigil: the archiver (the real sink follower, driven by the follower runner) reads
   every record, cuts segments of ``--segment-records``, gzips them, writes each segment
   and its signed digest with Object Lock, SHA-256 checksum and SSE; records/s from the
   first page to the last digest.
2. Baseline: a bare ``put_object`` loop of the very segment bytes the archiver wrote
   (no lock, no checksum, no digest, nothing read from the ledger); records/s for the
   same records.
3. ``archive verify`` from S3 alone: every digest opened and checked, every segment
   re-hashed and its tree recomputed; records/s.

The script only prints. Targets (issue 13): archive >= 50,000 records/s.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import make_events  # type: ignore[import-not-found]  # bench/ledger.py

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
    """Reads and decodes every page as a sink does, and sends nothing: the floor."""

    name = "bench-null"

    def __init__(self, store: FollowerStore):
        self.tracking = store.positions

    def deliver(self, page: Page) -> int | None:
        page.records  # noqa: B018  (decoding is part of any sink's cost)
        return None

    def clear(self) -> None:
        pass


def fill(ledger: Ledger, records: int, tenants: int) -> None:
    events = make_events(records, "archive")
    for start in range(0, records, 1000):
        tenant = f"tenant-{(start // 1000) % tenants}"
        ledger.record(tenant, [orjson.loads(raw) for raw in events[start : start + 1000]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--segment-records", type=int, default=10_000)
    parser.add_argument("--database-url", default="")
    options = parser.parse_args()

    server, endpoint = start_s3()
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-archive-"))
    url = options.database_url or f"sqlite:///{workdir / 'ledger.db'}"
    env = Settings(database_url=url).ledger_env()
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
        follower.flush()
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
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
