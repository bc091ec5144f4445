"""Storage adapters for the ledger, on eventsourcing's PostgreSQL and SQLite recorders.

Two additions to the library's recorders, both inside the transaction that stores the
events, so they are atomic with them:

- an index of event ids (keyed BLAKE2b MAC of the client id, never the id in clear) to the
  seq they were recorded at, whose primary key refuses a reused id even when two
  writers race;
- on PostgreSQL, the batch goes in with binary ``COPY`` under the library's table lock
  instead of ``INSERT ... unnest()`` of a text-encoded composite array, which spends
  about a third of a 500-event save escaping values.

A batch chained in memory after another one of the same process is stored in its turn
(:mod:`audit_core.overlapping_appends`): on PostgreSQL its transaction writes the id
index rows (random keys into a large index, a good part of the work) while the batch
before commits, and waits for that commit only before it takes the table lock.

The mapper writes ``Recorded`` events as plain orjson (the record is JSON already), so
that recording and verifying do not pay for the generic transcoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    InterfaceError,
    Mapper,
    MapperDeserialisationError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from eventsourcing.utils import get_topic, retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from audit_core.canonical import canonical_bytes
from audit_core.domain import RECORD_JSON, TenantLog
from audit_core.overlapping_appends import StoreTurn


class IndexedId(NamedTuple):
    """Where an event id was recorded."""

    key: bytes
    seq: int


RECORDED_TOPIC = get_topic(TenantLog.Recorded)


class RecordHead(msgspec.Struct, frozen=True):
    """Where and when a stored record says it sits in its log."""

    tenant: str
    seq: int
    prev_hash: str
    received_at: str


class CanonicalRecord(NamedTuple):
    """A stored record's canonical bytes as they are stored, with its stored hash."""

    canonical: bytes
    """Exactly the bytes its hash covers."""
    hash: str
    head: RecordHead


class _StoredRecorded(msgspec.Struct):
    hash: str
    record: msgspec.Raw


_decode_stored = msgspec.json.Decoder(_StoredRecorded).decode
_decode_head = msgspec.json.Decoder(RecordHead).decode
OPENED_TOPIC = get_topic(TenantLog.Opened)


