"""The archive's S3 bucket, through boto3: locked, checksummed, encrypted puts; reads of
exact versions; and the bucket's own set-up (versioning, Object Lock, default retention,
default encryption).

The endpoint, region and credentials come from the settings and otherwise from boto3's
usual chain (environment, shared config and credentials files, instance or task role),
so AWS, MinIO, Ceph or any S3-compatible store works.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from audit_core.archive.exceptions import ArchiveConfigError, ArchiveUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

LockMode = Literal["COMPLIANCE", "GOVERNANCE", "OFF"]
Encryption = Literal["AES256", "aws:kms"]

_MISSING = {"NoSuchKey", "NoSuchVersion", "404", "NotFound", "InvalidArgument"}


@dataclass(frozen=True)
class BucketSettings:
    """Where and how the archive writes; ``api.settings`` builds it from ``VIGIL_ARCHIVE_*``."""

    bucket: str
    prefix: str = "vigil"
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    lock_mode: LockMode = "COMPLIANCE"
    """``OFF`` only for a store without Object Lock; ``archive verify`` still works."""
    retention_days: int = 365
    legal_hold: bool = False
    encryption: Encryption = "AES256"
    kms_key_id: str | None = None
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ArchiveConfigError("no bucket: set VIGIL_ARCHIVE_BUCKET")
        if self.lock_mode not in ("COMPLIANCE", "GOVERNANCE", "OFF"):
            raise ArchiveConfigError(
                f"lock mode {self.lock_mode!r}: use COMPLIANCE, GOVERNANCE or OFF"
            )
        if self.lock_mode != "OFF" and self.retention_days < 1:
            raise ArchiveConfigError("retention must be at least one day under Object Lock")
        if self.encryption == "aws:kms" and not self.kms_key_id:
            raise ArchiveConfigError(
                "SSE-KMS needs a key: set VIGIL_ARCHIVE_KMS_KEY_ID (key id, ARN or alias)"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ArchiveConfigError(
                "give both VIGIL_ARCHIVE_ACCESS_KEY_ID and VIGIL_ARCHIVE_SECRET_ACCESS_KEY, "
                "or neither (boto3's credential chain is then used)"
            )


@dataclass(frozen=True)
class Stored:
    """What S3 says about an object it holds."""

    version_id: str | None
    """None on a bucket without versioning."""
    checksum_sha256: str | None
    """Base64 SHA-256 of the stored bytes, as S3 keeps it (when it keeps one)."""


@dataclass(frozen=True)
class Version:
    """One version of an object, or a delete marker, as S3 lists them."""

    key: str
    version_id: str | None
    latest: bool
    delete_marker: bool


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class ArchiveBucket:
    """One bucket, one prefix: every S3 call the archive makes goes through here."""

    def __init__(self, settings: BucketSettings, client: S3Client | None = None):
        self.settings = settings
        self.bucket = settings.bucket
        self.client: S3Client = client or self._client()

    def _client(self) -> S3Client:
        s = self.settings
        session = boto3.session.Session(profile_name=s.profile)
        config = Config(
            connect_timeout=s.timeout_seconds,
            read_timeout=s.timeout_seconds * 3,
            # Few retries here: an outage is the follower runner's to ride out with its
            # own backoff, and a CLI should say it cannot reach S3 rather than hang.
            retries={"max_attempts": 3, "mode": "standard"},
            # Checksums are computed by the archive itself (SHA-256, sent with the put).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client: S3Client = session.client(
            "s3",
            endpoint_url=s.endpoint_url,
            region_name=s.region,
            aws_access_key_id=s.access_key_id,
            aws_secret_access_key=s.secret_access_key,
            aws_session_token=s.session_token,
            config=config,
        )
        return client

    def _unavailable(self, what: str, error: Exception) -> ArchiveUnavailableError:
        where = self.settings.endpoint_url or "AWS S3"
        if isinstance(error, ClientError):
            message = error.response.get("Error", {}).get("Message", "")
            detail = f"{_code(error)} {message}".strip()
        else:
            detail = str(error)
        return ArchiveUnavailableError(f"S3 ({where}, bucket {self.bucket!r}): {what}: {detail}")

    # -- objects ------------------------------------------------------------------------

    def put(self, key: str, body: bytes, content_type: str) -> Stored:
        """Write an object under the configured lock, checksum and encryption; return
        once S3 has confirmed it (and checked the SHA-256 sent with it)."""
        s = self.settings
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        extra: dict[str, Any] = {"ServerSideEncryption": s.encryption}
        if s.encryption == "aws:kms":
            extra["SSEKMSKeyId"] = s.kms_key_id
        if s.lock_mode != "OFF":
            extra["ObjectLockMode"] = s.lock_mode
            extra["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=s.retention_days
            )
        if s.legal_hold:
            extra["ObjectLockLegalHoldStatus"] = "ON"
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                **extra,
            )
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(f"cannot write {key}", error) from error
        return Stored(response.get("VersionId"), checksum)

    def get(self, key: str, version_id: str | None = None) -> bytes | None:
        """The object's bytes (that version's, if given), or None if it is not there."""
        try:
            if version_id:
                response = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            else:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read()
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise self._unavailable(f"cannot read {key}", error) from error
        except BotoCoreError as error:
            raise self._unavailable(f"cannot read {key}", error) from error

    def fetch(self, key: str) -> tuple[bytes, str | None] | None:
        """The current version's bytes and version id, or None if there is none."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response.get("VersionId")
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise self._unavailable(f"cannot read {key}", error) from error
        except BotoCoreError as error:
            raise self._unavailable(f"cannot read {key}", error) from error

    def head(self, key: str) -> Stored | None:
        """The current version of ``key`` and its stored SHA-256, or None if absent."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise self._unavailable(f"cannot look at {key}", error) from error
        except BotoCoreError as error:
            raise self._unavailable(f"cannot look at {key}", error) from error
        return Stored(response.get("VersionId"), response.get("ChecksumSHA256"))

    def keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (after ``start_after``), in S3's (byte) order."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, StartAfter=start_after
            ):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(f"cannot list {prefix}", error) from error

    def versions(self, prefix: str) -> Iterator[Version]:
        """Every version and delete marker under ``prefix``; a key's newest comes first."""
        paginator = self.client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                entries = [(v, False) for v in page.get("Versions", [])] + [
                    (m, True) for m in page.get("DeleteMarkers", [])
                ]
                # S3 lists a key's versions newest first, delete markers apart: merge.
                entries.sort(key=lambda e: (e[0]["Key"], not e[0].get("IsLatest", False)))
                for entry, marker in entries:
                    version = entry.get("VersionId")
                    yield Version(
                        entry["Key"],
                        None if version in (None, "null") else version,
                        bool(entry.get("IsLatest")),
                        marker,
                    )
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(f"cannot list the versions under {prefix}", error) from error

    def folders(self, prefix: str) -> list[str]:
        """The names directly under ``prefix`` that hold objects (S3 common prefixes)."""
        paginator = self.client.get_paginator("list_objects_v2")
        names: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for item in page.get("CommonPrefixes", []):
                    names.append(item["Prefix"][len(prefix) :].rstrip("/"))
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(f"cannot list {prefix}", error) from error
        return names

    def delete_version(self, key: str, version_id: str | None) -> None:
        """Delete one version of an object, which Object Lock refuses while it is retained
        (only tests and operators call this; the archiver never deletes)."""
        try:
            if version_id:
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            else:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(f"cannot delete {key}", error) from error

    # -- the bucket ---------------------------------------------------------------------

    def exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise self._unavailable("cannot look at the bucket", error) from error
        except BotoCoreError as error:
            raise self._unavailable("cannot reach the bucket", error) from error
        return True

    def create(self) -> None:
        """Create the bucket with Object Lock (which turns versioning on), then
        configure it as :meth:`configure` does."""
        s = self.settings
        args: dict[str, Any] = {"Bucket": self.bucket}
        if s.lock_mode != "OFF":
            args["ObjectLockEnabledForBucket"] = True
        region = s.region or self.client.meta.region_name
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**args)
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable("cannot create the bucket", error) from error
        self.configure()

    def configure(self) -> None:
        """Turn on versioning, Object Lock with the configured default retention, and
        default encryption; block public access. Each is idempotent."""
        s = self.settings
        encryption: Any = {"SSEAlgorithm": s.encryption}
        if s.encryption == "aws:kms":
            encryption["KMSMasterKeyID"] = s.kms_key_id
        try:
            self.client.put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
            )
            if s.lock_mode != "OFF":
                self.client.put_object_lock_configuration(
                    Bucket=self.bucket,
                    ObjectLockConfiguration={
                        "ObjectLockEnabled": "Enabled",
                        "Rule": {
                            "DefaultRetention": {"Mode": s.lock_mode, "Days": s.retention_days}
                        },
                    },
                )
            self.client.put_bucket_encryption(
                Bucket=self.bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": encryption}]
                },
            )
            self.client.put_public_access_block(
                Bucket=self.bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable("cannot configure the bucket", error) from error

    def problems(self) -> list[str]:
        """What is wrong with the bucket for holding evidence, each with its fix."""
        s = self.settings
        found: list[str] = []
        fix = "run `vigil archive init --fix`"
        try:
            versioning = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            if versioning != "Enabled":
                found.append(
                    f"versioning is {versioning or 'off'}, not Enabled: Object Lock and "
                    f"exact-version reads need it; {fix}"
                )
            if s.lock_mode != "OFF":
                found += self._lock_problems(fix)
            found += self._encryption_problems(fix)
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable("cannot read the bucket's configuration", error) from error
        return found

    def _lock_problems(self, fix: str) -> list[str]:
        s = self.settings
        try:
            lock = self.client.get_object_lock_configuration(Bucket=self.bucket)[
                "ObjectLockConfiguration"
            ]
        except ClientError as error:
            if _code(error) != "ObjectLockConfigurationNotFoundError":
                raise
            lock = {}
        if lock.get("ObjectLockEnabled") != "Enabled":
            return [
                "Object Lock is not enabled, so archived objects can be deleted or "
                f"replaced; {fix} (S3 enables it on a versioned bucket)"
            ]
        retention = lock.get("Rule", {}).get("DefaultRetention", {})
        if not retention:
            return [
                "no default retention: objects written by other tools would not be "
                f"locked; {fix} to set {s.lock_mode} {s.retention_days} days"
            ]
        days = retention.get("Days") or 0
        days = days or 365 * (retention.get("Years") or 0)
        found: list[str] = []
        if retention.get("Mode") != s.lock_mode:
            found.append(
                f"default retention mode is {retention.get('Mode')}, the archive is "
                f"configured for {s.lock_mode}; {fix} or set VIGIL_ARCHIVE_LOCK_MODE"
            )
        if days < s.retention_days:
            found.append(
                f"default retention is {days} days, shorter than the configured "
                f"{s.retention_days}; {fix}"
            )
        return found

    def _encryption_problems(self, fix: str) -> list[str]:
        s = self.settings
        try:
            rules = self.client.get_bucket_encryption(Bucket=self.bucket)[
                "ServerSideEncryptionConfiguration"
            ]["Rules"]
        except ClientError as error:
            if _code(error) != "ServerSideEncryptionConfigurationNotFoundError":
                raise
            rules = []
        algorithms = [
            rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for rule in rules
        ]
        if not algorithms:
            return [f"no default encryption; {fix}"]
        if s.encryption not in algorithms:
            return [
                f"default encryption is {', '.join(map(str, algorithms))}, the archive writes "
                f"{s.encryption}; {fix} or set VIGIL_ARCHIVE_ENCRYPTION"
            ]
        return []
