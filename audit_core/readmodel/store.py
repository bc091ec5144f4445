"""The read model's tables on SQLite and PostgreSQL, written a page at a time with the
follower's position, and read by trail queries."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, get_args

from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL, Identifier

from audit_core.readmodel.blind import BlindIndex
from audit_core.readmodel.query import (
    Address,
    Network,
    SeqPage,
    TrailQuery,
    _like_pattern,
    _page,
    _where,
    blinded,
    network,
)
from audit_core.readmodel.rows import (
    _COLUMNS,
    _WIDTH,
    Row,
    packed_address,
    tenant_key,
    text_blocks,
)
from audit_core.schema import Outcome, Source

TABLE = "trail_index_v5"
"""The read model's table. Its name changes with its shape: a process that finds the
previous one drops it, and the follower, seeing that the read model's shape is not the
one its position was tracked for (``TrailView.shape``), rebuilds the new one from the
ledger's first event."""
KEYED_TABLE = f"{TABLE}_keyed"
"""The read model's table when the ledger is encrypted: keyed hashes in place of the
identifiers and words (``audit_core.readmodel.blind``)."""
_PREVIOUS_TABLES = (
    "trail_index", "trail_index_v2", "trail_index_v3", "trail_index_v4", "trail_index_v4_keyed",
)  # fmt: skip
TEXT_TABLE = "trail_text_v5"
"""On PostgreSQL, the text of blocks of consecutive rows, which the free text search
reads first (``PostgresTrailView``)."""
KEYED_TEXT_TABLE = f"{TEXT_TABLE}_keyed"
_PREVIOUS_TEXT_TABLES = ("trail_text_v3", "trail_text_v4", "trail_text_v4_keyed")
SHAPE_TABLE = "trail_shape"
"""Which shape of the read model (table and key) each follower's position was tracked
for; ``TrailView.clear`` writes it with the emptied tables and the forgotten position."""


