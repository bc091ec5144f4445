"""C2SP tlog-tiles: a tree kept as tiles of 256 hashes, read back as subtree hashes.

The tile at level ``L`` and index ``N`` holds, for i in 0..255, the hash of the
complete subtree of 256**L leaves that starts at leaf (N * 256 + i) * 256**L: level 0
holds leaf hashes, and each hash at level L + 1 is the root of a full tile at level L.
The rightmost tile of each level is partial (fewer than 256 hashes); it grows in place
until it is full, and is served as ``.p/<W>`` for any width its hashes already fill.

Path of a tile: ``tile/<L>/<N>[.p/<W>]``, where ``N`` is written as three-digit path
elements, all but the last prefixed with ``x`` (1234067 is ``x001/x234/067``).

A full tile is stored with its inner nodes (the roots of its complete subtrees of 2 to
128 hashes), which the follower hashes anyway when the tile fills: a proof then slices
the nodes it needs instead of hashing 254 of them. They are not part of the tile that
is served, and verification never reads them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from audit_core.transparency.exceptions import TileNotFoundError
from audit_core.transparency.merkle import (
    HASH_SIZE,
    HashReader,
    node_hash,
    perfect_root,
    tree_hash,
)

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
TILE_BYTES = TILE_WIDTH * HASH_SIZE
MAX_LEVEL = 63

TileKey = tuple[int, int]
"""(level, index) of a tile."""
INNER_BYTES = (TILE_WIDTH - 2) * HASH_SIZE
"""A full tile's inner nodes: the 128 + 64 + ... + 2 roots below the tile's own root."""

TileReader = Callable[[list[TileKey]], dict[TileKey, bytes]]
"""Reads the stored bytes of tiles (as many hashes as they hold so far)."""
StoredTile = tuple[bytes, bytes | None]
"""A tile's hashes and, for a full tile that has them stored, its inner nodes."""
StoredTileReader = Callable[[list[TileKey]], Mapping[TileKey, StoredTile]]


def hashes_only(read_tiles: TileReader) -> StoredTileReader:
    """A reader of tiles without their stored inner nodes: each is hashed again from
    the tile's own hashes (what verification does, trusting nothing else stored)."""
    return lambda keys: {key: (data, None) for key, data in read_tiles(keys).items()}


_PATH = re.compile(
    r"tile/(0|[1-9][0-9]?|entries)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?"
)
ENTRIES = -1
"""The level of an entry bundle (``tile/entries/<N>``): the leaves under a level-0 tile."""
MAX_ENTRY_BYTES = 0xFFFF
"""An entry bundle prefixes each entry with its length as a big-endian uint16."""


def index_path(index: int) -> str:
    """``N`` of a tile path: 1234067 → ``x001/x234/067``."""
    groups: list[str] = []
    while True:
        groups.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    groups.reverse()
    return "/".join([*(f"x{group}" for group in groups[:-1]), groups[-1]])


@dataclass(frozen=True, order=True)
class Tile:
    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def path(self) -> str:
        suffix = f".p/{self.width}" if self.width < TILE_WIDTH else ""
        level = "entries" if self.level == ENTRIES else self.level
        return f"tile/{level}/{index_path(self.index)}{suffix}"

    @property
    def span(self) -> int:
        """Leaves under one of its hashes (an entry bundle's entries are leaves)."""
        return int(TILE_WIDTH ** max(self.level, 0))

    @property
    def end(self) -> int:
        """The tree size from which this tile (at this width) is complete."""
        return (self.index * TILE_WIDTH + self.width) * self.span

    @classmethod
    def parse(cls, path: str) -> Tile:
        """The tile at a path (``tile/...``), refusing any other spelling of it."""
        match = _PATH.fullmatch(path)
        if match is None:
            raise TileNotFoundError(
                f"{path!r} is not a tile path (tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>])"
            )
        level = ENTRIES if match[1] == "entries" else int(match[1])
        index = int(match[2].replace("x", "").replace("/", ""))
        width = int(match[3]) if match[3] else TILE_WIDTH
        if level > MAX_LEVEL or (match[3] and width >= TILE_WIDTH):
            raise TileNotFoundError(f"{path!r}: the level is at most 63, a partial width 1-255")
        if index_path(index) != match[2]:
            raise TileNotFoundError(f"{path!r}: the tile index is not spelled canonically")
        return cls(level, index, width)


