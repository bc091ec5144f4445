"""The query read model: an index of every record, kept by a tracked follower.

The index holds what queries filter on and each record's seq, not the record: a query
finds seqs here and reads the records from the ledger, so a record is stored once, and
encrypted there when the ledger is (the indexed fields are in clear, as any index's).

The follower reads the ledger's notification log in order and writes a page of records
and the notification id it reached in one transaction (the library's tracking table),
so a crash resumes exactly after the last committed page: nothing skipped, nothing
written twice. A second follower racing on the same database fails that transaction on
the primary key or on the tracking row, reloads its position and carries on.

Why not ``eventsourcing.projection.ProjectionRunner`` as it stands: it commits one
transaction per event (about 1k events/s on PostgreSQL, below the 20k events/s the
ingest path is built for), and SQLite's recorder has no subscription at all. The view
classes here are the library's tracking recorders with the trail table added, and
:class:`TrailProjection` is a library ``Projection``, so a per-event runner still works.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any, Final, Literal, get_args

import msgspec
import psycopg
from eventsourcing.persistence import (
    InfrastructureFactory,
    MapperDeserialisationError,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg.sql import SQL, Identifier

from audit_core.application import Ledger, Record
from audit_core.domain import TenantLog
from audit_core.exceptions import LedgerError
from audit_core.persistence import RECORDED_TOPIC, LedgerMapper
from audit_core.schema import Outcome, Source

log = logging.getLogger(__name__)

Order = Literal["desc", "asc"]

TABLE = "trail_index_v3"
"""The read model's table. Its name changes with its shape: a process that finds the
previous one drops it, and the follower, which tracks its position under the same name,
rebuilds the new one from the ledger's first event."""
_PREVIOUS_TABLES = ("trail_index", "trail_index_v2")
TEXT_TABLE = "trail_text_v3"
"""On PostgreSQL, the text of blocks of consecutive rows, which the free text search
reads first (``PostgresTrailView``)."""

_COLUMNS = (
    "tenant, seq, occurred_at, actor_id, action, action_ns, target_type, target_id, "
    "outcome, source, search, tenant_key"
)
_WIDTH = len(_COLUMNS.split(","))
Row = tuple[str, int, str, str, str, str, str | None, str | None, str, str, str, int]


@functools.lru_cache(maxsize=4096)
def tenant_key(tenant: str) -> int:
    """A 64-bit key of a tenant that leads the secondary indexes in its place: an
    integer is compared and stored more cheaply than a name, and inserting a row cost
    2 to 3 µs less of the database's time. Keys of two tenants may collide, so every
    query names the tenant too, and a collision would cost time, never a leak."""
    digest = hashlib.blake2b(tenant.encode(), digest_size=8, person=b"vigil-tenant").digest()
    return int.from_bytes(digest, "big", signed=True)