class TrailView(TrackingRecorder):
    """A tracking recorder that also holds the trail table. Backends subclass it;
    ``trail_view_class`` gives the subclass for a ledger's environment."""

    table: str
    table_name: str = TABLE
    text_table_name: str = TEXT_TABLE
    blind: BlindIndex | None = None
    """Set when the ledger is encrypted: the keyed hashes that the rows and the queries'
    values are written as."""

    @classmethod
    def dropped_tables(cls) -> tuple[str, ...]:
        """Tables of earlier versions, and the other mode's: a read model in clear is
        dropped, not kept beside the keyed one, when the ledger's key is set."""
        names = (TABLE, KEYED_TABLE, *_PREVIOUS_TABLES)
        return tuple(name for name in names if name != cls.table_name)

    @classmethod
    def dropped_text_tables(cls) -> tuple[str, ...]:
        names = (TEXT_TABLE, KEYED_TEXT_TABLE, *_PREVIOUS_TEXT_TABLES)
        return tuple(name for name in names if name != cls.text_table_name)

    @property
    def shape(self) -> str:
        """The table and, when keyed, the key's id: a position tracked for another
        shape is no position in this one."""
        return self.table_name + (f":{self.blind.key_id}" if self.blind else "")

    def stored_shape(self, application_name: str) -> str | None:
        rows = self._select(
            f"SELECT shape FROM {self.shape_table} WHERE name = ?", [application_name]
        )
        return str(rows[0][0]) if rows else None

    shape_table: str = SHAPE_TABLE

    def project(self, rows: Sequence[Row], tracking: Tracking) -> None:
        """Write rows and the position they reach, atomically."""
        raise NotImplementedError

    def clear(self, application_name: str) -> None:
        """Empty the read model and forget how far it had followed ``application_name``,
        atomically, so that following starts again from the ledger's first event; and
        record that the position is tracked for this ``shape``."""
        raise NotImplementedError

    def _select(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def validate(self, query: TrailQuery) -> None:
        """Refuse now what this read model cannot search for (a network, or text
        without a word, when keyed), e.g. before an export's answer starts."""
        if self.blind is not None:
            blinded(query, self.blind)

    def query(self, query: TrailQuery) -> SeqPage:
        """The seqs of a page of records matching ``query`` (its values as given)."""
        if self.blind is not None:
            query = blinded(query, self.blind)
        return self._query(query)

    address: Address
    """An address as this database compares it."""

    def _where(self, query: TrailQuery) -> tuple[str, list[Any]]:
        return _where(query, None if self.blind else self.address)

    def _query(self, query: TrailQuery) -> SeqPage:
        net = self._network(query)
        if net is not None:
            addresses = self._addresses(query, net)
            if addresses is not None:
                return self._query_addresses(query, addresses)
        return self._query_plainly(query)

    def _query_plainly(self, query: TrailQuery) -> SeqPage:
        where, params = self._where(query)
        direction = "DESC" if query.order == "desc" else "ASC"
        statement = f"SELECT seq FROM {self.table} WHERE {where} ORDER BY seq {direction} LIMIT ?"
        return _page(query, [row[0] for row in self._select(statement, [*params, query.limit + 1])])

    network_addresses_merged = 256
    """On SQLite, which plans without statistics of the rows: a network in which a
    tenant's records hold at most this many addresses is read address by address, each
    from the address index newest first, and merged, instead of sorting every match of
    the network (a /24 that held 70% of a million records took a sort of them). Beyond
    it, SQLite's own plan. PostgreSQL plans the range with its statistics instead
    (``PostgresTrailView._query_network``)."""

    def _network(self, query: TrailQuery) -> Network | None:
        """The network of more than one address that ``query`` names, in clear."""
        if query.actor_ip is None or self.blind is not None:
            return None
        net = network(query.actor_ip)
        return net if net.num_addresses > 1 else None

    def _distinct_addresses(self, query: TrailQuery, net: Network) -> tuple[str, list[Any]]:
        """A CTE ``v(value, n)`` of the addresses in ``net`` that the tenant's key has,
        found by a loose scan of the address index (one seek each), and at most one
        more than ``network_addresses_merged``."""
        key = tenant_key(query.tenant)
        first, last = self.address(net.network_address), self.address(net.broadcast_address)
        table = self.table
        cte = (
            "WITH RECURSIVE v(value, n) AS (SELECT (SELECT actor_ip FROM "
            f"{table} WHERE tenant_key = ? AND actor_ip >= ? AND actor_ip <= ? "
            "ORDER BY actor_ip LIMIT 1), 1 UNION ALL SELECT (SELECT actor_ip FROM "
            f"{table} WHERE tenant_key = ? AND actor_ip > v.value AND actor_ip <= ? "
            "ORDER BY actor_ip LIMIT 1), n + 1 FROM v WHERE v.value IS NOT NULL AND n <= ?)"
        )
        return cte, [key, first, last, key, last, self.network_addresses_merged]

    def _addresses(self, query: TrailQuery, net: Network) -> list[Any] | None:
        """The addresses in ``net`` of the tenant's records, or ``None`` if too many."""
        cte, params = self._distinct_addresses(query, net)
        found = [row[0] for row in self._select(f"{cte} SELECT value FROM v", params)]
        found = [value for value in found if value is not None]
        return found if len(found) <= self.network_addresses_merged else None

    def _query_addresses(self, query: TrailQuery, addresses: list[Any]) -> SeqPage:
        """The newest matches of ``query`` for each of ``addresses``, merged by seq."""
        where, params = self._where(replace(query, actor_ip=None))
        direction = "DESC" if query.order == "desc" else "ASC"
        statement = (
            f"SELECT seq FROM {self.table} WHERE actor_ip = ? AND {where} "
            f"ORDER BY seq {direction} LIMIT ?"
        )
        seqs: list[int] = []
        for address in addresses:
            seqs += [row[0] for row in self._select(statement, [address, *params, query.limit + 1])]
        seqs.sort(reverse=query.order == "desc")
        return _page(query, seqs[: query.limit + 1])

    def holds(self, tenant: str, seq: int) -> bool:
        """Whether the tenant's record at ``seq`` is in the read model, and with it
        every earlier record of the tenant (pages are written in the ledger's order)."""
        statement = f"SELECT 1 FROM {self.table} WHERE tenant = ? AND seq = ?"
        return bool(self._select(statement, [tenant, seq]))

    def has_rows(self) -> bool:
        return bool(self._select(f"SELECT 1 FROM {self.table} LIMIT 1", []))

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
_INVESTIGATION_INDEXES = (
    ("ip", "tenant_key, actor_ip, seq", "actor_ip"),
    ("session", "tenant_key, session_id, seq", "session_id"),
    ("request", "tenant_key, request_id, seq", "request_id"),
)
"""Partial: an event without an address, session or request costs these nothing. A
query by one of them (``= ?`` or a range) implies the column is not null, so both
databases use them; a network is a range of the address index, whose matches are then
sorted by seq (a network with many matches costs a sort of them: the index leads with
the address, not the time)."""
_FAN_OUT = {"outcome": get_args(Outcome), "source": get_args(Source)}
"""The closed sets of outcomes and sources, over which a query by one of them is
merged from the (outcome, source) index."""


class SQLiteTrailView(SQLiteTrackingRecorder, TrailView):
    def __init__(self, *args: Any, **kwargs: Any):
        self.table = self.table_name
        super().__init__(*args, **kwargs)

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements += [f"DROP TABLE IF EXISTS {previous}" for previous in self.dropped_tables()]
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {SHAPE_TABLE} (name TEXT PRIMARY KEY, shape TEXT NOT NULL)"
        )
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "tenant TEXT NOT NULL, seq INTEGER NOT NULL, occurred_at TEXT NOT NULL, "
            "actor_id TEXT NOT NULL, action TEXT NOT NULL, action_ns TEXT NOT NULL, "
            "target_type TEXT, target_id TEXT, outcome TEXT NOT NULL, source TEXT NOT NULL, "
            "search TEXT NOT NULL, tenant_key INTEGER NOT NULL, "
            "session_id TEXT, request_id TEXT, actor_ip BLOB, "
            "PRIMARY KEY (tenant, seq)) WITHOUT ROWID"
        )
        for name, columns in (*_INDEXES, *_SQLITE_INDEXES):
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {self.table}_{name} ON {self.table} ({columns})"
            )
        for name, columns, column in _INVESTIGATION_INDEXES:
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {self.table}_{name} ON {self.table} ({columns}) "
                f"WHERE {column} IS NOT NULL"
            )
        return statements

    @staticmethod
    def address(value: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
        return (b"\x04" if value.version == 4 else b"\x06") + value.packed

    def project(self, rows: Sequence[Row], tracking: Tracking) -> None:
        stored: Sequence[tuple[Any, ...]] = rows
        if self.blind is None:
            stored = [
                row if row[-1] is None else (*row[:-1], packed_address(row[-1])) for row in rows
            ]
        with self.datastore.transaction(commit=True) as c:
            c.executemany(
                f"INSERT INTO {self.table} ({_COLUMNS}) VALUES ({','.join('?' * _WIDTH)})",
                stored,
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
            c.execute(
                f"INSERT INTO {SHAPE_TABLE} (name, shape) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET shape = excluded.shape",
                [application_name, self.shape],
            )


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

    @property
    def _address_type(self) -> str:
        # In clear, an address is an inet (readable, and compared as an address); keyed,
        # it is the text of its hash.
        return 'text COLLATE "C"' if self.blind else "inet"

    @property
    def copy_types(self) -> list[str]:
        """The types of ``_COLUMNS``, for a binary ``COPY`` of rows."""
        address = "text" if self.blind else "inet"
        return ["text", "int8", *["text"] * 9, "int8", "text", "text", address]

    @staticmethod
    def address(value: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
        return value  # psycopg sends it as an inet

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any):
        super().__init__(datastore, **kwargs)
        schema = Identifier(datastore.schema)
        self.table = f'"{datastore.schema}".{self.table_name}'
        self.shape_table = f'"{datastore.schema}".{SHAPE_TABLE}'
        table = Identifier(self.table_name)
        text_table = Identifier(self.text_table_name)
        text = 'text COLLATE "C"'
        self.sql_create_statements += [
            SQL("DROP TABLE IF EXISTS {schema}.{table}").format(
                schema=schema, table=Identifier(previous)
            )
            for previous in (*self.dropped_tables(), *self.dropped_text_tables())
        ]
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} "
                "(name text PRIMARY KEY, shape text NOT NULL)"
            ).format(schema=schema, table=Identifier(SHAPE_TABLE))
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
                f"tenant {text} NOT NULL, seq bigint NOT NULL, occurred_at {text} NOT NULL, "
                f"actor_id {text} NOT NULL, action {text} NOT NULL, action_ns {text} NOT NULL, "
                f"target_type {text}, target_id {text}, "
                f"outcome {text} NOT NULL, source {text} NOT NULL, search text NOT NULL, "
                f"tenant_key bigint NOT NULL, session_id {text}, request_id {text}, "
                f"actor_ip {self._address_type}, PRIMARY KEY (tenant, seq))"
            ).format(schema=schema, table=table)
        )
        indexes = [(name, columns, "") for name, columns in (*_INDEXES, *_POSTGRES_INDEXES)]
        indexes += [
            (name, columns, f" WHERE {column} IS NOT NULL")
            for name, columns, column in _INVESTIGATION_INDEXES
        ]
        for name, columns, where in indexes:
            self.sql_create_statements.append(
                SQL(
                    "CREATE INDEX IF NOT EXISTS {index} ON {schema}.{table} ({columns})" + where
                ).format(
                    index=Identifier(f"{self.table_name}_{name}"),
                    schema=schema,
                    table=table,
                    columns=SQL(columns),
                )
            )
        self.text_table = f'"{datastore.schema}".{self.text_table_name}'
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
                f"tenant_key bigint NOT NULL, tenant {text} NOT NULL, "
                "first_seq bigint NOT NULL, last_seq bigint NOT NULL, search text NOT NULL, "
                "PRIMARY KEY (tenant_key, last_seq, tenant))"
            ).format(schema=schema, table=text_table)
        )
        self._copy = SQL(
            "COPY {schema}.{table} (" + _COLUMNS + ") FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, table=table)
        self._copy_blocks = SQL(
            "COPY {schema}.{table} (tenant_key, tenant, first_seq, last_seq, search) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, table=text_table)
        self._trigram_index = SQL(
            "CREATE INDEX IF NOT EXISTS {index} ON {schema}.{table} USING gin (search gin_trgm_ops)"
        ).format(
            index=Identifier(f"{self.text_table_name}_search"), schema=schema, table=text_table
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
                copy.set_types(self.copy_types)
                if self.blind is None:
                    for row in rows:
                        copy.write_row(row if row[-1] is None else (*row[:-1], _inet(row[-1])))
                else:
                    for row in rows:
                        copy.write_row(row)
            with curs.copy(self._copy_blocks) as copy:
                copy.set_types(["int8", "text", "int8", "int8", "text"])
                for block in text_blocks(rows, self.text_block_rows):
                    copy.write_row(block)
            self._insert_tracking(curs, tracking)

    def _query(self, query: TrailQuery) -> SeqPage:
        """An action prefix, or an outcome or a source alone, is served by merging reads
        of an index shared with other filters (``_SQLITE_INDEXES`` says why); free text
        without an actor, action or target, from the blocks of text."""
        net = self._network(query)
        if net is not None:
            return self._query_network(query, net)
        if query.action is not None and query.action.endswith("*"):
            return self._query_action_prefix(query)
        others = (
            query.actor_id, query.action, query.target_type, query.target_id,
            query.actor_ip, query.session_id, query.request_id,
        )  # fmt: skip
        if query.text and all(value is None for value in others):
            return self._query_text(query)
        given = {name for name in _FAN_OUT if getattr(query, name) is not None}
        if len(given) == 1 and all(value is None for value in others):
            (filtered,) = given
            return self._query_fanned_out(query, "source" if filtered == "outcome" else "outcome")
        return super()._query_plainly(query)

    def _query_network(self, query: TrailQuery, net: Network) -> SeqPage:
        # Planned for the bounds given (not prepared): knowing from its statistics how
        # many of the tenant's rows the range holds, the planner reads the tenant's
        # newest records and keeps the network's when they are many, or the range of
        # the address index and sorts its matches when they are few. (A prepared,
        # generic plan, blind to the bounds, took the index whatever the range, and
        # sorted 70% of the records for a /24 that holds them.)
        where, params = self._where(query)
        direction = "DESC" if query.order == "desc" else "ASC"
        statement = f"SELECT seq FROM {self.table} WHERE {where} ORDER BY seq {direction} LIMIT ?"
        rows = self._select(statement, [*params, query.limit + 1], prepare=False)
        return _page(query, [row[0] for row in rows])

    def _query_text(self, query: TrailQuery) -> SeqPage:
        # The blocks whose text holds the words, newest first (or oldest), each read by
        # its seq range. Blocks of a tenant do not overlap, so ordering by block, then by
        # seq, is the seq order and the join stops once it has a page.
        assert query.text
        where, params = self._where(query)
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
        where, params = self._where(query)
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

    def _select(
        self, statement: str, params: Sequence[Any], prepare: bool = True
    ) -> list[tuple[Any, ...]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement.replace("?", "%s"), list(params), prepare=prepare)
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
            curs.execute(
                SQL(
                    "INSERT INTO {shapes} (name, shape) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET shape = excluded.shape"
                ).format(shapes=SQL(self.shape_table)),
                [application_name, self.shape],
            )


_inet = functools.lru_cache(maxsize=65_536)(ipaddress.ip_address)


_VIEWS: dict[str, type[TrailView]] = {
    "eventsourcing.sqlite": SQLiteTrailView,
    "eventsourcing.postgres": PostgresTrailView,
}


def trail_view_class(env: dict[str, str]) -> type[TrailView]:
    """The trail view for the database named by the ledger's environment: keyed (its
    own tables, identifiers and words as keyed hashes) when the ledger is encrypted."""
    module = env.get("PERSISTENCE_MODULE", "")
    view_class = _VIEWS.get(module)
    if view_class is None:
        raise TypeError(f"the read model needs SQLite or PostgreSQL, not {module!r}")
    key = env.get("CIPHER_KEY")
    return _keyed_view_class(view_class, key) if key else view_class


@functools.lru_cache(maxsize=8)
def _keyed_view_class(view_class: type[TrailView], key: str) -> type[TrailView]:
    # A class per key (cached, so its hashes' cache is shared by the views of a
    # process): the eventsourcing factory constructs recorders from a class alone.
    attributes = {
        "blind": BlindIndex(key),
        "table_name": KEYED_TABLE,
        "text_table_name": KEYED_TEXT_TABLE,
    }
    return type(f"Keyed{view_class.__name__}", (view_class,), attributes)
