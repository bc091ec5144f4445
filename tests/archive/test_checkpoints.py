"""Digests that name the transparency log's own signed checkpoints: the archiver waits
for one that covers a segment, proves the segment's tree a prefix of it, and verify
checks that proof."""

from __future__ import annotations

from audit_core.archive.checkpoints import TransparencyAttestor
from audit_core.archive.digests import Digest, LogKeys
from audit_core.archive.follower import ArchiveFollower
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.verify import ArchiveVerifier
from audit_core.archive.writer import ArchiveWriter
from audit_core.followers import FollowerRunner, open_store
from audit_core.transparency.follower import TransparencyLog
from audit_core.transparency.note import Signer
from audit_core.transparency.store import tree_store_class
from tests.archive.harness import LOG_ORIGIN, FakeClock, archived_objects, record
from tests.stores import Store


def test_segments_wait_for_and_then_name_the_transparency_checkpoint(
    store: Store, bucket: ArchiveBucket, signer: Signer, keys: LogKeys
) -> None:
    env = store.settings().ledger_env()
    ledger = store.open_ledger()
    followers = open_store(env)
    try:
        trees = followers.view_recorder(tree_store_class(env))
        transparency = TransparencyLog(
            trees, signer, LOG_ORIGIN, every_records=1_000_000, every_seconds=3600
        )
        clock = FakeClock()
        archiver = ArchiveFollower(
            ArchiveWriter(bucket, keys, TransparencyAttestor(trees)),
            followers.positions,
            segment_records=10,
            clock=clock,
        )
        tree_runner = FollowerRunner(ledger, transparency, followers)
        archive_runner = FollowerRunner(ledger, archiver, followers)
        record(ledger, "acme", 1)
        tree_runner.drain()  # the first record is checkpointed at once (no earlier one)
        record(ledger, "acme", 24, prefix="more")
        tree_runner.drain()  # the tree is grown, but the next checkpoint is not due yet
        archive_runner.drain()
        assert archived_objects(bucket, "acme")["segment"] == []
        assert archive_runner.status().lag_events == 25  # every record held back

        transparency.sign_due(force=True)  # a checkpoint of size 25
        clock.now += 3600
        archive_runner.drain()

        assert archived_objects(bucket, "acme")["segment"] == [(0, 9), (10, 19), (20, 24)]
        checkpoint = trees.latest_checkpoint("acme")
        assert checkpoint is not None
        key = next(k for k in bucket.keys("audit/acme/") if k.endswith("0009.digest"))
        data = bucket.get(key)
        assert data is not None
        digest = Digest.from_text(keys.open("acme", data.decode()), key)
        assert digest.checkpoint == checkpoint.note
        assert digest.consistency  # size 10 → 25 needs a proof
        report = ArchiveVerifier(bucket, keys).verify_tenant("acme", ledger)
        assert report.ok, report.findings
        assert (report.records, report.checkpoint_size) == (25, 25)
    finally:
        followers.close()
