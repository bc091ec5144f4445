"""What Object Lock gives the archive, through the archiver's own S3 credentials:
nothing it wrote can be deleted or replaced while retained, and a version put on top
changes nothing that verify or restore read."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError

from audit_core.archive.digests import LogKeys
from audit_core.archive.exceptions import ArchiveUnavailableError
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.verify import ArchiveVerifier, Kind
from tests.archive.conftest import bucket_settings
from tests.archive.harness import archive_everything, record, start_archiving
from tests.stores import SQLiteStore


def archive_some(store: SQLiteStore, bucket: ArchiveBucket, keys: LogKeys) -> list[tuple[str, str]]:
    """Archive 25 records; every (key, version id) written."""
    ledger = store.open_ledger()
    record(ledger, "acme", 25)
    archiving = start_archiving(ledger, store.settings().ledger_env(), bucket, keys)
    archive_everything(archiving)
    archiving.close()
    versions = bucket.client.list_object_versions(Bucket=bucket.bucket)["Versions"]
    return [(v["Key"], v["VersionId"]) for v in versions]


def test_every_object_is_written_locked_encrypted_and_checksummed(
    sqlite_store: SQLiteStore, bucket: ArchiveBucket, keys: LogKeys
) -> None:
    written = archive_some(sqlite_store, bucket, keys)
    assert len(written) == 6  # segments 0-9, 10-19, 20-24 and their digests
    for key, version in written:
        head = bucket.client.head_object(
            Bucket=bucket.bucket, Key=key, VersionId=version, ChecksumMode="ENABLED"
        )
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC)
        data = bucket.get(key, version)
        assert data is not None
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_compliance_objects_cannot_be_deleted_even_bypassing_governance(
    sqlite_store: SQLiteStore, bucket: ArchiveBucket, keys: LogKeys
) -> None:
    for key, version in archive_some(sqlite_store, bucket, keys):
        with pytest.raises(ArchiveUnavailableError, match="AccessDenied"):
            bucket.delete_version(key, version)
        with pytest.raises(ClientError, match="AccessDenied"):
            bucket.client.delete_object(
                Bucket=bucket.bucket, Key=key, VersionId=version, BypassGovernanceRetention=True
            )
    assert ArchiveVerifier(bucket, keys).verify_tenant("acme").ok


def test_a_version_put_on_top_or_a_delete_marker_changes_nothing_verified(
    sqlite_store: SQLiteStore, bucket: ArchiveBucket, keys: LogKeys
) -> None:
    written = archive_some(sqlite_store, bucket, keys)
    originals = {key: bucket.get(key, version) for key, version in written}
    segment = next(key for key, _ in written if key.endswith(".jsonl.gz"))
    digest = next(key for key, _ in written if key.endswith(".digest"))

    bucket.put(segment, b"forged", "application/x-ndjson")
    bucket.delete_version(digest, None)  # a delete marker, not a deletion

    for key, version in written:
        assert bucket.get(key, version) == originals[key]
    report = ArchiveVerifier(bucket, keys).verify_tenant("acme")
    assert report.records == 25
    assert sorted((f.kind, f.key) for f in report.findings) == sorted(
        [(Kind.REPLACED, segment), (Kind.REPLACED, digest)]
    )


def test_governance_mode_with_legal_hold_and_sse_kms(
    s3_endpoint: str, sqlite_store: SQLiteStore, keys: LogKeys
) -> None:
    bucket = ArchiveBucket(
        bucket_settings(
            s3_endpoint,
            lock_mode="GOVERNANCE",
            legal_hold=True,
            encryption="aws:kms",
            kms_key_id="alias/vigil-archive",
        )
    )
    bucket.create()
    for key, version in archive_some(sqlite_store, bucket, keys):
        head = bucket.client.head_object(Bucket=bucket.bucket, Key=key, VersionId=version)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockLegalHoldStatus"] == "ON"
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == "alias/vigil-archive"
        # The legal hold stands even for a caller allowed to bypass governance retention.
        with pytest.raises(ClientError, match="AccessDenied"):
            bucket.client.delete_object(
                Bucket=bucket.bucket, Key=key, VersionId=version, BypassGovernanceRetention=True
            )
