"""`archive verify` from S3 alone: a clean archive passes; each kind of damage is
reported as what it is, at the seqs and key where it is."""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import pytest

from audit_core import Ledger
from audit_core.archive.digests import LogKeys
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.segments import parse_key, tenant_prefix
from audit_core.archive.verify import ArchiveVerifier, Kind
from audit_core.transparency.note import Signer, sign_note
from tests.archive.harness import LOG_ORIGIN, archive_everything, record, start_archiving
from tests.stores import SQLiteStore


@dataclass
class Archived:
    ledger: Ledger
    bucket: ArchiveBucket
    keys: LogKeys

    def key(self, first: int, kind: str) -> str:
        for key in self.bucket.keys(tenant_prefix(self.bucket.settings.prefix, "acme")):
            name = parse_key(key)
            if name is not None and name.first_seq == first and name.kind == kind:
                return key
        raise AssertionError(f"no {kind} starting at {first}")

    def findings(self, with_ledger: bool = False) -> list[tuple[Kind, int | None, int | None]]:
        report = ArchiveVerifier(self.bucket, self.keys).verify_tenant(
            "acme", self.ledger if with_ledger else None
        )
        return [(f.kind, f.first_seq, f.last_seq) for f in report.findings]

    def replace(self, key: str, data: bytes) -> None:
        self.bucket.client.put_object(Bucket=self.bucket.bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.bucket.client.delete_object(Bucket=self.bucket.bucket, Key=key)


@pytest.fixture
def archived(sqlite_store: SQLiteStore, open_bucket: ArchiveBucket, keys: LogKeys) -> Archived:
    """35 records of acme in segments 0-9, 10-19, 20-29, 30-34, in a bucket without lock."""
    ledger = sqlite_store.open_ledger()
    record(ledger, "acme", 35)
    archiving = start_archiving(ledger, sqlite_store.settings().ledger_env(), open_bucket, keys)
    try:
        archive_everything(archiving)
    finally:
        archiving.close()
    return Archived(ledger, open_bucket, keys)


def test_an_intact_archive_verifies_with_every_record_counted(archived: Archived) -> None:
    report = ArchiveVerifier(archived.bucket, archived.keys).verify_tenant("acme", archived.ledger)
    assert report.ok, report.findings
    assert (report.segments, report.records, report.next_seq) == (4, 35, 35)
    assert report.checkpoint_size == 35
    assert report.findings == []


def test_a_deleted_segment_is_missing_and_nothing_else(archived: Archived) -> None:
    archived.delete(archived.key(10, "segment"))
    assert archived.findings() == [(Kind.MISSING_SEGMENT, 10, 19)]


def test_an_edited_segment_is_invalid(archived: Archived) -> None:
    key = archived.key(20, "segment")
    data = archived.bucket.get(key)
    assert data is not None
    edited = gzip.decompress(data).replace(b'"outcome":"success"', b'"outcome":"failure"', 1)
    archived.replace(key, gzip.compress(edited))
    assert archived.findings() == [(Kind.INVALID_SEGMENT, 20, 29)]


def test_a_truncated_segment_is_invalid(archived: Archived) -> None:
    key = archived.key(0, "segment")
    data = archived.bucket.get(key)
    assert data is not None
    archived.replace(key, data[: len(data) // 2])
    assert archived.findings() == [(Kind.INVALID_SEGMENT, 0, 9)]


def test_a_deleted_digest_leaves_a_gap_and_an_unattested_segment(archived: Archived) -> None:
    archived.delete(archived.key(10, "digest"))
    findings = archived.findings()
    assert (Kind.GAP, 10, 19) in findings
    assert (Kind.MISSING_DIGEST, 10, 19) in findings  # the segment nobody attests
    assert (Kind.MISSING_DIGEST, None, None) in findings  # named by the digest after it
    assert all(kind != Kind.INVALID_SEGMENT for kind, _, _ in findings)


def test_an_edited_digest_fails_its_signature(archived: Archived) -> None:
    key = archived.key(10, "digest")
    data = archived.bucket.get(key)
    assert data is not None
    archived.replace(key, data.replace(b'"records":10', b'"records":11', 1))
    assert archived.findings() == [(Kind.INVALID_DIGEST, 10, 19)]


def test_a_digest_signed_by_another_key_is_refused(archived: Archived) -> None:
    key = archived.key(30, "digest")
    data = archived.bucket.get(key)
    assert data is not None
    text = data.decode().split("\n\n")[0] + "\n"
    forger = Signer.generate("forger").named(f"{LOG_ORIGIN}/acme")
    archived.replace(key, sign_note(text, forger).encode())
    assert archived.findings() == [(Kind.INVALID_DIGEST, 30, 34)]


def test_the_ledger_and_the_archive_are_compared_record_by_record(
    archived: Archived, sqlite_store: SQLiteStore
) -> None:
    record(archived.ledger, "acme", 3, prefix="late")
    sqlite_store.edit_stored_record("acme", 12, lambda r: r.update(action="x.y"), rehash=True)

    findings = archived.findings(with_ledger=True)

    assert (Kind.MISMATCH, 12, 12) in findings
    assert (Kind.UNARCHIVED, 35, 37) in findings


def test_unarchived_records_alone_do_not_fail_verification(archived: Archived) -> None:
    record(archived.ledger, "acme", 3, prefix="late")
    report = ArchiveVerifier(archived.bucket, archived.keys).verify_tenant("acme", archived.ledger)
    assert report.ok
    assert [(f.kind, f.first_seq) for f in report.findings] == [(Kind.UNARCHIVED, 35)]


def test_records_left_unarchived_past_the_grace_fail_verification(
    archived: Archived,
) -> None:
    record(archived.ledger, "acme", 3, prefix="late")
    record(archived.ledger, "globex", 2)
    verifier = ArchiveVerifier(archived.bucket, archived.keys, grace_seconds=0)

    reports = {r.tenant: r for r in verifier.verify(ledger=archived.ledger)}

    assert [(f.kind, f.first_seq, f.last_seq) for f in reports["acme"].findings] == [
        (Kind.NOT_ARCHIVED, 35, 37)
    ]
    assert [(f.kind, f.first_seq) for f in reports["globex"].findings] == [(Kind.NOT_ARCHIVED, 0)]
    assert not reports["acme"].ok
    assert not reports["globex"].ok