def tiles_of(size: int) -> list[Tile]:
    """Every tile of a tree of ``size`` leaves: the full ones and the partial rightmost
    one of each level that has one."""
    tiles: list[Tile] = []
    level = 0
    while TILE_WIDTH**level <= size:
        span = TILE_WIDTH**level
        entries = size // span
        tiles += [Tile(level, index) for index in range(entries // TILE_WIDTH)]
        if entries % TILE_WIDTH:
            tiles.append(Tile(level, entries // TILE_WIDTH, entries % TILE_WIDTH))
        level += 1
    return tiles


def _placed(height: int, index: int) -> tuple[TileKey, int]:
    """The tile that holds subtree (height, index), and how many of its hashes the
    subtree needs the tile to hold (its width at least)."""
    first = index << (height % TILE_HEIGHT)
    return (height // TILE_HEIGHT, first // TILE_WIDTH), first % TILE_WIDTH + (
        1 << (height % TILE_HEIGHT)
    )


def _subtree(data: bytes | bytearray, height: int, index: int) -> bytes:
    rest = height % TILE_HEIGHT
    first = (index << rest) % TILE_WIDTH
    count = 1 << rest
    if (first + count) * HASH_SIZE > len(data):
        raise TileNotFoundError(
            f"the stored tile for subtree (height {height}, index {index}) holds "
            f"{len(data) // HASH_SIZE} hashes; the tree is missing hashes it should have"
        )
    if count == 1:
        return bytes(data[first * HASH_SIZE : (first + 1) * HASH_SIZE])
    hashes = [bytes(data[i * HASH_SIZE : (i + 1) * HASH_SIZE]) for i in range(first, first + count)]
    return perfect_root(hashes)


TileLevels = list[bytes]
"""Every complete subtree inside a tile: ``levels[r]`` holds the roots of its entries
``i * 2**r`` to ``(i + 1) * 2**r - 1``, for each i, one hash after another."""


def tile_levels(data: bytes, inner: bytes | None = None) -> TileLevels:
    """A tile's levels: sliced from its stored inner nodes when it has them, else hashed."""
    if inner is not None and len(data) == TILE_BYTES and len(inner) == INNER_BYTES:
        levels, offset = [data], 0
        for rest in range(1, TILE_HEIGHT):
            width = (TILE_WIDTH >> rest) * HASH_SIZE
            levels.append(inner[offset : offset + width])
            offset += width
        return levels
    level = data[: len(data) - len(data) % HASH_SIZE]
    levels = [level]
    sha256 = hashlib.sha256  # node_hash inlined: a tile has up to 254 inner nodes
    for _ in range(TILE_HEIGHT - 1):
        level = b"".join(
            [sha256(b"\x01" + level[i : i + 64]).digest() for i in range(0, len(level) - 63, 64)]
        )
        levels.append(level)
    return levels


class TileCache:
    """Tiles' levels, shared by every proof of a process (least recently used first
    out). A full tile never changes, and a partial one only grows: its levels serve any
    proof that needs no more hashes than it held, and a wider read replaces it."""

    def __init__(self, max_tiles: int = 512):
        self.max_tiles = max_tiles
        self._tiles: OrderedDict[tuple[str, int, int], TileLevels] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tenant: str, key: TileKey, width: int) -> TileLevels | None:
        """The levels of a tile holding at least ``width`` hashes, if cached."""
        with self._lock:
            levels = self._tiles.get((tenant, *key))
            if levels is None or len(levels[0]) < width * HASH_SIZE:
                return None
            self._tiles.move_to_end((tenant, *key))
            return levels

    def put(self, tenant: str, key: TileKey, levels: TileLevels) -> None:
        with self._lock:
            held = self._tiles.get((tenant, *key))
            if held is None or len(held[0]) < len(levels[0]):
                self._tiles[(tenant, *key)] = levels
            self._tiles.move_to_end((tenant, *key))
            while len(self._tiles) > self.max_tiles:
                self._tiles.popitem(last=False)


class TileHashes:
    """Complete-subtree hashes of a stored tree, read from its tiles (each tile read
    once), for building proofs: ``hashes.read`` is a :data:`~merkle.HashReader`."""

    def __init__(
        self, read_tiles: StoredTileReader, cache: TileCache | None = None, tenant: str = ""
    ):
        self._read_tiles = read_tiles
        self._levels: dict[TileKey, TileLevels] = {}
        self._cache = cache
        self._tenant = tenant

    def plan(self, run: Callable[[HashReader], object]) -> None:
        """Read, in one query, every tile that ``run`` (built from a reader) will need,
        found by running it once on a reader that only notes the tiles."""
        needed: dict[TileKey, int] = {}

        def note(height: int, index: int) -> bytes:
            key, width = _placed(height, index)
            needed[key] = max(needed.get(key, 0), width)
            return bytes(HASH_SIZE)

        run(note)
        self.prefetch(needed)

    def prefetch(self, needed: Mapping[TileKey, int]) -> None:
        """Read the tiles ``needed`` (key → how many hashes it must hold), unless held."""
        wanted: list[TileKey] = []
        for key, width in needed.items():
            held = self._levels.get(key)
            if held is not None and len(held[0]) >= width * HASH_SIZE:
                continue
            cached = self._cache.get(self._tenant, key, width) if self._cache else None
            if cached is not None:
                self._levels[key] = cached
            else:
                wanted.append(key)
        if not wanted:
            return
        for key, (data, inner) in self._read_tiles(wanted).items():
            levels = self._levels[key] = tile_levels(data, inner)
            if self._cache is not None:
                self._cache.put(self._tenant, key, levels)

    def read(self, height: int, index: int) -> bytes:
        key, width = _placed(height, index)
        levels = self._levels.get(key)
        if levels is None or len(levels[0]) < width * HASH_SIZE:
            self.prefetch({key: width})
            levels = self._levels.get(key)
        if levels is None:
            raise TileNotFoundError(
                f"tile {Tile(*key).path} is missing from the stored tree "
                f"(needed for subtree height {height}, index {index})"
            )
        rest = height % TILE_HEIGHT
        offset = index % (TILE_WIDTH >> rest) * HASH_SIZE
        row = levels[rest]
        if offset + HASH_SIZE > len(row):
            raise TileNotFoundError(
                f"the stored tile {Tile(*key).path} holds {len(levels[0]) // HASH_SIZE} "
                f"hashes; the tree is missing the subtree (height {height}, index {index})"
            )
        return row[offset : offset + HASH_SIZE]


class GrowingTree:
    """A tenant's tree as a follower grows it: its size and the rightmost (partial) tile
    of each level, in memory; appending a leaf hash fills them and hashes each tile that
    fills up into the level above. ``dirty`` holds the tiles changed since the last
    :meth:`take_dirty`, to be written with the follower's position."""

    def __init__(self, size: int = 0, edge: dict[int, bytes] | None = None):
        self.size = size
        self.edge: dict[int, bytearray] = {
            level: bytearray(data) for level, data in (edge or {}).items()
        }
        self.dirty: dict[TileKey, bytearray] = {}
        self.inner: dict[TileKey, bytes] = {}
        """The inner nodes of the dirty tiles that filled up."""

    @staticmethod
    def edge_keys(size: int) -> list[TileKey]:
        """The tiles holding the rightmost (partial) tile of each level at ``size``."""
        keys: list[TileKey] = []
        level = 0
        while TILE_WIDTH**level <= size:
            entries = size // TILE_WIDTH**level
            if entries % TILE_WIDTH:
                keys.append((level, entries // TILE_WIDTH))
            level += 1
        return keys

    @classmethod
    def load(cls, size: int, read_tiles: TileReader) -> GrowingTree:
        """The tree of ``size`` leaves from its stored edge tiles."""
        keys = cls.edge_keys(size)
        stored = read_tiles(keys) if keys else {}
        edge: dict[int, bytes] = {}
        for level, index in keys:
            width = (size // TILE_WIDTH**level) % TILE_WIDTH
            data = stored.get((level, index), b"")
            if len(data) < width * HASH_SIZE:
                raise TileNotFoundError(
                    f"tile {Tile(level, index, width).path} of a tree of size {size} holds "
                    f"{len(data) // HASH_SIZE} hashes; clear and rebuild the tree"
                )
            edge[level] = data[: width * HASH_SIZE]
        return cls(size, edge)

    def append(self, value: bytes) -> None:
        self.size += 1
        level, entries = 0, self.size
        while True:
            tile = self.edge.get(level)
            if tile is None:
                tile = self.edge[level] = bytearray()
            tile += value
            key = (level, (entries - 1) // TILE_WIDTH)
            self.dirty[key] = tile
            if len(tile) < TILE_BYTES:
                return
            levels = tile_levels(bytes(tile))
            self.inner[key] = b"".join(levels[1:])
            value = node_hash(levels[-1][:HASH_SIZE], levels[-1][HASH_SIZE:])
            self.edge[level] = bytearray()
            level += 1
            entries //= TILE_WIDTH

    def take_dirty(self) -> list[tuple[int, int, bytes, bytes | None]]:
        """The tiles changed since the last call, as (level, index, hashes, inner nodes
        of a full tile)."""
        dirty = [
            (level, index, bytes(data), self.inner.get((level, index)))
            for (level, index), data in self.dirty.items()
        ]
        self.dirty.clear()
        self.inner.clear()
        return dirty

    def read(self, height: int, index: int) -> bytes:
        """A complete subtree along the right edge (what the root is made of)."""
        level = height // TILE_HEIGHT
        data = self.edge.get(level, bytearray())
        first = index << (height % TILE_HEIGHT)
        expected = (self.size // TILE_WIDTH**level) // TILE_WIDTH
        if first // TILE_WIDTH != expected:
            raise TileNotFoundError(f"subtree ({height}, {index}) is not on the tree's right edge")
        return _subtree(data, height, index)

    def root(self) -> bytes:
        return tree_hash(self.size, self.read)
