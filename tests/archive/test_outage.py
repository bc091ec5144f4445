"""S3 out of reach: the archiver holds its position, keeps retrying with backoff, says
why in its status, and catches up once S3 answers again; ingest never waits for it."""

from __future__ import annotations

import time

from moto.server import ThreadedMotoServer

from audit_core.archive.digests import LogKeys
from audit_core.archive.exceptions import ArchiveUnavailableError
from audit_core.archive.s3 import ArchiveBucket
from audit_core.followers import Backoff
from tests.archive.conftest import bucket_settings, free_port
from tests.archive.harness import archived_lines, line_hashes, record, start_archiving
from tests.stores import SQLiteStore


def test_s3_down_then_up_is_caught_up(sqlite_store: SQLiteStore, keys: LogKeys) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    bucket = ArchiveBucket(bucket_settings(endpoint, timeout_seconds=0.5))
    bucket.create()
    server.stop()

    ledger = sqlite_store.open_ledger()
    archiving = start_archiving(
        ledger, sqlite_store.settings().ledger_env(), bucket, keys, segment_seconds=0.0
    )
    archiving.runner.backoff = Backoff(base=0.05, cap=0.2)
    archiving.follower.clock = time.time  # segments close as soon as the runner ticks
    archiving.runner.start()
    try:
        records = record(ledger, "acme", 25)  # recorded while S3 is down
        archiving.runner.nudge()
        # Wait for the runner to have met S3's absence (a busy machine may first show
        # it a transient database error instead).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            isinstance(archiving.runner.last_error, ArchiveUnavailableError)
            and "S3 (" in (archiving.runner.status().last_error or "")
        ):
            time.sleep(0.05)
        assert isinstance(archiving.runner.last_error, ArchiveUnavailableError)
        assert archiving.follower.position() == 0
        status = archiving.runner.status()
        assert status.lag_events == status.head > 0  # nothing confirmed
        assert "cannot" in (status.last_error or "")

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # moto keeps its buckets in the process: the same S3 is back
        archiving.runner.catch_up(timeout=60)

        assert line_hashes(archived_lines(bucket, "acme")) == [r["hash"] for r in records]
        assert archiving.runner.status().lag_events == 0
    finally:
        archiving.close()
        server.stop()