class InvalidQueryError(LedgerError):
    """A query parameter is malformed (a bad cursor, an inverted time range)."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def to_row(record: Record) -> Row:
    """The index row of a record: what queries filter on, and its seq to fetch it by."""
    target = record.get("target") or {}
    return _row(
        record["tenant"],
        record["seq"],
        record["occurred_at"],
        record["actor"]["id"],
        record["action"],
        target.get("type"),
        target.get("id"),
        record["outcome"],
        record["source"],
        record.get("metadata") or {},
    )


def _row(
    tenant: str,
    seq: int,
    occurred_at: str,
    actor_id: str,
    action: str,
    target_type: str | None,
    target_id: str | None,
    outcome: str,
    source: str,
    metadata: dict[str, Any],
) -> Row:
    namespace = action.split(".", 1)[0]
    return (
        tenant,
        seq,
        occurred_at,
        actor_id,
        action,
        namespace,
        target_type,
        target_id,
        outcome,
        source,
        search_text(metadata),
        tenant_key(tenant),
    )


class _Actor(msgspec.Struct):
    id: str


class _Target(msgspec.Struct):
    type: str
    id: str


class _Indexed(msgspec.Struct):
    """What the read model takes from a stored record. msgspec reads only these fields
    and skips the rest without building it: half the cost of decoding whole records."""

    tenant: str
    seq: int
    occurred_at: str
    actor: _Actor
    action: str
    outcome: str
    source: str
    target: _Target | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class _StoredRecord(msgspec.Struct):
    record: _Indexed


_STORED_RECORD = msgspec.json.Decoder(_StoredRecord)


def rows_of(states: Sequence[bytes], mapper: LedgerMapper) -> list[Row]:
    """The index rows of stored ``Recorded`` states."""
    rows: list[Row] = []
    for state in states:
        try:
            record = _STORED_RECORD.decode(mapper.recorded_json(state)).record
        except msgspec.DecodeError as error:
            raise MapperDeserialisationError(
                f"cannot decode a stored audit record: {error}"
            ) from error
        target = record.target
        rows.append(
            _row(
                record.tenant,
                record.seq,
                record.occurred_at,
                record.actor.id,
                record.action,
                target.type if target else None,
                target.id if target else None,
                record.outcome,
                record.source,
                record.metadata,
            )
        )
    return rows


def search_text(metadata: Any) -> str:
    """The metadata's values, lowercased, one per line: what free text searches.

    Values only: the keys repeat in every record, and indexing their trigrams would
    double the cost of the trigram index for words that find everything.
    """
    values: list[str] = []
    _collect_values(metadata, values)
    return "\n".join(values).lower()  # one lower() of the whole: a third of the time


def _collect_values(container: Any, values: list[str]) -> None:
    for item in container.values() if type(container) is dict else container:
        kind = type(item)
        if kind is str:
            values.append(item)
        elif kind is dict or kind is list:
            _collect_values(item, values)
        elif kind is bool:
            values.append("true" if item else "false")
        elif item is not None:
            values.append(str(item))


@dataclass(frozen=True)
class TrailQuery:
    """Filters of a trail query. ``action`` ending in ``.*`` matches a prefix."""

    tenant: str
    actor_id: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    outcome: str | None = None
    source: str | None = None
    since: str | None = None
    """occurred_at >= since (normalised RFC 3339, UTC ``Z``)."""
    until: str | None = None
    """occurred_at < until."""
    text: str | None = None
    """Case-insensitive substring of a metadata value."""
    order: Order = "desc"
    after_seq: int | None = None
    """Keyset position: records beyond this seq in the query's order."""
    limit: int = 100

    def filters(self) -> dict[str, Any]:
        """The filters as given, for the audit event that records the query."""
        names = ("actor_id", "action", "target_type", "target_id", "outcome", "source")
        shown: dict[str, Any] = {n: getattr(self, n) for n in names if getattr(self, n)}
        for name in ("since", "until", "text"):
            if getattr(self, name):
                shown[name] = getattr(self, name)
        shown["order"] = self.order
        return shown


def encode_cursor(order: Order, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order) -> int:
    """The seq a cursor continues after; it must come from a query in the same order."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        cursor_order, seq = text.split(":")
        position = int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQueryError("cursor", "is not a cursor returned by this API") from None
    if cursor_order != order or position < 0:
        raise InvalidQueryError("cursor", f"was returned by a query in {cursor_order} order")
    return position


def _where(query: TrailQuery) -> tuple[str, list[Any]]:
    """WHERE clause with ``?`` placeholders; wildcards travel as parameters, never as SQL."""
    clauses = ["tenant_key = ?", "tenant = ?"]
    params: list[Any] = [tenant_key(query.tenant), query.tenant]
    for column in ("actor_id", "target_type", "target_id", "outcome", "source"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.action is not None:
        if query.action.endswith("*"):
            # On SQLite, the action's first segment has its own (action_ns) index,
            # which serves "newest first" directly however many records match; a
            # deeper prefix adds a range. (PostgresTrailView.query has its own plan.)
            prefix = query.action[:-1]
            namespace, dot, rest = prefix.partition(".")
            clauses.append("action_ns = ?")
            params.append(namespace)
            if dot and rest:
                upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
                clauses.append("action >= ? AND action < ?")
                params += [prefix, upper]
        else:
            clauses.append("action = ?")
            params.append(query.action)
    if query.since is not None:
        clauses.append("occurred_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("occurred_at < ?")
        params.append(query.until)
    if query.text:
        clauses.append("search LIKE ? ESCAPE '\\'")
        params.append(_like_pattern(query.text))
    if query.after_seq is not None:
        clauses.append("seq < ?" if query.order == "desc" else "seq > ?")
        params.append(query.after_seq)
    return " AND ".join(clauses), params


def _like_pattern(text: str) -> str:
    """A LIKE pattern for ``text`` anywhere; its wildcards travel escaped."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


