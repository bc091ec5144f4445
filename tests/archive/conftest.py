"""A moto S3 server over real HTTP on loopback (one per session), a fresh bucket per
test, the log's signing key, and a ledger with an archiver plugged into the real
follower runner."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from audit_core.archive.digests import LogKeys
from audit_core.archive.s3 import ArchiveBucket, BucketSettings
from audit_core.transparency.note import Signer
from tests.archive.harness import LOG_ORIGIN


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def bucket_settings(endpoint: str, **fields: object) -> BucketSettings:
    values: dict[str, object] = {
        "bucket": f"vigil-{uuid.uuid4().hex[:20]}",
        "prefix": "audit",
        "endpoint_url": endpoint,
        "region": "eu-west-1",
        "access_key_id": "archiver",
        "secret_access_key": "archiver-secret",
        "retention_days": 1,
        "timeout_seconds": 2.0,
    }
    values.update(fields)
    return BucketSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def bucket(s3_endpoint: str) -> ArchiveBucket:
    """A bucket as `vigil archive init` creates it: Object Lock, COMPLIANCE, 1 day."""
    created = ArchiveBucket(bucket_settings(s3_endpoint))
    created.create()
    return created


@pytest.fixture
def open_bucket(s3_endpoint: str) -> ArchiveBucket:
    """A bucket without Object Lock or versioning, where an intruder can edit and
    delete: what verification must catch."""
    created = ArchiveBucket(bucket_settings(s3_endpoint, lock_mode="OFF"))
    created.client.create_bucket(
        Bucket=created.bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    return created


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate("vigil-test")


@pytest.fixture
def keys(signer: Signer) -> LogKeys:
    return LogKeys(LOG_ORIGIN, signer)
