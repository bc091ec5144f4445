"""Ledger, archiver and runner put together the way a worker process does."""

from __future__ import annotations

import gzip
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from audit_core import Ledger
from audit_core.archive.digests import LogKeys
from audit_core.archive.follower import ArchiveFollower
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.segments import parse_key, tenant_prefix
from audit_core.archive.writer import ArchiveWriter
from audit_core.followers import FollowerRunner, FollowerStore, open_store
from tests.events import audit_events

LOG_ORIGIN = "vigil.test/log"


class FakeClock:
    """The wall clock as it is at creation, moved on by hand: "T seconds later" with
    no sleep."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Archiving:
    ledger: Ledger
    store: FollowerStore
    follower: ArchiveFollower
    runner: FollowerRunner
    clock: FakeClock

    def close(self) -> None:
        self.runner.stop()
        self.store.close()


def start_archiving(
    ledger: Ledger,
    env: dict[str, str],
    bucket: ArchiveBucket,
    keys: LogKeys,
    *,
    segment_records: int = 10,
    segment_seconds: float = 60.0,
    page_size: int = 1000,
) -> Archiving:
    store = open_store(env)
    clock = FakeClock()
    follower = ArchiveFollower(
        ArchiveWriter(bucket, keys),
        store.positions,
        segment_records=segment_records,
        segment_seconds=segment_seconds,
        clock=clock,
    )
    runner = FollowerRunner(ledger, follower, store, poll_interval=0.05, page_size=page_size)
    return Archiving(ledger, store, follower, runner, clock)


def record(ledger: Ledger, tenant: str, count: int, prefix: str = "evt") -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for start in range(0, count, 500):
        events = audit_events(min(500, count - start), prefix=f"{prefix}-{start}")
        records += ledger.record(tenant, events)
    return records


def archived_objects(bucket: ArchiveBucket, tenant: str) -> dict[str, list[tuple[int, int]]]:
    """The (first seq, last seq) of every segment and digest of a tenant, by kind."""
    found: dict[str, list[tuple[int, int]]] = {"segment": [], "digest": []}
    for key in bucket.keys(tenant_prefix(bucket.settings.prefix, tenant)):
        name = parse_key(key)
        assert name is not None, f"unexpected key {key}"
        found[name.kind].append((name.first_seq, name.last_seq))
    return found


def archived_lines(bucket: ArchiveBucket, tenant: str) -> list[bytes]:
    """Every record line of the tenant's segments, in key order (current versions)."""
    lines: list[bytes] = []
    for key in bucket.keys(tenant_prefix(bucket.settings.prefix, tenant)):
        if key.endswith(".jsonl.gz"):
            data = bucket.get(key)
            assert data is not None
            lines += gzip.decompress(data).splitlines()
    return lines


def line_hashes(lines: list[bytes]) -> list[str]:
    return [hashlib.sha256(line).hexdigest() for line in lines]


def archive_everything(archiving: Archiving) -> None:
    """Archive every record, closing the open segments as their interval would."""
    archiving.runner.drain()
    archiving.clock.now += archiving.follower.segment_seconds + 3600
    archiving.runner.drain()
