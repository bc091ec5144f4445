"""The ledger's service layer: record, read and verify tenants' audit logs."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import EventSourcingError
from eventsourcing.persistence import (
    IntegrityError,
    InternalError,
    Mapper,
    MapperDeserialisationError,
    PersistenceError,
    Recording,
    StoredEvent,
)
from eventsourcing.utils import Environment, EnvType, get_topic

from audit_core.canonical import canonical_bytes
from audit_core.domain import TenantLog, client_content, tenant_log_id, version_of
from audit_core.exceptions import (
    DamagedLogError,
    DuplicateEventIdError,
    EventNotFoundError,
    LedgerBusyError,
    TenantNotFoundError,
)
from audit_core.overlapping_appends import ChainedBatch
from audit_core.persistence import (
    OPENED_TOPIC,
    IndexedId,
    LedgerMapper,
    LedgerRecorder,
    PostgresLedgerRecorder,
    SQLiteLedgerRecorder,
    StoredRow,
)
from audit_core.schema import (
    Limits,
    NormalisedBatch,
    check_tenant,
    normalise_events,
    normalise_json,
)

Record = dict[str, Any]


def _same_content(original: Record, content: dict[str, Any]) -> bool:
    return canonical_bytes(client_content(original)) == canonical_bytes(content)


@dataclass(frozen=True)
class PreparedBatch:
    """A validated batch of one tenant with its id keys, ready to be chained.

    Preparing needs no lock on the log, so a server can prepare the next batch while
    the previous one commits; ``join`` lets a group commit record several as one.
    """

    tenant: str
    contents: list[dict[str, Any]]
    keys: list[bytes]
    with_floats: frozenset[int]
    """Indexes of the contents holding a float."""

    def __len__(self) -> int:
        return len(self.contents)

    @classmethod
    def join(cls, batches: Sequence[PreparedBatch]) -> PreparedBatch:
        """One batch of several of the same tenant; refuses an id that two of them use."""
        if len(batches) == 1:
            return batches[0]
        tenant = batches[0].tenant
        contents: list[dict[str, Any]] = []
        keys: list[bytes] = []
        with_floats: set[int] = set()
        for batch in batches:
            if batch.tenant != tenant:
                raise ValueError(f"cannot join batches of {tenant!r} and {batch.tenant!r}")
            with_floats.update(len(contents) + index for index in batch.with_floats)
            contents += batch.contents
            keys += batch.keys
        _refuse_repeated_ids(tenant, contents, keys)
        return cls(tenant, contents, keys, frozenset(with_floats))


def _refuse_repeated_ids(tenant: str, contents: list[dict[str, Any]], keys: list[bytes]) -> None:
    first_index: dict[bytes, int] = {}
    for index, key in enumerate(keys):
        if key in first_index:
            raise DuplicateEventIdError(
                tenant,
                contents[index]["id"],
                index,
                f"repeats event {first_index[key]} of this batch",
            )
        first_index[key] = index


def _append(
    log: TenantLog,
    batch: PreparedBatch,
    known: dict[bytes, int],
    originals: dict[int, Record],
) -> tuple[list[Record], list[tuple[UUID, IndexedId]]]:
    """Append the contents whose keys are not ``known``; the batch's records in order,
    and the id index rows of the new ones."""
    keys = batch.keys
    if known:
        fresh = [index for index, key in enumerate(keys) if key not in known]
        contents = [batch.contents[index] for index in fresh]
        with_floats = frozenset(
            position for position, index in enumerate(fresh) if index in batch.with_floats
        )
    else:
        contents, with_floats = batch.contents, batch.with_floats
    appended = iter(log.append(contents, datetime.now(UTC), with_floats))
    results: list[Record] = []
    indexed: list[tuple[UUID, IndexedId]] = []
    for key in keys:
        if key in known:
            results.append(originals[known[key]])
            continue
        record = next(appended)
        indexed.append((log.id, IndexedId(key, record["seq"])))
        results.append(record)
    return results, indexed


@dataclass(frozen=True)
class StoredLog:
    """A log as storage holds it, named by what its own rows say."""

    log_id: UUID
    tenant: str | None
    """The tenant whose log id this is, as its ``Opened`` event, a record or a snapshot
    names it; None when no row names it (all missing, unreadable, or naming others)."""
    opened_at: int | None
    """Notification id of its first stored row (None when it has none)."""


_RECORDERS = {
    "eventsourcing.postgres": PostgresLedgerRecorder,
    "eventsourcing.sqlite": SQLiteLedgerRecorder,
}


class Ledger(Application[UUID]):
    """Tenants' hash-chained audit logs, stored through eventsourcing.

    ``env`` is the complete configuration (built by ``api.settings``); unlike a plain
    eventsourcing application, the ledger never reads ``os.environ`` itself.
    """

    name = "Ledger"
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "IS_SNAPSHOTTING_ENABLED": "y",
    }
    snapshot_every = 10_000
    max_append_attempts = 64

    def __init__(self, env: EnvType | None = None, limits: Limits | None = None):
        self.limits = limits or Limits()
        # Processes starting together (``vigil serve --workers``) race to create the
        # tables, and PostgreSQL's catalog refuses the losers; once one has won, the
        # library's IF NOT EXISTS statements succeed for everyone.
        for attempt in range(1, 6):
            try:
                super().__init__(env)
                break
            except (IntegrityError, InternalError):
                if attempt == 5:
                    raise
                with contextlib.suppress(Exception):
                    self.factory.close()
                time.sleep(random.uniform(0.05, 0.2) * attempt)
        self.ledger_recorder  # noqa: B018 - refuse an unsupported persistence module now
        secret = self.env.get("CIPHER_KEY") or "vigil-event-id-index"
        self._id_secret = hashlib.sha256(b"vigil id index\x00" + secret.encode()).digest()
        self._appends_lock = threading.Lock()
        self._latest_appends: dict[str, ChainedBatch] = {}
        # How long a batch waits for the one chained before it: as long as for a lock.
        self._turn_patience = float(self.env.get("POSTGRES_LOCK_TIMEOUT") or 0) or 30.0

    # -- construction ---------------------------------------------------------------

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        values = dict(type(self).env)
        module = (env or {}).get("PERSISTENCE_MODULE", "eventsourcing.popo")
        recorder = _RECORDERS.get(module)
        if recorder is not None:
            values["APPLICATION_RECORDER_TOPIC"] = get_topic(recorder)
        values.update(env or {})
        return Environment(name, values)

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=LedgerMapper
        )

    @property
    def ledger_recorder(self) -> LedgerRecorder:
        if not isinstance(self.recorder, LedgerRecorder):
            raise TypeError(
                f"persistence module {self.env.get('PERSISTENCE_MODULE')!r} is not "
                "supported by the ledger; use eventsourcing.postgres or eventsourcing.sqlite"
            )
        return self.recorder

    @property
    def ledger_mapper(self) -> LedgerMapper:
        return cast(LedgerMapper, self.mapper)

    # -- commands ---------------------------------------------------------------------

    def record(self, tenant: str, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Append a batch atomically; return each event's record, in input order.

        An event whose ``id`` is already recorded with the same content returns the
        original record; with other content the whole batch is refused.
        """
        return self.record_prepared(self.prepare(tenant, events))

    def prepare(self, tenant: str, events: Sequence[Mapping[str, Any]]) -> PreparedBatch:
        """Validate a batch and key its ids."""
        return self._keyed(tenant, normalise_events(events, tenant, datetime.now(UTC), self.limits))

    def prepare_json(self, tenant: str, body: bytes, *, batch: bool) -> PreparedBatch | None:
        """``prepare`` of a JSON event or array of events, in one pass; None if any of
        it is not valid (then parse it and ``prepare`` the events, to learn why)."""
        normalised = normalise_json(
            body, batch=batch, tenant=tenant, now=datetime.now(UTC), limits=self.limits
        )
        return None if normalised is None else self._keyed(tenant, normalised)

    def _keyed(self, tenant: str, batch: NormalisedBatch) -> PreparedBatch:
        """A normalised batch with its ids keyed; refuses an id used twice in it."""
        keys = [self._id_key(content["id"]) for content in batch.contents]
        _refuse_repeated_ids(tenant, batch.contents, keys)
        return PreparedBatch(tenant, batch.contents, keys, batch.with_floats)

    def record_prepared(
        self, batch: PreparedBatch, on_chained: Callable[[], None] | None = None
    ) -> list[Record]:
        """``record`` of a batch that ``prepare`` has validated.

        Calls for one tenant may overlap: a call chains its batch in memory after the
        batch of the call before it, and stores it once that one is stored, so the
        hashing of one batch runs while the previous one commits. ``on_chained`` is
        told when this batch is chained (the moment to start the next call).
        """
        tenant, contents, keys = batch.tenant, batch.contents, batch.keys
        log_id = tenant_log_id(tenant)
        # The first attempt assumes the ids are new and lets the id index's primary
        # key say otherwise: a retried batch costs one refused insert, and every
        # fresh batch saves a lookup.
        known: dict[bytes, int] = {}
        originals: dict[int, Record] = {}
        for attempt in range(1, self.max_append_attempts + 1):
            if attempt > 1:
                known = self.ledger_recorder.lookup_ids(log_id, keys)
                originals = self._records_by_seq(log_id, list(known.values()), tenant)
                for index, key in enumerate(keys):
                    if key in known and not _same_content(originals[known[key]], contents[index]):
                        raise DuplicateEventIdError(
                            tenant,
                            contents[index]["id"],
                            index,
                            f"is already recorded at seq {known[key]} with different content",
                        )
            with self._appends_lock:
                previous = self._latest_appends.get(tenant) if attempt == 1 else None
                log = previous.head() if previous else self._load_or_open(tenant, fresh=attempt > 1)
                results, indexed = _append(log, batch, known, originals)
                this = ChainedBatch(log, previous, self._turn_patience) if indexed else None
                if this is not None:
                    self._latest_appends[tenant] = this
            if on_chained is not None:
                on_chained()
                on_chained = None
            if this is None:
                return results
            stored = False
            try:
                self.save(log, indexed_ids=indexed, turn=this.turn)
                stored = True
            except IntegrityError:
                # Another writer appended first, one of the ids is recorded already, or
                # the batch this one was chained after was not stored.
                if attempt > 1:
                    time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
                continue
            finally:
                this.turn.finish(stored)
                with self._appends_lock:
                    if self._latest_appends.get(tenant) is this:
                        del self._latest_appends[tenant]
            return results
        raise LedgerBusyError(tenant, self.max_append_attempts)

    def _load_or_open(self, tenant: str, *, fresh: bool) -> TenantLog:
        """The tenant's log: as this process last saved it, or ``fresh`` from storage.

        A stale log costs nothing but a retry (its next version is taken, so the save
        fails), so the first attempt of an append skips the fast-forward query.
        """
        log_id = tenant_log_id(tenant)
        cache = self.repository.cache
        if not fresh and cache is not None:
            try:
                return cast(TenantLog, deepcopy(cache.get(log_id)))
            except KeyError:
                pass
        log = self._stored_log(tenant)
        return TenantLog(tenant) if log is None else log

    def _stored_log(self, tenant: str) -> TenantLog | None:
        """The tenant's log replayed from storage (None if it has none); a log that
        cannot be replayed, or is another's, is refused with ``DamagedLogError``, so
        that nothing is chained onto evidence that no longer holds."""
        try:
            log: TenantLog = self.repository.get(tenant_log_id(tenant))
        except AggregateNotFoundError:
            return None
        except (PersistenceError, EventSourcingError):
            if self._unreadable_start(tenant):
                raise  # the wrong VIGIL_ENCRYPTION_KEY, not a damaged log
            raise DamagedLogError(tenant, "its stored events cannot be replayed") from None
        except Exception as error:
            # The library asserts that a log starts with its Opened event.
            raise DamagedLogError(tenant, f"replaying it fails ({type(error).__name__})") from None
        if not isinstance(log, TenantLog) or log.tenant != tenant:
            raise DamagedLogError(tenant, "its Opened event names another tenant")
        return log

    def _unreadable_start(self, tenant: str) -> bool:
        """Whether neither the Opened event nor the first record can be read: what the
        wrong key does to every row, where tampering garbles one."""
        rows = self.ledger_recorder.first_rows(tenant_log_id(tenant), 2)
        if len(rows) < 2 or self._opened_name(rows[0]) is not None:
            return False
        try:
            self.ledger_mapper.decode_recorded(rows[1].state)
        except MapperDeserialisationError:
            return True
        return False

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        recordings = super()._record(processing_event)
        # Keep the saved log in the cache so the next append need not read back the
        # batch it just wrote; fast-forward still picks up other writers' appends.
        if self.repository.cache is not None:
            for aggregate_id, aggregate in processing_event.aggregates.items():
                self.repository.cache.put(aggregate_id, aggregate)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        # Snapshot the log held in memory when a batch crosses a multiple of
        # snapshot_every, instead of the library's default of replaying it from storage.
        assert self.snapshots is not None
        for aggregate in processing_event.aggregates.values():
            if not isinstance(aggregate, TenantLog):
                continue
            recorded = sum(
                1
                for e in processing_event.events
                if e.originator_id == aggregate.id and isinstance(e, TenantLog.Recorded)
            )
            before = aggregate.version - recorded
            if aggregate.version // self.snapshot_every > before // self.snapshot_every:
                self.snapshots.put([TenantLog.Snapshot.take(aggregate)])

    def _id_key(self, event_id: str) -> bytes:
        # Keyed BLAKE2b is a MAC, and a third of the cost of OpenSSL 3's HMAC per call.
        return hashlib.blake2b(event_id.encode(), key=self._id_secret, digest_size=32).digest()

    # -- queries ----------------------------------------------------------------------

    def tenants(self) -> list[str]:
        """Every tenant with stored rows that name it, in the order their logs were
        opened. Found from the stored rows themselves, so that deleting a log's
        ``Opened`` event does not hide the log (``stored_logs`` also lists the logs
        that no row names)."""
        return [log.tenant for log in self.stored_logs() if log.tenant is not None]

    def stored_logs(self) -> list[StoredLog]:
        """Every log with a row in storage (events, id index or snapshots), named by its
        own rows where they can: ordered as opened, then those with no stored event.

        Raises ``MapperDeserialisationError`` when no log can be read at all: that is
        the wrong ``VIGIL_ENCRYPTION_KEY``, not a store of nobody's logs."""
        recorder = self.ledger_recorder
        log_ids = dict.fromkeys(recorder.log_ids(recorder.events_table_name))  # type: ignore[attr-defined]
        with_events = set(log_ids)
        for table in self._side_tables():
            log_ids.update(dict.fromkeys(recorder.log_ids(table)))
        logs: list[StoredLog] = []
        for log_id in log_ids:
            rows = recorder.first_rows(log_id, 1) if log_id in with_events else []
            name = self._name_of(log_id, rows[0] if rows else None)
            logs.append(StoredLog(log_id, name, rows[0].notification_id if rows else None))
        if logs and all(log.tenant is None for log in logs) and with_events:
            raise MapperDeserialisationError(
                "no stored log can be read: is VIGIL_ENCRYPTION_KEY the key they were written with?"
            )
        never = 1 << 63
        return sorted(logs, key=lambda log: never if log.opened_at is None else log.opened_at)

    def _side_tables(self) -> list[str]:
        """The tables beside the events that hold rows keyed by log id."""
        recorder = self.ledger_recorder
        tables = [getattr(recorder, "ids_table_name", None) or f"{recorder.events_table_name}_ids"]  # type: ignore[attr-defined]
        if self.snapshots is not None:
            tables.append(self.snapshots.recorder.events_table_name)  # type: ignore[attr-defined]
        return tables

    def has_log(self, tenant: str) -> bool:
        """Whether storage holds any row of the tenant's log (event, id or snapshot)."""
        check_tenant(tenant)
        log_id = tenant_log_id(tenant)
        if self.ledger_recorder.first_rows(log_id, 1):
            return True
        if self.ledger_recorder.max_indexed_seq(log_id) is not None:
            return True
        return self.snapshots is not None and bool(
            list(self.snapshots.get(log_id, desc=True, limit=1))
        )

    def require_log(self, tenant: str) -> None:
        """Raise ``TenantNotFoundError`` unless the tenant has a log: reading names an
        existing tenant, and never creates one."""
        if not self.has_log(tenant):
            raise TenantNotFoundError(tenant)

    def _name_of(self, log_id: UUID, first: StoredRow | None) -> str | None:
        """The tenant whose log ``log_id`` is, as its rows say; only a name that hashes
        to ``log_id`` counts, so a row claiming another tenant names nothing."""
        if first is not None:
            name = self._opened_name(first)
            if name is not None and tenant_log_id(name) == log_id:
                return name
        for page in self.ledger_recorder.record_pages(log_id):
            for state in page.states:
                try:
                    claimed = self.ledger_mapper.decode_recorded(state)["record"]["tenant"]
                except Exception:  # noqa: S112 - an unreadable row names nobody
                    continue
                if isinstance(claimed, str) and tenant_log_id(claimed) == log_id:
                    return claimed
        if self.snapshots is not None:
            try:
                for snapshot in self.snapshots.get(log_id, desc=True, limit=1):
                    claimed = getattr(snapshot, "state", {}).get("tenant")
                    if isinstance(claimed, str) and tenant_log_id(claimed) == log_id:
                        return claimed
            except Exception:  # noqa: S110 - an unreadable snapshot names nobody
                pass
        return None

    def _opened_name(self, row: StoredRow) -> str | None:
        """The tenant an ``Opened`` row names, or None if it is not a readable one."""
        if row.version != 0 or row.topic != OPENED_TOPIC:
            return None
        try:
            opened = self.mapper.to_domain_event(
                StoredEvent(tenant_log_id("x"), 0, row.topic, row.state)
            )
        except Exception:  # garbage in the row is the caller's finding
            return None
        tenant = getattr(opened, "tenant", None)
        originator = getattr(opened, "originator_topic", None)
        if not isinstance(opened, TenantLog.Opened) or originator != get_topic(TenantLog):
            return None
        return tenant if isinstance(tenant, str) else None

    def opened_problem(self, tenant: str) -> tuple[str, str] | None:
        """(``missing``, ``unreadable`` or ``altered``, what) is wrong with the tenant's
        ``Opened`` event (version 0), if anything; no hash covers it, so this is the
        only check it gets."""
        rows = self.ledger_recorder.first_rows(tenant_log_id(tenant), 1)
        if not rows or rows[0].version > 0:
            return "missing", "the log's Opened event (version 0, before seq 0) is missing"
        if rows[0].version < 0:
            return "altered", f"a row at version {rows[0].version} precedes the Opened event"
        name = self._opened_name(rows[0])
        if name is None:
            return "unreadable", (
                "the log's Opened event (version 0) is not a readable Opened event of a "
                f"tenant log (topic {rows[0].topic!r})"
            )
        if name != tenant:
            return "altered", f"the log's Opened event names tenant {name!r}"
        return None

    def size(self, tenant: str) -> int:
        """Number of records in the tenant's log (0 if it has none)."""
        check_tenant(tenant)
        log = self._stored_log(tenant)
        return 0 if log is None else log.next_seq

    def head(self, tenant: str) -> tuple[int, str]:
        """(size, hash of the last record) of a tenant's log."""
        check_tenant(tenant)
        log = self._stored_log(tenant)
        if log is None:
            raise TenantNotFoundError(tenant)
        return log.next_seq, log.head_hash

    def read(self, tenant: str, *, from_seq: int = 0, limit: int = 100) -> list[Record]:
        """Up to ``limit`` records of a tenant's log from ``from_seq`` on, oldest first."""
        check_tenant(tenant)
        stored = self.recorder.select_events(
            tenant_log_id(tenant), gt=version_of(from_seq - 1), limit=limit
        )
        return [self.ledger_mapper.decode_record(s.state) for s in stored]

    def latest(self, tenant: str, limit: int = 20) -> list[Record]:
        """The last ``limit`` records of a tenant's log, oldest first; a tenant with no
        log is not found (an empty answer would read as an empty trail)."""
        self.require_log(tenant)
        stored = self.recorder.select_events(tenant_log_id(tenant), gt=0, desc=True, limit=limit)
        return [self.ledger_mapper.decode_record(s.state) for s in reversed(stored)]

    def get(self, tenant: str, event_id: str) -> Record:
        """The record of a client event id."""
        check_tenant(tenant)
        log_id = tenant_log_id(tenant)
        key = self._id_key(event_id)
        seq = self.ledger_recorder.lookup_ids(log_id, [key]).get(key)
        if seq is None:
            self.require_log(tenant)
            raise EventNotFoundError(tenant, f"with id {event_id!r}")
        record = self.get_seq(tenant, seq)
        if record.get("id") != event_id:
            # No hash covers the id index: the record's own (hashed) id has the last word.
            raise DamagedLogError(
                tenant, f"its id index points id {event_id!r} at seq {seq}, which holds another"
            )
        return record

    def get_seq(self, tenant: str, seq: int) -> Record:
        check_tenant(tenant)
        try:
            return self._records_by_seq(tenant_log_id(tenant), [seq], tenant)[seq]
        except EventNotFoundError:
            self.require_log(tenant)
            raise

    def records_at(self, tenant: str, seqs: Sequence[int]) -> list[Record]:
        """The records at ``seqs``, in that order, read in one query."""
        check_tenant(tenant)
        found = self._records_by_seq(tenant_log_id(tenant), seqs, tenant)
        return [found[seq] for seq in seqs]

    def leaves(self, tenant: str, first_seq: int, end_seq: int) -> list[bytes]:
        """The canonical bytes of the records at seqs ``first_seq`` to ``end_seq - 1``
        (their transparency-log leaves), each checked against its stored hash, in one
        query. A record missing or altered is a :class:`DamagedLogError`."""
        check_tenant(tenant)
        versions = [version_of(seq) for seq in range(first_seq, end_seq)]
        states = self.ledger_recorder.select_states(tenant_log_id(tenant), versions)
        leaves: list[bytes] = []
        for version in versions:
            state = states.get(version)
            if state is None:
                raise DamagedLogError(tenant, f"seq {version - 1}: it is missing from storage")
            try:
                leaves.append(self.ledger_mapper.checked_record(state).canonical)
            except MapperDeserialisationError as error:
                raise DamagedLogError(tenant, f"seq {version - 1}: {error}") from None
        return leaves

    def _records_by_seq(
        self, log_id: UUID, seqs: Sequence[int], tenant: str = ""
    ) -> dict[int, Record]:
        states = self.ledger_recorder.select_states(log_id, [version_of(s) for s in set(seqs)])
        missing = sorted(seq for seq in seqs if version_of(seq) not in states)
        if missing:
            raise EventNotFoundError(tenant or str(log_id), f"at seq {missing[0]}")
        decode = self.ledger_mapper.decode_record
        return {version - 1: decode(state) for version, state in states.items()}
