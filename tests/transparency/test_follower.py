"""The tree follower on SQLite and PostgreSQL: trees in tiles, checkpoints signed when
due, proofs served only under a checkpoint."""

from __future__ import annotations

import hashlib

import pytest

from audit_core import DamagedLogError
from audit_core.transparency import (
    Checkpoint,
    MemoryTree,
    SizeError,
    TileNotFoundError,
    open_checkpoint,
    record_leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from audit_core.transparency.merkle import leaf_hash
from audit_core.transparency.proofs import RecentCheckpoints, TreeReader
from audit_core.transparency.store import TreeUpdate
from audit_core.transparency.tiles import ENTRIES, TILE_BYTES, Tile, tiles_of
from tests.stores import Store
from tests.transparency.conftest import ORIGIN, OpenedLog


def test_each_tenants_tree_matches_its_records_and_the_checkpoint_is_signed(
    opened: OpenedLog,
) -> None:
    acme = opened.record("acme", 700)
    globex = opened.record("globex", 5)
    opened.follow()
    for tenant, records in (("acme", acme), ("globex", globex)):
        expected = MemoryTree(record_leaf_hash(r) for r in records)
        stored = opened.trees.latest_checkpoint(tenant)
        assert stored is not None
        checkpoint = open_checkpoint(stored.note, [opened.signer.verifier])
        assert checkpoint == Checkpoint(f"{ORIGIN}/{tenant}", len(records), expected.root())


def test_the_tiles_are_the_tlog_tiles_of_the_tree(opened: OpenedLog) -> None:
    records = opened.record("acme", 70_000 // 100)  # 700 leaves: 2 full tiles, 1 partial
    opened.follow()
    expected = MemoryTree(record_leaf_hash(r) for r in records)
    tiles = tiles_of(len(records))
    assert [t.path for t in tiles] == [
        "tile/0/000", "tile/0/001", "tile/0/002.p/188", "tile/1/000.p/2",
    ]  # fmt: skip
    full = opened.reader.tile("acme", Tile(0, 1))
    assert len(full) == TILE_BYTES
    assert full == b"".join(expected.levels[0][256:512])
    level_one = opened.reader.tile("acme", Tile(1, 0, 2))
    assert level_one == expected.levels[8][0] + expected.levels[8][1]


def test_every_proof_served_verifies_against_the_signed_checkpoint(opened: OpenedLog) -> None:
    records = opened.record("acme", 300)
    opened.follow()
    first = open_checkpoint(opened.reader.latest("acme").note, [opened.signer.verifier])
    for seq in range(0, 300, 7):
        proof = opened.reader.inclusion("acme", seq)
        assert proof.leaf_hash == record_leaf_hash(records[seq])
        verify_inclusion(seq, first.size, proof.leaf_hash, proof.hashes, first.root)
    more = opened.record("acme", 213, prefix="more")
    opened.follow()
    second = open_checkpoint(opened.reader.latest("acme").note, [opened.signer.verifier])
    assert second.size == 513
    consistency = opened.reader.consistency("acme", first.size)
    verify_consistency(first.size, second.size, first.root, second.root, consistency.hashes)
    older = opened.reader.inclusion("acme", 5, size=100)
    expected = MemoryTree(record_leaf_hash(r) for r in [*records, *more])
    verify_inclusion(5, 100, older.leaf_hash, older.hashes, expected.root(100))


def test_a_tree_kept_before_inner_nodes_were_stored_serves_every_proof(store: Store) -> None:
    first = OpenedLog(store)
    records = first.record("acme", 600)
    first.follow()
    assert all(
        inner for _, inner in first.trees.read_stored_tiles("acme", [(0, 0), (0, 1)]).values()
    )
    first.trees._select(
        f"ALTER TABLE {first.trees._tiles} DROP COLUMN inner_nodes", [], commit=True
    )
    first.close()
    # Opening the store again adds the column; the full tiles it held have no nodes.
    opened = OpenedLog(store, first.signer)
    try:
        stored = opened.trees.read_stored_tiles("acme", [(0, 0), (0, 1)])
        assert [inner for _, inner in stored.values()] == [None, None]
        records += opened.record("acme", 300, prefix="more")
        opened.follow()
        assert opened.trees.read_stored_tiles("acme", [(0, 2)])[(0, 2)][1] is not None
        checkpoint = open_checkpoint(opened.reader.latest("acme").note, [opened.signer.verifier])
        for seq in (0, 255, 256, 599, 600, 899):
            proof = opened.reader.inclusion("acme", seq)
            assert proof.leaf_hash == record_leaf_hash(records[seq])
            verify_inclusion(seq, 900, proof.leaf_hash, proof.hashes, checkpoint.root)
        old = MemoryTree(record_leaf_hash(r) for r in records).root(600)
        verify_consistency(
            600, 900, old, checkpoint.root, opened.reader.consistency("acme", 600).hashes
        )
    finally:
        opened.close()


def test_an_entry_bundle_is_refused_when_a_record_is_not_its_leaf(
    opened: OpenedLog, store: Store
) -> None:
    opened.record("acme", 40)
    opened.follow()
    bundle = Tile(ENTRIES, 0, 40)

    def read(first: int, end: int) -> list[bytes]:
        return opened.ledger.leaves("acme", first, end)

    leaves = read(0, 40)
    served = opened.reader.entry_bundle("acme", bundle, read)
    assert len(served) == sum(2 + len(leaf) for leaf in leaves)
    altered = [*leaves[:7], leaves[7].replace(b"evt", b"EVT"), *leaves[8:]]
    with pytest.raises(DamagedLogError, match="seq 7 is not the leaf its tree holds"):
        opened.reader.entry_bundle("acme", bundle, lambda first, end: altered)
    # The ledger refuses a record that is missing or no longer hashes to its hash.
    store.edit_stored_record("acme", 3, lambda record: record.update(action="forged"))
    with pytest.raises(DamagedLogError, match="seq 3"):
        opened.reader.entry_bundle("acme", bundle, read)
    store.delete_seqs("acme", 5)
    with pytest.raises(DamagedLogError, match="seq 5: it is missing from storage"):
        opened.ledger.leaves("acme", 4, 6)
    # A leaf longer than a uint16 can say (possible with VIGIL_MAX_EVENT_BYTES raised).
    big = b"x" * 70_000
    head = opened.ledger.head("acme")[1]
    opened.trees.write([TreeUpdate("acme", 40, head, [(0, 0, leaf_hash(big) * 40, None)])], None)
    with pytest.raises(SizeError, match="seq 0 is 70,000 bytes"):
        opened.reader.entry_bundle("acme", bundle, lambda first, end: [big] * 40)


def test_sizes_and_tiles_beyond_the_latest_checkpoint_are_refused(opened: OpenedLog) -> None:
    with pytest.raises(SizeError, match="no signed checkpoint yet"):
        opened.reader.inclusion("acme", 0)
    opened.record("acme", 10)
    opened.follow()
    opened.record("acme", 10, prefix="later")
    opened.runner.drain()  # the tree grows; no checkpoint is due yet
    with pytest.raises(SizeError, match="beyond the latest checkpoint of tenant 'acme'"):
        opened.reader.inclusion("acme", 0, size=11)
    with pytest.raises(SizeError, match="not in the tree of tenant 'acme' of size 10"):
        opened.reader.inclusion("acme", 15)
    with pytest.raises(TileNotFoundError, match="not complete"):
        opened.reader.tile("acme", Tile(0, 0, 11))
    assert len(opened.reader.tile("acme", Tile(0, 0, 10))) == 320


def test_a_recent_checkpoint_serves_proofs_it_covers_and_a_larger_tree_is_read_again(
    opened: OpenedLog,
) -> None:
    reader = TreeReader(opened.trees, recent=RecentCheckpoints(seconds=3600))
    opened.record("acme", 10)
    opened.follow()
    assert reader.inclusion("acme", 3).checkpoint.size == 10
    opened.record("acme", 10, prefix="later")
    opened.follow()
    # Seq 3 is in the checkpoint of size 10, read a moment ago: that one serves it.
    assert reader.inclusion("acme", 3).checkpoint.size == 10
    # Seq 15 and size 20 are not: the latest is read again, never refused.
    assert reader.inclusion("acme", 15).checkpoint.size == 20
    assert reader.consistency("acme", 20).checkpoint.size == 20
    assert reader.inclusion("acme", 3, size=20).size == 20
    # What the API serves as the latest checkpoint is always read afresh.
    opened.record("acme", 5, prefix="last")
    opened.follow()
    assert reader.latest("acme").size == 25


def test_a_checkpoint_is_signed_after_n_records_or_t_seconds(store: Store) -> None:
    now = [0.0]
    opened = OpenedLog(store, every_records=50, every_seconds=2.0, clock=lambda: now[0])
    try:
        opened.record("acme", 10)
        opened.runner.drain()  # the first commit after a quiet spell: signed at once
        assert [c.size for c in opened.trees.checkpoints("acme")] == [10]
        now[0] = 1.0
        opened.record("acme", 5, prefix="soon")
        opened.runner.drain()
        now[0] = 1.9
        opened.log.tick()
        assert [c.size for c in opened.trees.checkpoints("acme")] == [10]
        now[0] = 2.0  # T seconds after the last checkpoint
        opened.log.tick()
        assert [c.size for c in opened.trees.checkpoints("acme")] == [10, 15]
        now[0] = 2.5
        opened.record("acme", 60, prefix="burst")
        opened.runner.drain()  # 50 records since the last: signed without waiting
        assert [c.size for c in opened.trees.checkpoints("acme")] == [10, 15, 75]
        opened.log.tick()
        assert [c.size for c in opened.trees.checkpoints("acme")] == [10, 15, 75]
    finally:
        opened.close()


def test_signing_records_nothing_in_the_ledger(opened: OpenedLog) -> None:
    opened.record("acme", 3)
    opened.follow()
    opened.log.sign_due(force=True)
    assert opened.ledger.size("acme") == 3
    assert len(opened.trees.checkpoints("acme")) == 1


def test_checkpoints_are_kept_and_a_rebuilt_tree_continues_them(opened: OpenedLog) -> None:
    opened.record("acme", 20)
    opened.follow()
    opened.record("acme", 5, prefix="b")
    opened.follow()
    before = opened.trees.checkpoints("acme")
    opened.log.clear()
    opened.follow()
    assert opened.trees.checkpoints("acme") == before
    opened.record("acme", 1, prefix="c")
    opened.follow()
    assert [c.size for c in opened.trees.checkpoints("acme")] == [20, 25, 26]


def test_a_tree_inconsistent_with_its_checkpoint_is_never_signed(opened: OpenedLog) -> None:
    opened.record("acme", 20)
    opened.follow()
    # Someone rewrites a stored leaf hash of the tree, then the log grows.
    tile = opened.trees.read_tiles("acme", [(0, 0)])[(0, 0)]
    forged = hashlib.sha256(b"forged").digest() + tile[32:]

    opened.trees.write(
        [TreeUpdate("acme", 20, opened.ledger.head("acme")[1], [(0, 0, forged, None)])], None
    )
    opened.log.reload()
    opened.record("acme", 5, prefix="b")
    opened.follow()
    assert [c.size for c in opened.trees.checkpoints("acme")] == [20]
    assert "not consistent with its checkpoint at size 20" in opened.log.refusals["acme"]


def test_a_second_process_sees_the_same_checkpoints(store: Store, opened: OpenedLog) -> None:
    opened.record("acme", 4)
    opened.follow()
    other = OpenedLog(store, signer=opened.signer)
    try:
        assert other.log.sign_due(force=True) == []
        assert other.reader.latest("acme") == opened.reader.latest("acme")
    finally:
        other.close()


def test_another_process_signs_on_demand_what_the_follower_has_stored(
    store: Store, opened: OpenedLog
) -> None:
    opened.record("acme", 4)
    opened.follow()
    other = OpenedLog(store, signer=opened.signer)
    try:
        other.log.sign_due(force=True, tenant="acme")  # nothing new yet
        opened.record("acme", 3, prefix="more")
        opened.runner.drain()  # stored, not yet due
        [signed] = other.log.sign_due(force=True, tenant="acme")
        assert signed.size == 7
        assert [c.size for c in opened.trees.checkpoints("acme")] == [4, 7]
    finally:
        other.close()