TextBlock = tuple[int, str, int, int, str]
"""tenant key, tenant, first seq, last seq, and the distinct search texts of the rows."""
_TENANT: Final = 0
_SEQ: Final = 1
_SEARCH: Final = 10
_KEY: Final = 11


def text_blocks(rows: Sequence[Row], rows_per_block: int) -> list[TextBlock]:
    """The rows of each tenant, in runs of ``rows_per_block``, each run with the
    distinct search texts of its rows; a run with no text has no block."""
    by_tenant: dict[str, list[Row]] = {}
    for row in rows:
        by_tenant.setdefault(row[_TENANT], []).append(row)
    blocks: list[TextBlock] = []
    for tenant, own in by_tenant.items():
        own.sort(key=lambda row: row[_SEQ])
        for start in range(0, len(own), rows_per_block):
            run = own[start : start + rows_per_block]
            text = "\n".join(dict.fromkeys(row[_SEARCH] for row in run if row[_SEARCH]))
            if text:
                blocks.append((run[0][_KEY], tenant, run[0][_SEQ], run[-1][_SEQ], text))
    return blocks


@dataclass
class SeqPage:
    """The seqs of a page of matching records, in the query's order."""

    seqs: list[int]
    next_cursor: str | None


def _page(query: TrailQuery, seqs: list[int]) -> SeqPage:
    """A page of ``seqs`` read with one more than the query's limit."""
    more = len(seqs) > query.limit
    seqs = seqs[: query.limit]
    return SeqPage(seqs, encode_cursor(query.order, seqs[-1]) if more and seqs else None)


