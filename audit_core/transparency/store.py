"""Tenants' trees (tiles), their sizes and their signed checkpoints, in the ledger's own
database (SQLite or PostgreSQL).

- ``tlog_tiles``: one row per tile, (tenant, level, index) → up to 256 hashes; the
  rightmost tile of each level grows in place until full, and is then written once
  more with its inner nodes (``inner_nodes``, for proofs) and never again;
- ``tlog_trees``: each tenant's tree size and the chain hash of its last leaf;
- ``tlog_checkpoints``: every signed checkpoint, (tenant, size) → root and note. Rows
  are only ever inserted: clearing the tree for a rebuild keeps them, so the rebuilt
  tree must prove itself consistent with them before anything new is signed.

Tiles, sizes and the follower's position are written in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from audit_core.transparency.tiles import StoredTile, TileKey

TILES = "tlog_tiles"
TREES = "tlog_trees"
CHECKPOINTS = "tlog_checkpoints"


@dataclass(frozen=True)
class TreeUpdate:
    """What a page did to one tenant's tree."""

    tenant: str
    size: int
    head_hash: str
    tiles: Sequence[tuple[int, int, bytes, bytes | None]]
    """(level, index, hashes, inner nodes once full) of the tiles it changed."""


@dataclass(frozen=True)
class StoredCheckpoint:
    tenant: str
    size: int
    root: bytes
    note: str
    signed_at: str


class TreeStore(TrackingRecorder):
    """The transparency log's tables beside a tracking table. Backends subclass it."""

    _tiles: str
    _trees: str
    _checkpoints: str

    # -- backend primitives -------------------------------------------------------------

    def _select(
        self, statement: str, params: Sequence[Any], commit: bool = False
    ) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def write(self, updates: Sequence[TreeUpdate], tracking: Tracking | None) -> None:
        """Tiles and sizes of every updated tree, and the position, atomically."""
        raise NotImplementedError

    def clear(self, name: str) -> None:
        """Forget every tree and the position of follower ``name``; checkpoints stay."""
        raise NotImplementedError

    # -- shared queries -------------------------------------------------------------------

    def _upserts(self, updates: Sequence[TreeUpdate]) -> list[tuple[str, list[Sequence[Any]]]]:
        tiles = [(update.tenant, *tile) for update in updates for tile in update.tiles]
        trees = [(update.tenant, update.size, update.head_hash) for update in updates]
        return [
            (
                f"INSERT INTO {self._tiles} (tenant, level, idx, hashes, inner_nodes) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, level, idx) DO UPDATE SET "
                "hashes = excluded.hashes, inner_nodes = excluded.inner_nodes",
                tiles,  # type: ignore[list-item]
            ),
            (
                f"INSERT INTO {self._trees} (tenant, size, head_hash) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant) DO UPDATE SET size = excluded.size, "
                "head_hash = excluded.head_hash",
                trees,  # type: ignore[list-item]
            ),
        ]

    def read_tiles(self, tenant: str, keys: Sequence[TileKey]) -> dict[TileKey, bytes]:
        return {key: bytes(row[0]) for key, row in self._tile_rows(tenant, keys, "hashes")}

    def read_stored_tiles(self, tenant: str, keys: Sequence[TileKey]) -> dict[TileKey, StoredTile]:
        """Tiles with the inner nodes of those stored full (for proofs)."""
        return {
            key: (bytes(row[0]), None if row[1] is None else bytes(row[1]))
            for key, row in self._tile_rows(tenant, keys, "hashes, inner_nodes")
        }

    def _tile_rows(
        self, tenant: str, keys: Sequence[TileKey], columns: str
    ) -> Iterator[tuple[TileKey, tuple[Any, ...]]]:
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            condition = " OR ".join(["(level = ? AND idx = ?)"] * len(chunk))
            params: list[Any] = [tenant]
            for level, index in chunk:
                params += [level, index]
            for row in self._select(
                f"SELECT level, idx, {columns} FROM {self._tiles} "
                f"WHERE tenant = ? AND ({condition})",
                params,
            ):
                yield (int(row[0]), int(row[1])), row[2:]

    def tree(self, tenant: str) -> tuple[int, str] | None:
        """(size, hash of the last leaf's record) of a tenant's tree, if it has one."""
        rows = self._select(f"SELECT size, head_hash FROM {self._trees} WHERE tenant = ?", [tenant])
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def trees(self) -> dict[str, int]:
        """Every tenant's tree size."""
        return {
            str(row[0]): int(row[1])
            for row in self._select(f"SELECT tenant, size FROM {self._trees}", [])
        }

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        """Keep a signed checkpoint; False (and nothing written) if the tenant already
        has one of that size."""
        rows = self._select(
            f"INSERT INTO {self._checkpoints} (tenant, size, root, note, signed_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, size) DO NOTHING RETURNING size",
            [checkpoint.tenant, checkpoint.size, checkpoint.root, checkpoint.note,
             checkpoint.signed_at],
            commit=True,
        )  # fmt: skip
        return bool(rows)

    def _checkpoint_rows(self, where: str, params: Sequence[Any]) -> list[StoredCheckpoint]:
        rows = self._select(
            f"SELECT tenant, size, root, note, signed_at FROM {self._checkpoints} {where}",
            params,
        )
        return [
            StoredCheckpoint(str(r[0]), int(r[1]), bytes(r[2]), str(r[3]), str(r[4])) for r in rows
        ]

    def latest_checkpoint(self, tenant: str) -> StoredCheckpoint | None:
        found = self._checkpoint_rows("WHERE tenant = ? ORDER BY size DESC LIMIT 1", [tenant])
        return found[0] if found else None

    def checkpoint(self, tenant: str, size: int) -> StoredCheckpoint | None:
        found = self._checkpoint_rows("WHERE tenant = ? AND size = ?", [tenant, size])
        return found[0] if found else None

    def checkpoint_covering(self, tenant: str, size: int) -> StoredCheckpoint | None:
        """The smallest checkpoint whose tree holds at least ``size`` leaves."""
        found = self._checkpoint_rows(
            "WHERE tenant = ? AND size >= ? ORDER BY size LIMIT 1", [tenant, size]
        )
        return found[0] if found else None

    def checkpoints(self, tenant: str) -> list[StoredCheckpoint]:
        """Every checkpoint of a tenant, smallest tree first."""
        return self._checkpoint_rows("WHERE tenant = ? ORDER BY size", [tenant])

    def checkpoint_tenants(self) -> list[str]:
        return [
            str(row[0])
            for row in self._select(
                f"SELECT DISTINCT tenant FROM {self._checkpoints} ORDER BY tenant", []
            )
        ]

    def ping(self) -> None:
        self._select("SELECT 1", [])


