"""C2SP tlog-tiles paths and layout, and a tree grown in tiles against a whole tree."""

from __future__ import annotations

import hashlib

import pytest

from audit_core.transparency import MemoryTree, TileNotFoundError
from audit_core.transparency.merkle import consistency_proof, inclusion_proof
from audit_core.transparency.tiles import (
    ENTRIES,
    TILE_BYTES,
    TILE_WIDTH,
    GrowingTree,
    StoredTile,
    Tile,
    TileCache,
    TileHashes,
    TileKey,
    hashes_only,
    index_path,
    tile_levels,
    tiles_of,
)


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (Tile(0, 0), "tile/0/000"),
        (Tile(0, 1234067), "tile/0/x001/x234/067"),
        (Tile(1, 1000), "tile/1/x001/000"),
        (Tile(2, 5, 17), "tile/2/005.p/17"),
        (Tile(0, 1234067, 8), "tile/0/x001/x234/067.p/8"),
        (Tile(ENTRIES, 0), "tile/entries/000"),
        (Tile(ENTRIES, 1234067, 8), "tile/entries/x001/x234/067.p/8"),
    ],
)
def test_tile_paths_follow_the_spec(tile: Tile, path: str) -> None:
    assert tile.path == path
    assert Tile.parse(path) == tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1", "tile/0/x000/001", "tile/00/000", "tile/64/000", "tile/0/000.p/0",
        "tile/0/000.p/256", "tile/0/000.p/010", "tile/entry/000", "tile/0/001/002",
        "tile/entries/1", "tile/entries/000.p/0", "tile/entries/x000/001",
    ],
)  # fmt: skip
def test_other_spellings_of_a_tile_are_refused(path: str) -> None:
    with pytest.raises(TileNotFoundError):
        Tile.parse(path)


def test_index_paths_group_three_digits() -> None:
    assert index_path(999) == "999"
    assert index_path(1000) == "x001/000"
    assert index_path(10**9) == "x001/x000/x000/000"


def test_a_tree_of_70000_has_the_tiles_the_spec_lists() -> None:
    tiles = tiles_of(70_000)
    level0 = [t for t in tiles if t.level == 0]
    assert len(level0) == 274
    assert level0[-1] == Tile(0, 273, 112)
    assert [t for t in tiles if t.level > 0] == [Tile(1, 0), Tile(1, 1, 17), Tile(2, 0, 1)]
    assert tiles_of(256) == [Tile(0, 0), Tile(1, 0, 1)]
    assert tiles_of(0) == []


@pytest.mark.parametrize("size", [1, 255, 256, 257, 511, 512, 65535, 65536, 65537, 70_000])
def test_a_tree_grown_in_tiles_gives_the_roots_and_proofs_of_the_whole_tree(size: int) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size)]
    whole = MemoryTree(leaves)
    grown = GrowingTree()
    stored: dict[tuple[int, int], tuple[bytes, bytes | None]] = {}
    for start in range(0, size, 1000):
        for value in leaves[start : start + 1000]:
            grown.append(value)
        stored.update({(lv, ix): (data, inner) for lv, ix, data, inner in grown.take_dirty()})
        # Reloading from storage gives the same tree as the one in memory.
        reloaded = GrowingTree.load(grown.size, lambda keys: {k: stored[k][0] for k in keys})
        assert reloaded.root() == grown.root() == whole.root(grown.size)
    assert all((inner is None) == (len(data) < TILE_BYTES) for data, inner in stored.values())

    def read_stored(keys: list[TileKey]) -> dict[TileKey, StoredTile]:
        return {k: stored[k] for k in keys if k in stored}

    # Proofs from the stored inner nodes, and from the tiles' hashes alone, are the same.
    for hashes in (
        TileHashes(read_stored),
        TileHashes(hashes_only(lambda keys: {k: v[0] for k, v in read_stored(keys).items()})),
    ):
        for index in {0, size // 3, size - 1}:
            assert inclusion_proof(index, size, hashes.read) == whole.inclusion_proof(index)
        for old in {1, size // 2, size - 1}:
            if 0 < old < size:
                assert consistency_proof(old, size, hashes.read) == whole.consistency_proof(old)


def test_stored_inner_nodes_are_the_tiles_own_levels() -> None:
    grown = GrowingTree()
    for i in range(TILE_WIDTH * 2 + 3):
        grown.append(hashlib.sha256(i.to_bytes(4, "big")).digest())
    full = [(data, inner) for _, _, data, inner in grown.take_dirty() if inner is not None]
    assert len(full) == 2
    for data, inner in full:
        assert tile_levels(data, inner) == tile_levels(data)


def test_a_cached_partial_tile_serves_only_proofs_it_is_wide_enough_for() -> None:
    """A partial tile cached at one width must not answer for a larger tree: the proof
    reads the wider tile, and the cache keeps the wider one."""
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(600)]
    whole = MemoryTree(leaves)
    grown = GrowingTree()
    stored: dict[tuple[int, int], bytes] = {}
    reads: list[list[tuple[int, int]]] = []

    def read(keys: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        reads.append(sorted(keys))
        return {k: stored[k] for k in keys if k in stored}

    cache = TileCache()
    for size in (300, 301, 600):
        while grown.size < size:
            grown.append(leaves[grown.size])
        stored.update({(lv, ix): data for lv, ix, data, _ in grown.take_dirty()})
        for index in (0, size - 1):
            hashes = TileHashes(hashes_only(read), cache, "acme")
            hashes.plan(lambda r, i=index, n=size: inclusion_proof(i, n, r))
            assert inclusion_proof(index, size, hashes.read) == whole.inclusion_proof(index, size)
        hashes = TileHashes(hashes_only(read), cache, "acme")
        assert consistency_proof(300, size, hashes.read) == whole.consistency_proof(300, size)
    # The full tile 0 was read once; the growing tile 1 again for each larger tree.
    assert sum((0, 0) in keys for keys in reads) == 1
    assert sum((0, 1) in keys for keys in reads) == 3
