"""An archiver process for the crash tests: follows the ledger at VIGIL_DATABASE_URL
into the bucket named on the command line, and SIGKILLs itself where it is told to.

    python -m tests.archive.archiver_process ENDPOINT BUCKET KEY_FILE MODE

MODE: ``before-digest:N`` dies just before writing its N-th digest (its segment is
written); ``after-pages:N`` dies after delivering N pages (segments open in memory);
``finish`` archives everything, closing the open segments, and exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from api.settings import Settings
from audit_core import Ledger
from audit_core.archive.digests import LogKeys
from audit_core.archive.follower import ArchiveFollower
from audit_core.archive.s3 import ArchiveBucket, BucketSettings, Stored
from audit_core.archive.writer import ArchiveWriter
from audit_core.followers import FollowerRunner, Page, open_store
from audit_core.transparency.note import Signer

LOG_ORIGIN = "vigil.test/log"


class DyingBucket(ArchiveBucket):
    die_before_digest = 0

    def put(self, key: str, body: bytes, content_type: str) -> Stored:
        if key.endswith(".digest"):
            self.die_before_digest -= 1
            if self.die_before_digest == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().put(key, body, content_type)


class DyingFollower(ArchiveFollower):
    die_after_pages = 0

    def deliver(self, page: Page) -> int | None:
        confirmed = super().deliver(page)
        self.die_after_pages -= 1
        if self.die_after_pages == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return confirmed


def main(endpoint: str, bucket_name: str, key_file: str, mode: str) -> None:
    settings = Settings()
    env = settings.ledger_env()
    ledger = Ledger(env)
    store = open_store(env)
    bucket = DyingBucket(
        BucketSettings(
            bucket=bucket_name,
            prefix="audit",
            endpoint_url=endpoint,
            region="eu-west-1",
            access_key_id="archiver",
            secret_access_key="archiver-secret",
            retention_days=1,
        )
    )
    keys = LogKeys(LOG_ORIGIN, Signer.from_file(key_file))
    now = [0.0]
    follower = DyingFollower(
        ArchiveWriter(bucket, keys),
        store.positions,
        segment_records=10,
        segment_seconds=3600,
        clock=lambda: now[0] or time.time(),
    )
    what, _, count = mode.partition(":")
    if what == "before-digest":
        bucket.die_before_digest = int(count)
    elif what == "after-pages":
        follower.die_after_pages = int(count)
    runner = FollowerRunner(ledger, follower, store, page_size=7)
    runner.drain()
    if what == "finish":
        now[0] = 1e12  # every open segment is due
        runner.drain()
    store.close()
    ledger.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