_TILE_COLUMNS = "tenant TEXT NOT NULL, level INTEGER NOT NULL, idx BIGINT NOT NULL"
_TREE_COLUMNS = "tenant TEXT PRIMARY KEY, size BIGINT NOT NULL, head_hash TEXT NOT NULL"
_CHECKPOINT_COLUMNS = (
    "tenant TEXT NOT NULL, size BIGINT NOT NULL, note TEXT NOT NULL, signed_at TEXT NOT NULL"
)


class SQLiteTreeStore(SQLiteTrackingRecorder, TreeStore):
    _tiles, _trees, _checkpoints = TILES, TREES, CHECKPOINTS

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {TILES} ({_TILE_COLUMNS}, hashes BLOB NOT NULL, "
            "inner_nodes BLOB, PRIMARY KEY (tenant, level, idx)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {TREES} ({_TREE_COLUMNS})",
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} ({_CHECKPOINT_COLUMNS}, root BLOB NOT NULL, "
            "PRIMARY KEY (tenant, size))",
        ]

    def create_table(self) -> None:
        super().create_table()
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"PRAGMA table_info({TILES})")
            if "inner_nodes" not in [row[1] for row in c.fetchall()]:
                # Trees kept before inner nodes were stored: proofs hash those tiles' nodes.
                c.execute(f"ALTER TABLE {TILES} ADD COLUMN inner_nodes BLOB")

    def _select(
        self, statement: str, params: Sequence[Any], commit: bool = False
    ) -> list[tuple[Any, ...]]:
        with self.datastore.transaction(commit=commit) as c:
            c.execute(statement, list(params))
            return [tuple(row) for row in c.fetchall()]

    def write(self, updates: Sequence[TreeUpdate], tracking: Tracking | None) -> None:
        with self.datastore.transaction(commit=True) as c:
            for statement, rows in self._upserts(updates):
                if rows:
                    c.executemany(statement, rows)
            if tracking is not None:
                self._insert_tracking(c, tracking)

    def clear(self, name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"DELETE FROM {TILES}")
            c.execute(f"DELETE FROM {TREES}")
            c.execute("DELETE FROM tracking WHERE application_name = ?", [name])


