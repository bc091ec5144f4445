"""Restore: a ledger rebuilt from S3 alone into an empty database is the ledger that
was archived, record for record, and proves itself against the archived checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_core import verify
from audit_core.archive.digests import LogKeys
from audit_core.archive.exceptions import RestoreError
from audit_core.archive.restore import Restorer
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.verify import ArchiveVerifier
from tests.archive.harness import archive_everything, record, start_archiving
from tests.stores import SQLiteStore, Store


def test_restores_every_tenant_into_an_empty_database(
    store: Store, bucket: ArchiveBucket, keys: LogKeys, tmp_path: Path
) -> None:
    source = store.open_ledger()
    originals = {"acme": record(source, "acme", 1234), "globex": record(source, "globex", 17)}
    archiving = start_archiving(
        source, store.settings().ledger_env(), bucket, keys, segment_records=500
    )
    archive_everything(archiving)
    archiving.close()

    target = SQLiteStore(tmp_path / "restored.db")
    try:
        restored = target.open_ledger()
        reports = Restorer(bucket, keys).restore(restored)

        assert {r.tenant: (r.records, r.tree_size) for r in reports} == {
            "acme": (1234, 1234),
            "globex": (17, 17),
        }
        for tenant, records in originals.items():
            assert restored.read(tenant, limit=2000) == records
            assert restored.get(tenant, records[7]["id"]) == records[7]
        assert all(report.ok for report in verify(restored))
        assert all(r.ok for r in ArchiveVerifier(bucket, keys).verify(ledger=restored))
    finally:
        target.close()


def test_refuses_a_database_that_holds_a_log(
    sqlite_store: SQLiteStore, bucket: ArchiveBucket, keys: LogKeys
) -> None:
    ledger = sqlite_store.open_ledger()
    record(ledger, "acme", 3)
    with pytest.raises(RestoreError, match="empty database"):
        Restorer(bucket, keys).restore(ledger)


def test_refuses_an_archive_that_does_not_verify(
    sqlite_store: SQLiteStore, open_bucket: ArchiveBucket, keys: LogKeys, tmp_path: Path
) -> None:
    source = sqlite_store.open_ledger()
    record(source, "acme", 25)
    archiving = start_archiving(source, sqlite_store.settings().ledger_env(), open_bucket, keys)
    archive_everything(archiving)
    archiving.close()
    segment = next(k for k in open_bucket.keys("audit/acme/") if k.endswith(".jsonl.gz"))
    open_bucket.client.delete_object(Bucket=open_bucket.bucket, Key=segment)

    target = SQLiteStore(tmp_path / "restored.db")
    try:
        restored = target.open_ledger()
        with pytest.raises(RestoreError, match="missing_segment seq 0-9"):
            Restorer(open_bucket, keys).restore(restored)
        assert restored.tenants() == []
    finally:
        target.close()
