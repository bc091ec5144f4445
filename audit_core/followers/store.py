"""Where the runner keeps what every follower shares: sinks' positions, each follower's
errors and stop, and leadership, in the ledger's own database.

Everything here is readable from any process, so that ``vigil status``, ``/readyz`` and
``/metrics`` report followers that run elsewhere (``vigil serve`` runs them in a child
process, ``vigil worker`` on another machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import psycopg
from eventsourcing.persistence import InfrastructureFactory, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg.sql import SQL, Identifier

STATE_TABLE = "follower_state"

R = TypeVar("R", bound=TrackingRecorder)


@dataclass(frozen=True)
class FollowerState:
    """What a follower's runs have left on record: errors, and the record it stopped at."""

    errors_total: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    stopped_at: int | None = None
    """The notification id of the record it cannot process, while it is stopped."""
    stopped_reason: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StateRecorder:
    """Sinks' positions (the library's tracking table) and ``follower_state``."""

    def state(self, name: str) -> FollowerState:
        rows = self._select(
            f"SELECT errors_total, last_error, last_error_at, stopped_at, stopped_reason "
            f"FROM {self._state_table} WHERE name = ?",
            [name],
        )
        return FollowerState(*rows[0]) if rows else FollowerState()

    def record_error(self, name: str, error: str) -> None:
        self._execute(
            f"INSERT INTO {self._state_table} (name, errors_total, last_error, last_error_at) "
            "VALUES (?, 1, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "errors_total = excluded.errors_total + "
            f"{self._state_table_bare}.errors_total, "
            "last_error = excluded.last_error, last_error_at = excluded.last_error_at",
            [name, error[:2000], _now()],
        )

    def record_stop(self, name: str, notification_id: int, reason: str) -> None:
        self._execute(
            f"INSERT INTO {self._state_table} "
            "(name, errors_total, last_error, last_error_at, stopped_at, stopped_reason) "
            "VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            f"errors_total = {self._state_table_bare}.errors_total + 1, "
            "last_error = excluded.last_error, last_error_at = excluded.last_error_at, "
            "stopped_at = excluded.stopped_at, stopped_reason = excluded.stopped_reason",
            [name, reason[:2000], _now(), notification_id, reason[:2000]],
        )

    def clear_stop(self, name: str) -> None:
        self._execute(
            f"UPDATE {self._state_table} SET stopped_at = NULL, stopped_reason = NULL "
            "WHERE name = ?",
            [name],
        )

    def rewind(self, name: str, position: int) -> None:
        """Set a position back (the tracking table only moves forward by itself)."""
        self._execute(f"DELETE FROM {self._tracking_table} WHERE application_name = ?", [name])
        if position > 0:
            self._execute(
                f"INSERT INTO {self._tracking_table} (application_name, notification_id) "
                "VALUES (?, ?)",
                [name, position],
            )

    _state_table: str
    _state_table_bare = STATE_TABLE
    _tracking_table: str

    def _state_columns(self) -> str:
        return (
            "name TEXT PRIMARY KEY, errors_total BIGINT NOT NULL DEFAULT 0, last_error TEXT, "
            "last_error_at TEXT, stopped_at BIGINT, stopped_reason TEXT"
        )

    def _select(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _execute(self, statement: str, params: list[Any]) -> None:
        raise NotImplementedError


class SQLiteStateRecorder(SQLiteTrackingRecorder, StateRecorder):
    _state_table = STATE_TABLE
    _tracking_table = "tracking"

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ({self._state_columns()})",
        ]

    def _select(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return [tuple(row) for row in c.fetchall()]

    def _execute(self, statement: str, params: list[Any]) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(statement, params)


class PostgresStateRecorder(PostgresTrackingRecorder, StateRecorder):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any):
        super().__init__(datastore, **kwargs)
        self._state_table = f'"{datastore.schema}".{STATE_TABLE}'
        self._tracking_table = f'"{datastore.schema}"."{self.tracking_table_name}"'
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} (" + self._state_columns() + ")"
            ).format(schema=Identifier(datastore.schema), table=Identifier(STATE_TABLE))
        )

    def _select(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement.replace("?", "%s"), params)
            return [tuple(row.values()) for row in curs.fetchall()]

    def _execute(self, statement: str, params: list[Any]) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(statement.replace("?", "%s"), params)


def connection_kwargs(datastore: PostgresDatastore) -> dict[str, Any]:
    """How to open a connection of one's own to the datastore's database."""
    kwargs = datastore.pool.kwargs
    kwargs = dict(kwargs() if callable(kwargs) else kwargs or {})
    kwargs.pop("row_factory", None)
    return kwargs