class PostgresTreeStore(PostgresTrackingRecorder, TreeStore):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any):
        super().__init__(datastore, **kwargs)
        schema = datastore.schema
        self._tiles = f'"{schema}".{TILES}'
        self._trees = f'"{schema}".{TREES}'
        self._checkpoints = f'"{schema}".{CHECKPOINTS}'
        self._tracking = f'"{schema}"."{self.tracking_table_name}"'
        for table, columns in (
            (
                TILES,
                f"{_TILE_COLUMNS}, hashes BYTEA NOT NULL, inner_nodes BYTEA, "
                "PRIMARY KEY (tenant, level, idx)",
            ),
            (TREES, _TREE_COLUMNS),
            (
                CHECKPOINTS,
                f"{_CHECKPOINT_COLUMNS}, root BYTEA NOT NULL, PRIMARY KEY (tenant, size)",
            ),
        ):
            self.sql_create_statements.append(
                SQL("CREATE TABLE IF NOT EXISTS {schema}.{table} (" + columns + ")").format(
                    schema=Identifier(schema), table=Identifier(table)
                )
            )
        # Trees kept before inner nodes were stored: proofs hash those tiles' nodes.
        self.sql_create_statements.append(
            SQL("ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS inner_nodes BYTEA").format(
                schema=Identifier(schema), table=Identifier(TILES)
            )
        )

    def _select(
        self, statement: str, params: Sequence[Any], commit: bool = False
    ) -> list[tuple[Any, ...]]:
        if not commit:
            # A read on its own: no transaction block around it (one round trip).
            # Binary: a tile's hashes as they are, not twice as many hex digits.
            with (
                self.datastore.get_connection() as conn,
                conn.cursor(binary=True, row_factory=tuple_row) as curs,
            ):
                curs.execute(statement.replace("?", "%s"), list(params))
                return curs.fetchall()
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(statement.replace("?", "%s"), list(params))
            if curs.description is None:
                return []
            return [tuple(row.values()) for row in curs.fetchall()]

    def write(self, updates: Sequence[TreeUpdate], tracking: Tracking | None) -> None:
        with self.datastore.transaction(commit=True) as curs:
            # Tiles and position are lost together in a crash, and the follower writes
            # them again from the ledger: the commit need not wait for the disk.
            curs.execute("SET LOCAL synchronous_commit = off")
            for statement, rows in self._upserts(updates):
                if rows:
                    curs.executemany(statement.replace("?", "%s"), rows)
            if tracking is not None:
                self._insert_tracking(curs, tracking)

    def clear(self, name: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(f"DELETE FROM {self._tiles}")
            curs.execute(f"DELETE FROM {self._trees}")
            curs.execute(
                f"DELETE FROM {self._tracking} WHERE application_name = %s",
                [name],
            )


_STORES: dict[str, type[TreeStore]] = {
    "eventsourcing.sqlite": SQLiteTreeStore,
    "eventsourcing.postgres": PostgresTreeStore,
}


def tree_store_class(env: dict[str, str]) -> type[TreeStore]:
    """The tree store class for the ledger's persistence module."""
    module = env.get("PERSISTENCE_MODULE", "")
    store_class = _STORES.get(module)
    if store_class is None:
        raise TypeError(f"the transparency log needs SQLite or PostgreSQL, not {module!r}")
    return store_class
