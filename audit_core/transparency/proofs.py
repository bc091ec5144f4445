"""Proofs and tiles served from the stored trees, bounded by the latest checkpoint.

Only what a signed checkpoint covers is served: a proof for a tree size beyond the
tenant's latest checkpoint, or a tile that tree does not complete yet, is refused
(:class:`SizeError`, :class:`TileNotFoundError`) rather than answered from a tree that
no signature vouches for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from audit_core.exceptions import DamagedLogError
from audit_core.transparency.exceptions import SizeError, TileNotFoundError
from audit_core.transparency.merkle import (
    HASH_SIZE,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
)
from audit_core.transparency.store import StoredCheckpoint, TreeStore
from audit_core.transparency.tiles import MAX_ENTRY_BYTES, TILE_WIDTH, Tile, TileCache, TileHashes


@dataclass(frozen=True)
class InclusionProof:
    seq: int
    size: int
    leaf_hash: bytes
    hashes: list[bytes]
    checkpoint: StoredCheckpoint
    """The latest checkpoint (its size is at least ``size``)."""


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    hashes: list[bytes]
    checkpoint: StoredCheckpoint


class RecentCheckpoints:
    """Each tenant's latest checkpoint as last read, for proofs that a checkpoint up to
    ``seconds`` old can serve: one query less per proof. A proof that needs a larger
    tree reads the latest again, so a recent checkpoint never causes a refusal."""

    def __init__(self, seconds: float = 1.0):
        self.seconds = seconds
        self._read: dict[str, tuple[float, StoredCheckpoint]] = {}

    def get(self, tenant: str, covering: int) -> StoredCheckpoint | None:
        found = self._read.get(tenant)
        if found is None or time.monotonic() - found[0] > self.seconds:
            return None
        return found[1] if found[1].size >= covering else None

    def put(self, tenant: str, checkpoint: StoredCheckpoint) -> None:
        self._read[tenant] = (time.monotonic(), checkpoint)


class TreeReader:
    """Reads one database's trees for proofs and tiles."""

    def __init__(
        self,
        store: TreeStore,
        cache: TileCache | None = None,
        recent: RecentCheckpoints | None = None,
    ):
        self.store = store
        self.cache = cache
        self.recent = recent

    def latest(self, tenant: str) -> StoredCheckpoint:
        checkpoint = self.store.latest_checkpoint(tenant)
        if checkpoint is None:
            raise SizeError(
                f"tenant {tenant!r} has no signed checkpoint yet; one is signed shortly "
                "after its first record"
            )
        if self.recent is not None:
            self.recent.put(tenant, checkpoint)
        return checkpoint

    def _latest_covering(self, tenant: str, size: int) -> StoredCheckpoint:
        """A recent checkpoint of at least ``size`` leaves, or else the latest."""
        recent = self.recent.get(tenant, size) if self.recent is not None else None
        return recent or self.latest(tenant)

    def _size(
        self, tenant: str, size: int | None, covering: int = 0
    ) -> tuple[int, StoredCheckpoint]:
        latest = self._latest_covering(tenant, max(size or 0, covering))
        if size is None:
            return latest.size, latest
        if size > latest.size:
            raise SizeError(
                f"tree size {size} is beyond the latest checkpoint of tenant {tenant!r} "
                f"(size {latest.size}); ask again after the next checkpoint"
            )
        if size < 1:
            raise SizeError(f"tree size {size}: a proof needs a tree of at least 1 leaf")
        return size, latest

    def _hashes(self, tenant: str) -> TileHashes:
        return TileHashes(
            lambda keys: self.store.read_stored_tiles(tenant, keys), self.cache, tenant
        )

    def inclusion(self, tenant: str, seq: int, size: int | None = None) -> InclusionProof:
        """The proof that the record at ``seq`` is in the tree of ``size`` (default:
        the latest checkpoint's)."""
        tree_size, latest = self._size(tenant, size, covering=seq + 1)
        if not 0 <= seq < tree_size:
            raise SizeError(
                f"seq {seq} is not in the tree of tenant {tenant!r} of size {tree_size}"
                + (" (the latest checkpoint)" if size is None else "")
            )
        tiles = self._hashes(tenant)
        tiles.plan(lambda read: (read(0, seq), inclusion_proof(seq, tree_size, read)))
        hashes = inclusion_proof(seq, tree_size, tiles.read)
        return InclusionProof(seq, tree_size, tiles.read(0, seq), hashes, latest)

    def inclusions(
        self, tenant: str, seqs: Iterable[int], size: int | None = None
    ) -> Iterator[InclusionProof]:
        """``inclusion`` of many records in one tree, reading each tile and hashing each
        node once."""
        tree_size, latest = self._size(tenant, size)
        hashes = self._hashes(tenant)
        memo: dict[tuple[int, int], bytes] = {}
        for seq in seqs:
            if not 0 <= seq < tree_size:
                raise SizeError(
                    f"seq {seq} is not in the tree of tenant {tenant!r} of size {tree_size}"
                )
            proof = inclusion_proof(seq, tree_size, hashes.read, memo)
            yield InclusionProof(seq, tree_size, hashes.read(0, seq), proof, latest)

    def consistency(
        self, tenant: str, old_size: int, new_size: int | None = None
    ) -> ConsistencyProof:
        """The proof that the tree of ``new_size`` (default: the latest checkpoint's)
        extends the tree of ``old_size``."""
        tree_size, latest = self._size(tenant, new_size, covering=old_size)
        if not 0 <= old_size <= tree_size:
            raise SizeError(
                f"no consistency proof from size {old_size} to size {tree_size}: the old "
                "size must be between 0 and the new one"
            )
        tiles = self._hashes(tenant)
        tiles.plan(lambda read: consistency_proof(old_size, tree_size, read))
        hashes = consistency_proof(old_size, tree_size, tiles.read)
        return ConsistencyProof(old_size, tree_size, hashes, latest)

    def entry_bundle(
        self, tenant: str, bundle: Tile, read_leaves: Callable[[int, int], Sequence[bytes]]
    ) -> bytes:
        """The entry bundle ``tile/entries/<N>[.p/<W>]``: the leaves (records' canonical
        bytes) under a level-0 tile, each as a big-endian uint16 length and its bytes.
        ``read_leaves(first, end)`` reads those of seqs ``first`` to ``end - 1``. Each
        must hash to its hash in the tile, or the bundle is refused."""
        hashes = self.tile(tenant, Tile(0, bundle.index, bundle.width))
        first = bundle.index * TILE_WIDTH
        leaves = read_leaves(first, first + bundle.width)
        body = bytearray()
        for offset, leaf in enumerate(leaves):
            if leaf_hash(leaf) != hashes[offset * HASH_SIZE : (offset + 1) * HASH_SIZE]:
                raise DamagedLogError(
                    tenant, f"the record at seq {first + offset} is not the leaf its tree holds"
                )
            if len(leaf) > MAX_ENTRY_BYTES:
                raise SizeError(
                    f"the record at seq {first + offset} is {len(leaf):,} bytes, more than an "
                    f"entry bundle's {MAX_ENTRY_BYTES:,}; read it with GET /v1/events and "
                    "prove it with /proof/inclusion"
                )
            body += len(leaf).to_bytes(2, "big")
            body += leaf
        return bytes(body)

    def tile(self, tenant: str, tile: Tile) -> bytes:
        """A tile's bytes, if the latest checkpoint's tree holds all of it."""
        latest = self.latest(tenant)
        if tile.end > latest.size:
            raise TileNotFoundError(
                f"{tile.path} is not complete in the latest checkpoint of tenant {tenant!r} "
                f"(size {latest.size})"
            )
        key = (tile.level, tile.index)
        data = self.store.read_tiles(tenant, [key]).get(key, b"")
        wanted = tile.width * HASH_SIZE
        if len(data) < wanted:
            raise TileNotFoundError(f"{tile.path} is missing from the stored tree of {tenant!r}")
        return data[:wanted]
