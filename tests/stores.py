"""The two real backends a ledger runs on, with raw SQL access for tampering behind its back.

Each store opens ledgers the way the application does (``Settings`` → ``ledger_env()``)
and closes every one it opened. Seq n of a tenant's log is the row at
``originator_version`` n + 1; version 0 is the log's ``Opened`` event.
"""

from __future__ import annotations

import abc
import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
import pytest
from psycopg import sql

from api.settings import Settings
from audit_core import Ledger, Limits
from audit_core.domain import tenant_log_id
from audit_core.readmodel import TABLE
from tests.events import expected_hash

POSTGRES_URL = os.environ.get(
    "VIGIL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


class Store(abc.ABC):
    name: str
    url: str
    """``VIGIL_DATABASE_URL`` of this store."""

    def __init__(self) -> None:
        self._ledgers: list[Ledger] = []

    def settings(self, **fields: Any) -> Settings:
        # The detector runs only where a test asks for it: elsewhere it would add the
        # incident module's records to trails that tests count.
        fields.setdefault("incident_detector", False)
        return Settings(database_url=self.url, **fields)

    def open_ledger(self, limits: Limits | None = None, **fields: Any) -> Ledger:
        """A ledger on this store, closed when the test ends; ``fields`` are Settings."""
        settings = self.settings(**fields)
        ledger = Ledger(settings.ledger_env(), limits or settings.limits())
        self._ledgers.append(ledger)
        return ledger

    def close(self) -> None:
        for ledger in self._ledgers:
            ledger.close()
        self._ledgers.clear()

    # -- raw access, bypassing the ledger ---------------------------------------------

    @abc.abstractmethod
    def _run(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Execute one statement (``?`` placeholders) and commit; rows if it returns any."""

    @abc.abstractmethod
    def _log_key(self, tenant: str) -> Any:
        """The tenant log's originator_id as this backend stores it."""

    events_table: str
    ids_table: str
    snapshots_table: str
    trail_index_table: str
    """The read model's table."""

    def stored_state(self, tenant: str, seq: int) -> bytes:
        rows = self._run(
            f"SELECT state FROM {self.events_table} "
            "WHERE originator_id = ? AND originator_version = ?",
            (self._log_key(tenant), seq + 1),
        )
        assert len(rows) == 1, f"seq {seq} of {tenant} is not stored"
        return bytes(rows[0][0])

    def set_stored_state(self, tenant: str, seq: int, state: bytes) -> None:
        self._run(
            f"UPDATE {self.events_table} SET state = ? "
            "WHERE originator_id = ? AND originator_version = ?",
            (state, self._log_key(tenant), seq + 1),
        )

    def edit_stored_record(
        self, tenant: str, seq: int, edit: Callable[[dict[str, Any]], None], rehash: bool = False
    ) -> None:
        """Change the plain (unencrypted) stored payload of one record in place."""
        stored = orjson.loads(self.stored_state(tenant, seq))
        assert set(stored) == {"timestamp", "record", "hash"}
        edit(stored["record"])
        if rehash:
            stored["hash"] = expected_hash(stored["record"])
        self.set_stored_state(tenant, seq, orjson.dumps(stored))

    def delete_seqs(self, tenant: str, *seqs: int) -> None:
        for seq in seqs:
            self._run(
                f"DELETE FROM {self.events_table} "
                "WHERE originator_id = ? AND originator_version = ?",
                (self._log_key(tenant), seq + 1),
            )

    def delete_seq_range(self, tenant: str, first: int, last: int) -> None:
        """Delete seqs ``first`` to ``last``, both included, in one statement."""
        self._run(
            f"DELETE FROM {self.events_table} WHERE originator_id = ? "
            "AND originator_version BETWEEN ? AND ?",
            (self._log_key(tenant), first + 1, last + 1),
        )

    def cells(self, table: str) -> bytes:
        """Every cell of ``table``, as bytes."""
        cells: list[bytes] = []
        for row in self._run(f"SELECT * FROM {table}"):
            cells.extend(
                bytes(cell) if isinstance(cell, bytes | memoryview) else str(cell).encode()
                for cell in row
            )
        return b"\x00".join(cells)

    def delete_indexed_ids(self, tenant: str, from_seq: int) -> None:
        """Remove id index entries from ``from_seq`` on, as a careful intruder would."""
        self._run(
            f"DELETE FROM {self.ids_table} WHERE originator_id = ? AND seq >= ?",
            (self._log_key(tenant), from_seq),
        )

    def swap_states(self, tenant: str, first: int, second: int) -> None:
        one, other = self.stored_state(tenant, first), self.stored_state(tenant, second)
        self.set_stored_state(tenant, first, other)
        self.set_stored_state(tenant, second, one)

    def swap_versions(self, tenant: str, first: int, second: int) -> None:
        """Swap the rows' originator_version values (through a free version: it is a key)."""
        key = self._log_key(tenant)
        moves = [(first + 1, -1), (second + 1, first + 1), (-1, second + 1)]
        for old, new in moves:
            self._run(
                f"UPDATE {self.events_table} SET originator_version = ? "
                "WHERE originator_id = ? AND originator_version = ?",
                (new, key, old),
            )

    def set_topic(self, tenant: str, seq: int, topic: str) -> None:
        self._run(
            f"UPDATE {self.events_table} SET topic = ? "
            "WHERE originator_id = ? AND originator_version = ?",
            (topic, self._log_key(tenant), seq + 1),
        )

    def move_row(self, tenant: str, seq: int, to_tenant: str, to_seq: int) -> None:
        """Move one stored row into another tenant's log, at ``to_seq``."""
        self._run(
            f"UPDATE {self.events_table} SET originator_id = ?, originator_version = ? "
            "WHERE originator_id = ? AND originator_version = ?",
            (self._log_key(to_tenant), to_seq + 1, self._log_key(tenant), seq + 1),
        )

    def insert_row(self, log_id: uuid.UUID, version: int, topic: str, state: bytes) -> None:
        """A row the ledger never wrote, in any log."""
        key = log_id if isinstance(self, PostgresStore) else log_id.hex
        self._run(
            f"INSERT INTO {self.events_table} (originator_id, originator_version, topic, state) "
            "VALUES (?, ?, ?, ?)",
            (key, version, topic, state),
        )

    def stored_versions(self, tenant: str) -> list[int]:
        rows = self._run(
            f"SELECT originator_version FROM {self.events_table} "
            "WHERE originator_id = ? ORDER BY originator_version",
            (self._log_key(tenant),),
        )
        return [row[0] for row in rows]

    def everything_stored(self) -> bytes:
        """Every cell of the events, id index and snapshot tables, as bytes."""
        tables = (self.events_table, self.ids_table, self.snapshots_table)
        return b"\x00".join(self.cells(table) for table in tables)


class SQLiteStore(Store):
    name = "sqlite"
    events_table = "stored_events"
    ids_table = "stored_events_ids"
    snapshots_table = "stored_snapshots"
    trail_index_table = TABLE

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}"

    def _run(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.path)
        try:
            with connection:
                return connection.execute(statement, tuple(params)).fetchall()
        finally:
            connection.close()

    def _log_key(self, tenant: str) -> Any:
        return tenant_log_id(tenant).hex


class PostgresStore(Store):
    """A fresh schema of the test database, dropped with everything in it at the end."""

    name = "postgres"

    def __init__(self, admin_url: str = POSTGRES_URL):
        super().__init__()
        self.schema = f"vigil_test_{uuid.uuid4().hex[:12]}"
        self._connection = connect_or_fail(admin_url)
        # A ledger left holding a lock must fail the teardown's DROP, not hang the run.
        self._connection.execute("SET lock_timeout = '15s'")
        self._connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self.url = with_query(admin_url, schema=self.schema)
        self.events_table = f'"{self.schema}".ledger_events'
        self.ids_table = f'"{self.schema}".ledger_events_ids'
        self.snapshots_table = f'"{self.schema}".ledger_snapshots'
        self.trail_index_table = f'"{self.schema}".{TABLE}'

    def _run(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._connection.execute(statement.replace("?", "%s"), tuple(params))
        return cursor.fetchall() if cursor.description else []

    def _log_key(self, tenant: str) -> Any:
        return tenant_log_id(tenant)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
            self._connection.close()


def connect_or_fail(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection, or a failed test saying PostgreSQL is down (never a skip)."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is unreachable at {url}: {error}\n"
            "Start it, or point VIGIL_TEST_POSTGRES_URL at one; "
            "PostgreSQL tests fail rather than skip when it is down.",
            pytrace=False,
        )


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))
