"""The archiver as the follower runner drives it, against moto's S3 over HTTP."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest
import rfc8785

from audit_core.archive.digests import LogKeys
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.segments import compress
from tests.archive.harness import (
    Archiving,
    archived_lines,
    archived_objects,
    line_hashes,
    record,
    start_archiving,
)
from tests.stores import Store


@pytest.fixture
def archiving(store: Store, bucket: ArchiveBucket, keys: LogKeys) -> Iterator[Archiving]:
    ledger = store.open_ledger()
    running = start_archiving(ledger, store.settings().ledger_env(), bucket, keys)
    yield running
    running.close()


def test_cuts_each_tenant_into_segments_of_the_configured_size(
    archiving: Archiving, bucket: ArchiveBucket
) -> None:
    acme = record(archiving.ledger, "acme", 25)
    record(archiving.ledger, "globex", 7)
    archiving.runner.drain()

    assert archived_objects(bucket, "acme") == {
        "segment": [(0, 9), (10, 19)],
        "digest": [(0, 9), (10, 19)],
    }
    assert archived_objects(bucket, "globex") == {"segment": [], "digest": []}
    assert line_hashes(archived_lines(bucket, "acme")) == [r["hash"] for r in acme[:20]]
    # What is still held back is not confirmed: a crash now must read it again.
    assert archiving.follower.position() < (archiving.ledger.recorder.max_notification_id() or 0)


def test_closes_a_segment_once_its_first_record_has_waited_the_interval(
    archiving: Archiving, bucket: ArchiveBucket
) -> None:
    acme = record(archiving.ledger, "acme", 25)
    globex = record(archiving.ledger, "globex", 7)
    archiving.runner.drain()
    archiving.clock.now += 59
    archiving.runner.drain()
    assert archived_objects(bucket, "globex")["segment"] == []

    archiving.clock.now += 2
    archiving.runner.drain()

    assert archived_objects(bucket, "acme")["segment"] == [(0, 9), (10, 19), (20, 24)]
    assert archived_objects(bucket, "globex")["segment"] == [(0, 6)]
    assert line_hashes(archived_lines(bucket, "acme")) == [r["hash"] for r in acme]
    assert line_hashes(archived_lines(bucket, "globex")) == [r["hash"] for r in globex]
    assert archiving.follower.position() == (archiving.ledger.recorder.max_notification_id() or 0)


def test_a_segment_line_is_the_records_canonical_bytes_without_its_hash(
    archiving: Archiving, bucket: ArchiveBucket
) -> None:
    records = record(archiving.ledger, "acme", 10)
    archiving.runner.drain()

    lines = archived_lines(bucket, "acme")
    assert [line.decode() for line in lines] == [
        rfc8785.dumps({k: v for k, v in r.items() if k != "hash"}).decode() for r in records
    ]


def test_same_records_give_the_same_segment_bytes() -> None:
    body = b'{"seq":0}\n{"seq":1}\n'
    assert compress(body) == compress(body)
    assert gzip.decompress(compress(body)) == body


def test_a_restarted_archiver_does_not_archive_twice(
    store: Store, archiving: Archiving, bucket: ArchiveBucket, keys: LogKeys
) -> None:
    record(archiving.ledger, "acme", 15)
    archiving.runner.drain()
    # A second process takes over from a position that lags what S3 holds.
    archiving.store.states.rewind("archive", 0)
    second = start_archiving(archiving.ledger, store.settings().ledger_env(), bucket, keys)
    try:
        record(archiving.ledger, "acme", 10, prefix="more")
        second.runner.drain()
        assert archived_objects(bucket, "acme")["segment"] == [(0, 9), (10, 19)]
        assert len(archived_lines(bucket, "acme")) == 20
    finally:
        second.close()


def test_stops_at_a_record_changed_behind_the_ledgers_back(
    store: Store, archiving: Archiving, bucket: ArchiveBucket
) -> None:
    record(archiving.ledger, "acme", 25)
    store.edit_stored_record("acme", 14, lambda r: r.update(action="x.forged"))

    archiving.runner.drain()

    assert archiving.runner.stopped_at is not None
    reason = archiving.store.states.state("archive").stopped_reason or ""
    assert "seq 14: the record does not hash to its stored hash" in reason
    assert archived_objects(bucket, "acme")["segment"] == [(0, 9)]


def test_stops_when_the_ledger_forked_from_what_was_archived(
    store: Store, archiving: Archiving, bucket: ArchiveBucket
) -> None:
    record(archiving.ledger, "acme", 10)
    archiving.runner.drain()
    assert archived_objects(bucket, "acme")["segment"] == [(0, 9)]
    # The database comes back from a backup whose last record differs from the archive's.
    store.edit_stored_record("acme", 9, lambda r: r.update(action="x.other"), rehash=True)
    archiving.store.states.rewind("archive", 0)

    archiving.runner.drain()

    reason = archiving.store.states.state("archive").stopped_reason or ""
    assert "seq 9: the ledger's record differs from the archived one" in reason