class TrailView(TrackingRecorder):
    """A tracking recorder that also holds the trail table. Backends subclass it."""

    table: str

    def project(self, rows: Sequence[Row], tracking: Tracking) -> None:
        """Write rows and the position they reach, atomically."""
        raise NotImplementedError

    def clear(self, application_name: str) -> None:
        """Empty the read model and forget how far it had followed ``application_name``,
        atomically, so that following starts again from the ledger's first event."""
        raise NotImplementedError

    def try_lead(self) -> bool:
        """Become the one follower of this read model, if no other process is. Held
        until :meth:`resign` (or the process ends): other followers stand by meanwhile,
        instead of racing to write the same rows."""
        raise NotImplementedError

    def still_leads(self) -> bool:
        """Whether the leadership taken by :meth:`try_lead` still holds."""
        raise NotImplementedError

    def resign(self) -> None:
        raise NotImplementedError

    def _select(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def query(self, query: TrailQuery) -> SeqPage:
        where, params = _where(query)
        direction = "DESC" if query.order == "desc" else "ASC"
        statement = f"SELECT seq FROM {self.table} WHERE {where} ORDER BY seq {direction} LIMIT ?"
        return _page(query, [row[0] for row in self._select(statement, [*params, query.limit + 1])])

    def count(self, tenant: str) -> int:
        rows = self._select(f"SELECT count(*) FROM {self.table} WHERE tenant = ?", [tenant])
        return int(rows[0][0])

    def iter_seqs(self, query: TrailQuery, page_size: int = 1000) -> Iterator[list[int]]:
        """The seqs of every record matching ``query`` (its limit ignored), page by page."""
        position = query.after_seq
        while True:
            page = self.query(replace(query, after_seq=position, limit=page_size))
            if page.seqs:
                yield page.seqs
            if page.next_cursor is None:
                return
            position = page.seqs[-1]

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        self._select("SELECT 1", [])


_INDEXES = (
    ("actor", "tenant_key, actor_id, seq"),
    ("action", "tenant_key, action, seq"),
    ("target", "tenant_key, target_type, target_id, seq"),
    ("occurred", "tenant_key, occurred_at"),
)
_SQLITE_INDEXES = (
    ("action_ns", "tenant_key, action_ns, seq"),
    ("outcome", "tenant_key, outcome, seq"),
    ("source", "tenant_key, source, seq"),
)
"""On SQLite, an action prefix, an outcome and a source have an index each; PostgreSQL
serves them from fewer (``PostgresTrailView.query``), each costing every row 2 to 4 µs
of insert time."""
_POSTGRES_INDEXES = (("outcome_source", "tenant_key, outcome, source, seq"),)
_FAN_OUT = {"outcome": get_args(Outcome), "source": get_args(Source)}
"""The closed sets of outcomes and sources, over which a query by one of them is
merged from the (outcome, source) index."""


class SQLiteTrailView(SQLiteTrackingRecorder, TrailView):
    table = TABLE

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements += [f"DROP TABLE IF EXISTS {previous}" for previous in _PREVIOUS_TABLES]
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "tenant TEXT NOT NULL, seq INTEGER NOT NULL, occurred_at TEXT NOT NULL, "
            "actor_id TEXT NOT NULL, action TEXT NOT NULL, action_ns TEXT NOT NULL, "
            "target_type TEXT, target_id TEXT, outcome TEXT NOT NULL, source TEXT NOT NULL, "
            "search TEXT NOT NULL, tenant_key INTEGER NOT NULL, "
            "PRIMARY KEY (tenant, seq)) WITHOUT ROWID"
        )
        for name, columns in (*_INDEXES, *_SQLITE_INDEXES):
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {self.table}_{name} ON {self.table} ({columns})"
            )
        return statements

    def project(self, rows: Sequence[Row], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.executemany(
                f"INSERT INTO {self.table} ({_COLUMNS}) VALUES ({','.join('?' * _WIDTH)})",
                rows,
            )
            self._insert_tracking(c, tracking)

    def _select(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, list(params))
            return [tuple(row) for row in c.fetchall()]

    def clear(self, application_name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"DELETE FROM {self.table}")
            c.execute("DELETE FROM tracking WHERE application_name = ?", [application_name])

    _leader_lock: IO[bytes] | None = None

    def try_lead(self) -> bool:
        # An advisory lock on a file beside the database (an in-memory database has
        # only this process).
        if self._leader_lock is not None or self.datastore.pool.is_sqlite_memory_mode:
            return True
        lock = open(f"{self.datastore.pool.db_name}.read-model.lock", "ab")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._leader_lock = lock
        return True

    def still_leads(self) -> bool:
        return self._leader_lock is not None or self.datastore.pool.is_sqlite_memory_mode

    def resign(self) -> None:
        if self._leader_lock is not None:
            self._leader_lock.close()  # closing the file releases its lock
            self._leader_lock = None


class PostgresTrailView(PostgresTrackingRecorder, TrailView):
    """On PostgreSQL, text columns compared with ``COLLATE "C"`` (byte order, so the
    action-prefix range is exact).

    The free text search reads blocks first: ``TEXT_TABLE`` holds, for each run of
    ``text_block_rows`` consecutive rows of a tenant, the distinct search texts of the
    run, with a trigram index when the ``pg_trgm`` extension can be created. A search
    finds the blocks whose text holds the words, newest first, and checks only their
    rows. Metadata values repeat from event to event, so a block holds far fewer
    trigrams than its rows: a trigram index of every row had cost the database 5 to 7
    µs more per row than the blocks do (``bench/readmodel.py``).
    """

    text_block_rows = 64

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any):
        super().__init__(datastore, **kwargs)
        schema = Identifier(datastore.schema)
        self.table = f'"{datastore.schema}".{TABLE}'
        table = Identifier(TABLE)
        text = 'text COLLATE "C"'
        self.sql_create_statements += [
            SQL("DROP TABLE IF EXISTS {schema}.{table}").format(
                schema=schema, table=Identifier(previous)
            )
            for previous in _PREVIOUS_TABLES
        ]
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
                f"tenant {text} NOT NULL, seq bigint NOT NULL, occurred_at {text} NOT NULL, "
                f"actor_id {text} NOT NULL, action {text} NOT NULL, action_ns {text} NOT NULL, "
                f"target_type {text}, target_id {text}, "
                f"outcome {text} NOT NULL, source {text} NOT NULL, search text NOT NULL, "
                "tenant_key bigint NOT NULL, PRIMARY KEY (tenant, seq))"
            ).format(schema=schema, table=table)
        )
        for name, columns in (*_INDEXES, *_POSTGRES_INDEXES):
            self.sql_create_statements.append(
                SQL("CREATE INDEX IF NOT EXISTS {index} ON {schema}.{table} ({columns})").format(
                    index=Identifier(f"{TABLE}_{name}"),
                    schema=schema,
                    table=table,
                    columns=SQL(columns),
                )
            )
        self.text_table = f'"{datastore.schema}".{TEXT_TABLE}'
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
                f"tenant_key bigint NOT NULL, tenant {text} NOT NULL, "
                "first_seq bigint NOT NULL, last_seq bigint NOT NULL, search text NOT NULL, "
                "PRIMARY KEY (tenant_key, last_seq, tenant))"
            ).format(schema=schema, table=Identifier(TEXT_TABLE))
        )
        self._copy = SQL(
            "COPY {schema}.{table} (" + _COLUMNS + ") FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, table=table)
        self._copy_blocks = SQL(
            "COPY {schema}.{table} (tenant_key, tenant, first_seq, last_seq, search) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, table=Identifier(TEXT_TABLE))
        self._trigram_index = SQL(
            "CREATE INDEX IF NOT EXISTS {index} ON {schema}.{table} USING gin (search gin_trgm_ops)"
        ).format(
            index=Identifier(f"{TEXT_TABLE}_search"), schema=schema, table=Identifier(TEXT_TABLE)
        )

    def create_table(self) -> None:
        super().create_table()
        # Optional: without pg_trgm the free text search scans the tenant's blocks.
        with contextlib.suppress(Exception), self.datastore.transaction(commit=True) as curs:
            curs.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        with contextlib.suppress(Exception), self.datastore.transaction(commit=True) as curs:
            curs.execute(self._trigram_index)

    def project(self, rows: Sequence[Row], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            # The page and its position are rebuilt from the ledger if a crash loses
            # them (together: it is one transaction), so the commit need not wait for
            # the disk; the ledger's own commits always do.
            curs.execute("SET LOCAL synchronous_commit TO off")
            with curs.copy(self._copy) as copy:
                copy.set_types(["text", "int8", *["text"] * (_WIDTH - 3), "int8"])
                for row in rows:
                    copy.write_row(row)
            with curs.copy(self._copy_blocks) as copy:
                copy.set_types(["int8", "text", "int8", "int8", "text"])
                for block in text_blocks(rows, self.text_block_rows):
                    copy.write_row(block)
            self._insert_tracking(curs, tracking)

    def query(self, query: TrailQuery) -> SeqPage:
        """An action prefix, or an outcome or a source alone, is served by merging reads
        of an index shared with other filters (``_SQLITE_INDEXES`` says why); free text
        without an actor, action or target, from the blocks of text."""
        if query.action is not None and query.action.endswith("*"):
            return self._query_action_prefix(query)
        others = (query.actor_id, query.action, query.target_type, query.target_id)
        if query.text and all(value is None for value in others):
            return self._query_text(query)
        given = {name for name in _FAN_OUT if getattr(query, name) is not None}
        if len(given) == 1 and all(value is None for value in others):
            (filtered,) = given
            return self._query_fanned_out(query, "source" if filtered == "outcome" else "outcome")
        return super().query(query)

    def _query_text(self, query: TrailQuery) -> SeqPage:
        # The blocks whose text holds the words, newest first (or oldest), each read by
        # its seq range. Blocks of a tenant do not overlap, so ordering by block, then by
        # seq, is the seq order and the join stops once it has a page.
        assert query.text
        where, params = _where(query)
        direction = "DESC" if query.order == "desc" else "ASC"
        blocks = "b.tenant_key = ? AND b.tenant = ? AND b.search LIKE ? ESCAPE '\\'"
        blocks_params = [tenant_key(query.tenant), query.tenant, _like_pattern(query.text)]
        if query.after_seq is not None:
            blocks += " AND b.first_seq < ?" if query.order == "desc" else " AND b.last_seq > ?"
            blocks_params.append(query.after_seq)
        statement = (
            f"SELECT page.seq FROM {self.text_table} b CROSS JOIN LATERAL (SELECT seq "
            f"FROM {self.table} WHERE seq BETWEEN b.first_seq AND b.last_seq AND {where} "
            f"ORDER BY seq {direction}) page WHERE {blocks} "
            f"ORDER BY b.last_seq {direction}, page.seq {direction} LIMIT ?"
        )
        rows = self._select(statement, [*params, *blocks_params, query.limit + 1])
        return _page(query, [row[0] for row in rows])

    def _query_fanned_out(self, query: TrailQuery, column: str) -> SeqPage:
        # An outcome (or a source) alone: the (outcome, source) index read once per
        # source (or outcome), the pages merged.
        values = _FAN_OUT[column]
        rows = ", ".join(["(?)"] * len(values))
        return self._merged(query, f"WITH v(value) AS (VALUES {rows})", list(values), column)

    def _query_action_prefix(self, query: TrailQuery) -> SeqPage:
        # An action prefix: a loose scan of the action index finds each action under
        # it, and the action index is read once per action, the pages merged.
        assert query.action is not None
        prefix = query.action[:-1]
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        key = tenant_key(query.tenant)
        actions = (
            "WITH RECURSIVE v(value) AS ("
            f"(SELECT action FROM {self.table} WHERE tenant_key = ? AND action >= ? "
            "AND action < ? ORDER BY action LIMIT 1) "
            f"UNION ALL SELECT (SELECT action FROM {self.table} WHERE tenant_key = ? "
            "AND action > v.value AND action < ? ORDER BY action LIMIT 1) "
            "FROM v WHERE v.value IS NOT NULL)"
        )
        params = [key, prefix, upper, key, upper]
        return self._merged(replace(query, action=None), actions, params, "action")

    def _merged(
        self, query: TrailQuery, values: str, values_params: list[Any], column: str
    ) -> SeqPage:
        """The newest matches of ``query`` for each value of ``column`` that the CTE
        ``values`` lists, each read from an index led by that column, merged by seq."""
        where, params = _where(query)
        direction = "DESC" if query.order == "desc" else "ASC"
        statement = (
            f"{values} SELECT page.seq FROM v CROSS JOIN LATERAL (SELECT seq "
            f'FROM {self.table} WHERE {column} = v.value COLLATE "C" AND {where} '
            f"ORDER BY seq {direction} LIMIT ?) page "
            f"WHERE v.value IS NOT NULL ORDER BY page.seq {direction} LIMIT ?"
        )
        limit = query.limit + 1
        rows = self._select(statement, [*values_params, *params, limit, limit])
        return _page(query, [row[0] for row in rows])

    def _select(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement.replace("?", "%s"), list(params), prepare=True)
            return [tuple(row.values()) for row in curs.fetchall()]

    def clear(self, application_name: str) -> None:
        tracking = Identifier(self.datastore.schema, self.tracking_table_name)
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("TRUNCATE {table}, {text}").format(
                    table=SQL(self.table), text=SQL(self.text_table)
                )
            )
            curs.execute(
                SQL("DELETE FROM {tracking} WHERE application_name = %s").format(tracking=tracking),
                [application_name],
            )

    _leader_connection: Any = None

    @property
    def _leader_key(self) -> int:
        """The advisory lock's key: one per read model (that is, per schema)."""
        digest = hashlib.blake2b(
            f"vigil read model {self.datastore.schema}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big", signed=True)

    def try_lead(self) -> bool:
        # A session lock, on a connection kept out of the pool for as long as it is
        # held: PostgreSQL releases it when that session ends, however it ends.
        if self._leader_connection is not None:
            return True
        conn = self.datastore.pool.getconn()
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s) AS led", [self._leader_key]
            ).fetchone()
        except BaseException:
            self.datastore.pool.putconn(conn)
            raise
        if not (row and row["led"]):
            self.datastore.pool.putconn(conn)
            return False
        self._leader_connection = conn
        return True

    def still_leads(self) -> bool:
        conn = self._leader_connection
        if conn is None:
            return False
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            self._leader_connection = None
            self.datastore.pool.putconn(conn)  # a broken connection is discarded
            return False
        return True

    def resign(self) -> None:
        conn, self._leader_connection = self._leader_connection, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", [self._leader_key])
            self.datastore.pool.putconn(conn)