class Leadership:
    """Of the processes that run a follower, one leads: ``try_lead`` takes the lead if
    it is free and holds it until ``resign`` or the process ends."""

    def try_lead(self, name: str) -> bool:
        raise NotImplementedError

    def still_leads(self, name: str) -> bool:
        raise NotImplementedError

    def resign(self, name: str) -> None:
        raise NotImplementedError

    def led_elsewhere(self, name: str) -> bool:
        """Whether another process leads ``name`` (for ``vigil status``)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FileLeadership(Leadership):
    """A lock file per follower beside the SQLite database (``flock``: the kernel
    releases it when the process ends, however it ends). An in-memory database has only
    this process."""

    def __init__(self, db_name: str, in_memory: bool):
        self._db_name = db_name
        self._in_memory = in_memory
        self._locks: dict[str, IO[bytes]] = {}

    def _path(self, name: str) -> str:
        return f"{self._db_name}.{name.replace('/', '_')}.lock"

    def _lock(self, name: str) -> IO[bytes] | None:
        lock = open(self._path(name), "ab")  # noqa: SIM115  (held for as long as it leads)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    def try_lead(self, name: str) -> bool:
        if self._in_memory or name in self._locks:
            return True
        lock = self._lock(name)
        if lock is None:
            return False
        self._locks[name] = lock
        return True

    def still_leads(self, name: str) -> bool:
        return self._in_memory or name in self._locks

    def resign(self, name: str) -> None:
        lock = self._locks.pop(name, None)
        if lock is not None:
            lock.close()  # closing the file releases its lock

    def led_elsewhere(self, name: str) -> bool:
        if self._in_memory or name in self._locks:
            return False
        lock = self._lock(name)
        if lock is None:
            return True
        lock.close()
        return False

    def close(self) -> None:
        for name in list(self._locks):
            self.resign(name)


class AdvisoryLeadership(Leadership):
    """PostgreSQL session advisory locks keyed by the schema and the follower's name, on
    one connection of this process kept outside the pool: PostgreSQL releases them when
    that session ends, however it ends."""

    def __init__(self, datastore: PostgresDatastore):
        self._datastore = datastore
        self._conn: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()
        self._mutex = threading.Lock()

    def key(self, name: str) -> int:
        digest = hashlib.blake2b(
            f"vigil follower {self._datastore.schema} {name}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            kwargs = connection_kwargs(self._datastore)
            self._conn = psycopg.connect(
                autocommit=True,
                connect_timeout=max(1, int(self._datastore.pool.timeout)),
                **kwargs,
            )
            self._held.clear()
        return self._conn

    def try_lead(self, name: str) -> bool:
        with self._mutex:
            if name in self._held:
                return True
            row = (
                self._connection()
                .execute("SELECT pg_try_advisory_lock(%s)", [self.key(name)])
                .fetchone()
            )
            if row and row[0]:
                self._held.add(name)
                return True
            return False

    def still_leads(self, name: str) -> bool:
        with self._mutex:
            if name not in self._held or self._conn is None:
                return False
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                # The session is gone, and its locks with it.
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None
                self._held.clear()
                return False
            return True

    def resign(self, name: str) -> None:
        with self._mutex:
            if name in self._held and self._conn is not None:
                self._held.discard(name)
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", [self.key(name)])

    def led_elsewhere(self, name: str) -> bool:
        key = self.key(name)
        classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
        with self._datastore.get_connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1 "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND pid <> pg_backend_pid() AND pid <> %s",
                [classid, objid, self._conn.info.backend_pid if self._conn else 0],
            ).fetchone()
        return bool(row and row["n"])

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
            self._conn = None
            self._held.clear()


_STATE_RECORDERS: dict[str, type[TrackingRecorder]] = {
    "eventsourcing.sqlite": SQLiteStateRecorder,
    "eventsourcing.postgres": PostgresStateRecorder,
}


class FollowerStore:
    """One per process and database: the shared infrastructure of its followers."""

    def __init__(self, env: dict[str, str]):
        module = env.get("PERSISTENCE_MODULE", "")
        state_class = _STATE_RECORDERS.get(module)
        if state_class is None:
            raise TypeError(f"followers need SQLite or PostgreSQL, not {module!r}")
        if module == "eventsourcing.postgres":
            # One connection kept open; more, up to the ledger's pool size, while
            # several followers of this process write at once.
            size = int(env.get("POSTGRES_POOL_SIZE") or 5)
            env = {**env, "POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": str(max(size, 2))}
        self.factory = InfrastructureFactory.construct(Environment("Followers", env))
        try:
            recorder = self.factory.tracking_recorder(state_class)
        except BaseException:
            self.factory.close()
            raise
        assert isinstance(recorder, StateRecorder)
        self.states: StateRecorder = recorder
        self.positions: TrackingRecorder = recorder
        datastore: Any = getattr(recorder, "datastore", None)
        if isinstance(datastore, PostgresDatastore):
            self.leadership: Leadership = AdvisoryLeadership(datastore)
        else:
            assert isinstance(datastore, SQLiteDatastore)
            self.leadership = FileLeadership(
                datastore.pool.db_name, datastore.pool.is_sqlite_memory_mode
            )

    def view_recorder(self, recorder_class: type[R]) -> R:
        """A view's recorder (a tracking recorder with the view's own tables, created
        if need be) on this store's database and connections."""
        recorder = self.factory.tracking_recorder(recorder_class)
        assert isinstance(recorder, recorder_class)
        return recorder

    def close(self) -> None:
        self.leadership.close()
        self.factory.close()


def open_store(env: dict[str, str]) -> FollowerStore:
    return FollowerStore(env)
