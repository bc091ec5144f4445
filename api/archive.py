"""The S3 archive's settings as the archive package takes them, and the archiver for
the follower registry (``api/followers.py``)."""

from __future__ import annotations

from pathlib import Path

from api.settings import Settings
from api.transparency import load_signer, trusted_keys
from audit_core import Ledger
from audit_core.archive.checkpoints import TransparencyAttestor
from audit_core.archive.digests import LogKeys
from audit_core.archive.exceptions import ArchiveConfigError
from audit_core.archive.follower import ArchiveFollower
from audit_core.archive.s3 import ArchiveBucket, BucketSettings
from audit_core.archive.writer import ArchiveWriter
from audit_core.followers import Follower, FollowerStore
from audit_core.transparency.note import Verifier, parse_vkeys
from audit_core.transparency.store import tree_store_class


def bucket_settings(
    settings: Settings, bucket: str | None = None, prefix: str | None = None
) -> BucketSettings:
    """The archive's S3 settings (``bucket`` and ``prefix`` given on a command line win),
    or an ``ArchiveConfigError`` naming what is wrong."""
    bucket = bucket or settings.archive_bucket
    if not bucket:
        raise ArchiveConfigError("no archive is configured: set VIGIL_ARCHIVE_BUCKET")
    secret = settings.archive_secret_access_key
    return BucketSettings(
        bucket=bucket,
        prefix=settings.archive_prefix if prefix is None else prefix,
        endpoint_url=settings.archive_endpoint_url,
        region=settings.archive_region,
        access_key_id=settings.archive_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        profile=settings.archive_profile,
        lock_mode=settings.archive_lock_mode,
        retention_days=settings.archive_retention_days,
        legal_hold=settings.archive_legal_hold,
        encryption=settings.archive_encryption,
        kms_key_id=settings.archive_kms_key_id,
        timeout_seconds=settings.archive_timeout_seconds,
    )


def log_keys(settings: Settings, extra: list[str] | None = None) -> LogKeys:
    """The log's signing key and trusted verifier keys, read as the transparency log
    reads them, plus ``extra`` (vkeys, or files holding them)."""
    verifiers: list[Verifier] = trusted_keys(settings)
    for item in extra or []:
        path = Path(item)
        text = path.read_text(encoding="utf-8") if "+" not in item and path.exists() else item
        verifiers += parse_vkeys(text)
    return LogKeys(settings.log_origin, load_signer(settings), verifiers)


def build_archivers(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    """The archiver, when ``VIGIL_ARCHIVE_BUCKET`` is set (for ``api/followers.py``)."""
    if not settings.archive_bucket:
        return []
    keys = log_keys(settings)
    if keys.signer is None:
        raise ArchiveConfigError(
            "the archive signs its digests with the log's key: set VIGIL_SIGNING_KEY_FILE "
            "(`vigil keys signing-generate` writes one)"
        )
    attestor = None
    if settings.archive_checkpoints == "transparency":
        trees = store.view_recorder(tree_store_class(settings.ledger_env()))
        attestor = TransparencyAttestor(trees)
    writer = ArchiveWriter(ArchiveBucket(bucket_settings(settings)), keys, attestor)
    return [
        ArchiveFollower(
            writer,
            store.positions,
            segment_records=settings.archive_segment_records,
            segment_seconds=settings.archive_segment_seconds,
        )
    ]