class TrailProjection(Projection[TrailView]):
    """The library-shaped projection: one record, one transaction."""

    name = "ReadModel"
    topics = (RECORDED_TOPIC,)

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if isinstance(domain_event, TenantLog.Recorded):
            self.view.project([to_row(domain_event.record)], tracking)
        else:
            self.view.insert_tracking(tracking)


_VIEWS: dict[str, type[TrailView]] = {
    "eventsourcing.sqlite": SQLiteTrailView,
    "eventsourcing.postgres": PostgresTrailView,
}


def open_view(env: dict[str, str]) -> TrailView:
    """The trail view on the database named by the ledger's environment."""
    module = env.get("PERSISTENCE_MODULE", "")
    view_class = _VIEWS.get(module)
    if view_class is None:
        raise TypeError(f"the read model needs SQLite or PostgreSQL, not {module!r}")
    factory = InfrastructureFactory.construct(Environment(TrailProjection.name, env))
    view = factory.tracking_recorder(view_class)
    assert isinstance(view, TrailView)
    view.factory = factory  # type: ignore[attr-defined]  # kept alive and closed with the view
    return view


def close_view(view: TrailView) -> None:
    view.resign()
    factory = getattr(view, "factory", None)
    if factory is not None:
        factory.close()


class ReadModelFollower:
    """Keeps a :class:`TrailView` up to date with a ledger, in a background thread.

    It polls the notification log every ``poll_interval`` seconds when idle; ``nudge()``
    (called by the API after each write) wakes it at once. Of the followers of one read
    model, only the one that leads (``TrailView.try_lead``) writes.
    """

    leadership_check_seconds = 2.0

    def __init__(
        self,
        ledger: Ledger,
        view: TrailView,
        *,
        poll_interval: float = 0.2,
        page_size: int = 2000,
    ):
        self.ledger = ledger
        self.view = view
        self.poll_interval = poll_interval
        self.page_size = page_size
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None
        self.leading = False
        self._leadership_checked = 0.0

    @property
    def app_name(self) -> str:
        """The name its position is tracked under: the table's, so that a new table
        is followed from the start."""
        return f"{self.ledger.name}:{TABLE}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vigil-read-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.leading:
            self.view.resign()
            self.leading = False

    def nudge(self) -> None:
        self._wake.set()

    def position(self) -> int:
        return self.view.max_tracking_id(self.app_name) or 0

    def lag(self) -> int:
        """Notifications recorded by the ledger and not yet in the read model."""
        return max(0, (self.ledger.recorder.max_notification_id() or 0) - self.position())

    def catch_up(self, timeout: float = 10.0) -> None:
        """Block until everything the ledger has recorded so far is in the read model."""
        target = self.ledger.recorder.max_notification_id()
        if not target:
            return
        self._wake.set()
        self.view.wait(self.app_name, target, timeout=timeout)

    def run_once(self, position: int) -> tuple[int, int]:
        """Apply one page after ``position``; return the new position and the page size."""
        notes = self.ledger.ledger_recorder.recorded_after(position, self.page_size)
        if not notes.ids:
            return position, 0
        rows = rows_of(notes.states, self.ledger.ledger_mapper)
        self.view.project(rows, Tracking(self.app_name, notes.ids[-1]))
        return notes.ids[-1], len(rows)

    def _lead(self) -> bool:
        """Whether this follower leads (taking the lead if it is free); the others
        stand by, and one of them takes over when the leader's process ends."""
        now = time.monotonic()
        if self.leading and now - self._leadership_checked < self.leadership_check_seconds:
            return True
        self._leadership_checked = now
        was_leading = self.leading
        self.leading = self.view.still_leads() or self.view.try_lead()
        if self.leading != was_leading:
            log.info("read model follower %s", "leads" if self.leading else "stands by")
        return self.leading

    def _run(self) -> None:
        position: int | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self._lead():
                    position = None  # the leader moves on meanwhile
                    self._stopping.wait(self.leadership_check_seconds)
                    continue
                if position is None:
                    position = self.position()
                position, applied = self.run_once(position)
                failures = 0
                self.last_error = None
                if applied >= self.page_size:
                    continue
            except Exception as error:  # keep following; the position is reloaded
                self.last_error = error
                failures += 1
                position = None
                log.warning("read model follower failed (%s), retrying: %s", failures, error)
                self._stopping.wait(min(5.0, 0.1 * 2**failures))
                continue
            self._wake.wait(self.poll_interval)
            self._wake.clear()