class LedgerMapper(Mapper[UUID]):
    """Maps ``Recorded`` events to plain JSON; every other event the library's way."""

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        if not isinstance(domain_event, TenantLog.Recorded):
            return super().to_stored_event(domain_event)
        record_json = domain_event.__dict__.get(RECORD_JSON) or orjson.dumps(domain_event.record)
        state = b"".join(
            (
                b'{"hash":"',
                domain_event.hash.encode(),
                b'","timestamp":',
                self._timestamp_json(domain_event.timestamp),
                b',"record":',
                record_json,
                b"}",
            )
        )
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=RECORDED_TOPIC,
            state=state,
        )

    _last_timestamp: tuple[datetime, bytes] | None = None

    def _timestamp_json(self, timestamp: datetime) -> bytes:
        # A batch shares one timestamp: encode it once.
        last = self._last_timestamp
        if last is None or last[0] is not timestamp:
            last = self._last_timestamp = (timestamp, orjson.dumps(timestamp))
        return last[1]

    def decode_recorded(self, state: bytes) -> dict[str, Any]:
        """Plain state of a stored ``Recorded`` event: ``record``, ``hash``, ``timestamp``."""
        try:
            decoded: dict[str, Any] = orjson.loads(self.recorded_json(state))
        except orjson.JSONDecodeError as error:
            raise MapperDeserialisationError(
                f"cannot decode a stored audit record: {type(error).__name__}: {error}"
            ) from error
        return decoded

    def canonical_record(self, state: bytes) -> CanonicalRecord | None:
        """The record's bytes as stored, if they still hash to its stored hash; None for
        anything else (the caller decodes the state and judges it).

        The ledger stores the canonical bytes it hashed, so a record that still hashes
        to its stored hash needs no decoding and re-encoding to be checked, placed in a
        tree or archived: that is what lets those read millions of records fast.
        """
        parts = self.stored_parts(state)
        if parts is None:
            return None
        stored_hash, raw, head = parts
        if hashlib.sha256(raw).hexdigest() != stored_hash:
            return None
        return CanonicalRecord(bytes(raw), stored_hash, head)

    def stored_parts(self, state: bytes) -> tuple[str, msgspec.Raw, RecordHead] | None:
        """(stored hash, the record's JSON as stored, where it sits) of a well-formed
        stored record, its JSON not copied and not yet checked against the hash; None
        for anything else."""
        try:
            stored = _decode_stored(self.recorded_json(state))
            return stored.hash, stored.record, _decode_head(stored.record)
        except (msgspec.DecodeError, MapperDeserialisationError):
            return None

    def checked_record(self, state: bytes) -> CanonicalRecord:
        """``canonical_record``, or else the record decoded and canonicalised. Raises
        ``MapperDeserialisationError`` if it cannot be decoded or does not hash to its
        stored hash."""
        fast = self.canonical_record(state)
        if fast is not None:
            return fast
        decoded = self.decode_recorded(state)
        try:
            record, stored_hash = decoded["record"], decoded["hash"]
            head = msgspec.convert(record, RecordHead)
            canonical = canonical_bytes(record)
        except Exception as error:
            raise MapperDeserialisationError(
                f"cannot decode a stored audit record: {type(error).__name__}: {error}"
            ) from error
        if hashlib.sha256(canonical).hexdigest() != stored_hash:
            raise MapperDeserialisationError(
                f"tenant {head.tenant!r} seq {head.seq}: the record does not hash to its "
                "stored hash; its storage was changed behind the ledger's back (run "
                "`vigil verify`)"
            )
        return CanonicalRecord(canonical, stored_hash, head)

    def decode_record(self, state: bytes) -> dict[str, Any]:
        """The audit record a stored ``Recorded`` event holds, with its ``hash``."""
        decoded = self.decode_recorded(state)
        return {**decoded["record"], "hash": decoded["hash"]}

    def recorded_json(self, state: bytes) -> bytes:
        """The JSON of a stored ``Recorded`` event: its state, decrypted and decompressed."""
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
        except Exception as error:
            raise MapperDeserialisationError(
                f"cannot decode a stored audit record: {type(error).__name__}: {error}"
            ) from error
        return state

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        if stored_event.topic != RECORDED_TOPIC:
            return super().to_domain_event(stored_event)
        state = self.decode_recorded(stored_event.state)
        state["timestamp"] = datetime.fromisoformat(state["timestamp"])
        state["originator_id"] = stored_event.originator_id
        state["originator_version"] = stored_event.originator_version
        domain_event: TenantLog.Recorded = object.__new__(TenantLog.Recorded)
        object.__setattr__(domain_event, "__dict__", state)
        return domain_event


class LedgerRecorder:
    """What the ledger needs of storage beyond the library's application recorder."""

    def lookup_ids(self, log_id: UUID, keys: Sequence[bytes]) -> dict[bytes, int]:
        """Seq of each of ``keys`` already recorded in the log."""
        raise NotImplementedError

    def max_indexed_seq(self, log_id: UUID) -> int | None:
        raise NotImplementedError

    def record_pages(self, log_id: UUID) -> Iterator[Page]:
        """Every record of a log in version order, a page at a time, in constant memory."""
        return (Page(page.versions, page.states) for page in self.checked_pages(log_id))

    def checked_pages(
        self, log_id: UUID, after: int = 0, until: int | None = None
    ) -> Iterator[CheckedPage]:
        """``record_pages``, each page also saying which rows have another topic; only
        versions above ``after`` and up to ``until``, if given."""
        raise NotImplementedError

    def max_version(self, log_id: UUID) -> int | None:
        """The highest version a log holds, of any topic."""
        raise NotImplementedError

    def select_states(self, log_id: UUID, versions: Sequence[int]) -> dict[int, bytes]:
        """The stored states of those of ``versions`` that a log holds, in one query."""
        raise NotImplementedError

    def recorded_after(self, position: int, limit: int) -> Notes:
        """The next ``limit`` ``Recorded`` events of every log after notification id
        ``position``, in notification order: what a follower of the ledger reads."""
        raise NotImplementedError

    def log_ids(self, table: str) -> list[UUID]:
        """Every originator id that has a row in ``table`` (an unqualified table name of
        this database: the events, id index or snapshots table), whatever the rows hold."""
        raise NotImplementedError

    def first_rows(self, log_id: UUID, limit: int) -> list[StoredRow]:
        """The ``limit`` lowest versions a log holds, with their topic and notification id."""
        raise NotImplementedError


class StoredRow(NamedTuple):
    """One stored row of the events table, as it is, for checks that trust none of it."""

    version: int
    topic: str
    state: bytes
    notification_id: int


class Page(NamedTuple):
    """Consecutive stored records of one log: their versions and states, in order."""

    versions: Sequence[int]
    states: Sequence[bytes]


class CheckedPage(NamedTuple):
    """A ``Page`` with what only verification asks for."""

    versions: Sequence[int]
    states: Sequence[bytes]
    other_topics: Sequence[int]
    """Versions of the page stored under another topic than ``Recorded``: rows the
    library would not read back as audit records, whatever their state holds."""


def _checked_page(rows: Sequence[Sequence[Any]]) -> CheckedPage:
    """A page of ``(version, state, topic)`` rows."""
    return CheckedPage(
        [row[0] for row in rows],
        [row[1] for row in rows],
        [row[0] for row in rows if row[2] != RECORDED_TOPIC],
    )


class Notes(NamedTuple):
    """Consecutive notifications: their ids and the states of their stored events."""

    ids: Sequence[int]
    states: Sequence[bytes]


_PAGE_SIZE = 2000
_END = object()


def prefetched(
    pages: Callable[[], Generator[CheckedPage]], depth: int = 2
) -> Iterator[CheckedPage]:
    """``pages()``, read by a background thread that keeps ``depth`` pages ahead, so that
    the database serves the next page on the other core while the caller checks this one.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stopped.is_set():
            with contextlib.suppress(queue.Full):
                ready.put(item, timeout=0.05)
                return True
        return False

    def read() -> None:
        try:
            with contextlib.closing(pages()) as source:
                for page in source:
                    if not hand_over(page):
                        return
            hand_over(_END)
        except BaseException as error:  # re-raised in the thread that reads the pages
            hand_over(error)

    reader = threading.Thread(target=read, name="vigil-page-reader", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
        reader.join()


class PostgresLedgerRecorder(PostgresApplicationRecorder, LedgerRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(datastore.schema)
        events = Identifier(events_table_name)
        ids_table_name = f"{events_table_name}_ids"
        self.check_identifier_length(ids_table_name)
        ids = Identifier(ids_table_name)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{ids} ("
                "originator_id {id_type} NOT NULL, "
                "id_key bytea NOT NULL, "
                "seq bigint NOT NULL, "
                "PRIMARY KEY (originator_id, id_key))"
            ).format(schema=schema, ids=ids, id_type=Identifier(datastore.originator_id_type))
        )
        self.copy_events_statement = SQL(
            "COPY {schema}.{events} (originator_id, originator_version, topic, state) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, events=events)
        self.copy_ids_statement = SQL(
            "COPY {schema}.{ids} (originator_id, id_key, seq) FROM STDIN (FORMAT BINARY)"
        ).format(schema=schema, ids=ids)
        self.lookup_ids_statement = SQL(
            "SELECT id_key, seq FROM {schema}.{ids} WHERE originator_id = %s AND id_key = ANY(%s)"
        ).format(schema=schema, ids=ids)
        self.max_indexed_seq_statement = SQL(
            "SELECT max(seq) AS max FROM {schema}.{ids} WHERE originator_id = %s"
        ).format(schema=schema, ids=ids)
        self._id_type = datastore.originator_id_type
        # Rows in binary, not arrays built by the database: sorting a page into arrays
        # made reading a log half as fast. Pages are ranges of versions, not LIMITs, so
        # that a stale row estimate cannot turn each page into a sort of the whole log.
        self.record_page_statement = SQL(
            "SELECT originator_version, state, topic FROM {schema}.{events} "
            "WHERE originator_id = %s AND originator_version > %s AND originator_version <= %s "
            "ORDER BY originator_version"
        ).format(schema=schema, events=events)
        self.select_states_statement = SQL(
            "SELECT originator_version, state FROM {schema}.{events} "
            "WHERE originator_id = %s AND originator_version = ANY(%s)"
        ).format(schema=schema, events=events)
        self.recorded_after_statement = SQL(
            "SELECT notification_id, state, topic FROM {schema}.{events} "
            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(schema=schema, events=events)
        self.max_version_statement = SQL(
            "SELECT max(originator_version) AS max FROM {schema}.{events} WHERE originator_id = %s"
        ).format(schema=schema, events=events)
        self.next_version_statement = SQL(
            "SELECT min(originator_version) AS next FROM {schema}.{events} "
            "WHERE originator_id = %s AND originator_version > %s"
        ).format(schema=schema, events=events)
        self.first_rows_statement = SQL(
            "SELECT originator_version, topic, state, notification_id FROM {schema}.{events} "
            "WHERE originator_id = %s ORDER BY originator_version LIMIT %s"
        ).format(schema=schema, events=events)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        indexed_ids: Sequence[tuple[UUID, IndexedId]] = (),
        turn: StoreTurn | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        if not stored_events:
            return None
        *lock_settings, lock_table = self.lock_table_statements
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            for statement in lock_settings:
                curs.execute(statement, prepare=True)
            self._notify_channel(curs)  # delivered at commit, wherever it is sent
            if turn is not None:
                turn.wait_for_ids_before()
            if indexed_ids:
                with curs.copy(self.copy_ids_statement) as copy:
                    copy.set_types([self._id_type, "bytea", "int8"])
                    for log_id, indexed in indexed_ids:
                        copy.write_row((log_id, indexed.key, indexed.seq))
            if turn is not None:
                turn.ids_written()
                turn.wait_for_batch_before()
            # The table lock keeps commit order equal to notification id order, so
            # followers of the notification log never skip a late-committing batch.
            curs.execute(lock_table, prepare=True)
            with curs.copy(self.copy_events_statement) as copy:
                copy.set_types([self._id_type, "int8", "text", "bytea"])
                for stored in stored_events:
                    copy.write_row(
                        (
                            stored.originator_id,
                            stored.originator_version,
                            stored.topic,
                            stored.state,
                        )
                    )
        # No notification ids: the ledger's followers read the notification log, and
        # returning them would make the event store build a Recording per event.
        return None

    def lookup_ids(self, log_id: UUID, keys: Sequence[bytes]) -> dict[bytes, int]:
        if not keys:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.lookup_ids_statement, (log_id, list(keys)), prepare=True)
            return {bytes(row["id_key"]): row["seq"] for row in curs.fetchall()}

    def checked_pages(
        self, log_id: UUID, after: int = 0, until: int | None = None
    ) -> Iterator[CheckedPage]:
        return prefetched(lambda: self._read_pages(log_id, after, until))

    def max_version(self, log_id: UUID) -> int | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.max_version_statement, (log_id,), prepare=True)
            row = curs.fetchone()
            return None if row is None or row["max"] is None else int(row["max"])

    def select_states(self, log_id: UUID, versions: Sequence[int]) -> dict[int, bytes]:
        if not versions:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor(binary=True) as curs:
            curs.execute(self.select_states_statement, (log_id, list(versions)), prepare=True)
            return {row["originator_version"]: row["state"] for row in curs.fetchall()}

    def recorded_after(self, position: int, limit: int) -> Notes:
        # Plain tuples, not a Notification object per event. The topic is checked here,
        # not in the query: with it there, statistics not yet gathered on a filling
        # table led the planner to a parallel scan that cost 40 times as much per page.
        ids: list[int] = []
        states: list[bytes] = []
        with (
            self.datastore.get_connection() as conn,
            conn.cursor(binary=True, row_factory=tuple_row) as curs,
        ):
            while len(ids) < limit:
                wanted = limit - len(ids)
                curs.execute(self.recorded_after_statement, (position, wanted), prepare=True)
                rows = curs.fetchall()
                recorded = [row for row in rows if row[2] == RECORDED_TOPIC]
                ids += [row[0] for row in recorded]
                states += [row[1] for row in recorded]
                if len(rows) < wanted:
                    break
                position = rows[-1][0]
        return Notes(ids, states)

    def _read_pages(self, log_id: UUID, after: int, until: int | None) -> Generator[CheckedPage]:
        with self.datastore.get_connection() as conn:
            while until is None or after < until:
                last = after + _PAGE_SIZE if until is None else min(after + _PAGE_SIZE, until)
                with conn.cursor(binary=True, row_factory=tuple_row) as curs:
                    curs.execute(self.record_page_statement, (log_id, after, last), prepare=True)
                    rows = curs.fetchall()
                if rows:
                    yield _checked_page(rows)
                if last == until:
                    return
                missing = len(rows) < last - after
                after = last
                if missing:
                    # Missing versions: skip to the next one stored, if any.
                    with conn.cursor() as curs:
                        curs.execute(self.next_version_statement, (log_id, last), prepare=True)
                        row = curs.fetchone()
                    if row is None or row["next"] is None:
                        return
                    after = row["next"] - 1

    def max_indexed_seq(self, log_id: UUID) -> int | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.max_indexed_seq_statement, (log_id,), prepare=True)
            row = curs.fetchone()
            return None if row is None or row["max"] is None else int(row["max"])

    def log_ids(self, table: str) -> list[UUID]:
        # A loose index scan of the primary key (originator_id first): one index probe
        # per log, where DISTINCT would read every row of every log.
        statement = SQL(
            "WITH RECURSIVE logs(id) AS ("
            "(SELECT originator_id FROM {table} ORDER BY originator_id LIMIT 1) "
            "UNION ALL SELECT (SELECT originator_id FROM {table} WHERE originator_id > logs.id "
            "ORDER BY originator_id LIMIT 1) FROM logs WHERE logs.id IS NOT NULL) "
            "SELECT id FROM logs WHERE id IS NOT NULL"
        ).format(table=Identifier(self.datastore.schema, table))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement)
            return [row["id"] for row in curs.fetchall()]

    def first_rows(self, log_id: UUID, limit: int) -> list[StoredRow]:
        with self.datastore.get_connection() as conn, conn.cursor(binary=True) as curs:
            curs.execute(self.first_rows_statement, (log_id, limit))
            return [
                StoredRow(
                    row["originator_version"],
                    row["topic"],
                    bytes(row["state"]),
                    row["notification_id"],
                )
                for row in curs.fetchall()
            ]


class SQLiteLedgerRecorder(SQLiteApplicationRecorder, LedgerRecorder):
    # SQLite allows at least 32766 bound parameters; stay far below.
    _LOOKUP_CHUNK = 500

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        self.ids_table_name = f"{events_table_name}_ids"
        super().__init__(datastore, events_table_name)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {self.ids_table_name} ("
            "originator_id TEXT NOT NULL, id_key BLOB NOT NULL, seq INTEGER NOT NULL, "
            "PRIMARY KEY (originator_id, id_key)) WITHOUT ROWID",
        ]

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        turn: StoreTurn | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        # One writer at a time: waiting inside the transaction would hold the lock
        # that the batch before needs.
        if turn is not None:
            turn.wait_for_batch_before()
        return super().insert_events(stored_events, **kwargs)

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        indexed_ids: Sequence[tuple[UUID, IndexedId]] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        notification_ids = super()._insert_events(c, stored_events, **kwargs)
        c.executemany(
            f"INSERT INTO {self.ids_table_name} VALUES (?,?,?)",
            [(log_id.hex, indexed.key, indexed.seq) for log_id, indexed in indexed_ids],
        )
        return notification_ids

    def _select_in(self, statement: str, log_id: UUID, values: Sequence[Any]) -> list[Any]:
        """Rows of ``statement`` (whose ``{marks}`` is an IN list) for all ``values``."""
        rows: list[Any] = []
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(values), self._LOOKUP_CHUNK):
                chunk = list(values[start : start + self._LOOKUP_CHUNK])
                c.execute(statement.format(marks=",".join("?" * len(chunk))), [log_id.hex, *chunk])
                rows += c.fetchall()
        return rows

    def lookup_ids(self, log_id: UUID, keys: Sequence[bytes]) -> dict[bytes, int]:
        statement = (
            f"SELECT id_key, seq FROM {self.ids_table_name} "
            "WHERE originator_id = ? AND id_key IN ({marks})"
        )
        return {row[0]: row[1] for row in self._select_in(statement, log_id, keys)}

    def select_states(self, log_id: UUID, versions: Sequence[int]) -> dict[int, bytes]:
        statement = (
            f"SELECT originator_version, state FROM {self.events_table_name} "
            "WHERE originator_id = ? AND originator_version IN ({marks})"
        )
        return {row[0]: row[1] for row in self._select_in(statement, log_id, versions)}

    def recorded_after(self, position: int, limit: int) -> Notes:
        notifications = self.select_notifications(
            position, limit, topics=[RECORDED_TOPIC], inclusive_of_start=False
        )
        return Notes([n.id for n in notifications], [n.state for n in notifications])

    def checked_pages(
        self, log_id: UUID, after: int = 0, until: int | None = None
    ) -> Iterator[CheckedPage]:
        last = (1 << 62) if until is None else until
        while True:
            with self.datastore.transaction(commit=False) as c:
                c.execute(
                    f"SELECT originator_version, state, topic FROM {self.events_table_name} "
                    "WHERE originator_id = ? AND originator_version > ? "
                    "AND originator_version <= ? ORDER BY originator_version LIMIT ?",
                    [log_id.hex, after, last, _PAGE_SIZE],
                )
                rows = c.fetchall()
            if not rows:
                return
            yield _checked_page(rows)
            if len(rows) < _PAGE_SIZE:
                return
            after = rows[-1][0]

    def max_version(self, log_id: UUID) -> int | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT max(originator_version) AS max FROM {self.events_table_name} "
                "WHERE originator_id = ?",
                [log_id.hex],
            )
            row = c.fetchone()
            return None if row is None or row["max"] is None else int(row["max"])

    def max_indexed_seq(self, log_id: UUID) -> int | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT max(seq) AS max FROM {self.ids_table_name} WHERE originator_id = ?",
                [log_id.hex],
            )
            row = c.fetchone()
            return None if row is None or row["max"] is None else int(row["max"])

    def log_ids(self, table: str) -> list[UUID]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT DISTINCT originator_id FROM {table}")
            rows = c.fetchall()
        ids: list[UUID] = []
        for row in rows:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                ids.append(UUID(str(row[0])))  # a row with a malformed id is nobody's
        return ids

    def first_rows(self, log_id: UUID, limit: int) -> list[StoredRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT originator_version, topic, state, rowid FROM {self.events_table_name} "
                "WHERE originator_id = ? ORDER BY originator_version LIMIT ?",
                [log_id.hex, limit],
            )
            return [StoredRow(row[0], row[1], bytes(row[2]), row[3]) for row in c.fetchall()]
