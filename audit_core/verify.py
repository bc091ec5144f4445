"""Recompute tenants' hash chains from storage and report the first break of each.

The verifier reads stored rows, not the application's cached state, so whatever was
done to the database behind the ledger's back (an edited payload, a deleted or swapped
row, a truncated tail, a deleted or altered ``Opened`` event, garbage) shows up at the
``seq`` where it happened. Nothing stored can make it raise or leave a log out: the
logs are found from the stored rows themselves, and every outcome is a report.
"""

from __future__ import annotations

import enum
import functools
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, NamedTuple, Protocol

import msgspec

from audit_core.application import Ledger, StoredLog
from audit_core.canonical import GENESIS_HASH, canonical_bytes
from audit_core.domain import tenant_log_id
from audit_core.exceptions import TenantNotFoundError
from audit_core.persistence import LedgerMapper, RecordHead
from audit_core.schema import check_tenant
from audit_core.transparency.merkle import leaf_hash


class Reason(enum.StrEnum):
    HASH_MISMATCH = "hash_mismatch"
    """The record's content no longer hashes to its stored hash."""
    BROKEN_LINK = "broken_link"
    """The record's prev_hash is not the hash of the record before it."""
    GAP = "gap"
    """A seq is missing from storage."""
    SEQ_MISMATCH = "seq_mismatch"
    """The record claims another position (or tenant) than the one it is stored at."""
    UNDECODABLE = "undecodable"
    """The stored bytes cannot be decrypted or parsed."""
    TRUNCATED = "truncated"
    """Records the ledger knows it wrote are gone from the end of the log."""
    OPENED_MISSING = "opened_missing"
    """The log's ``Opened`` event (version 0, before seq 0) is gone."""
    OPENED_ALTERED = "opened_altered"
    """The log's ``Opened`` event is unreadable or names another tenant."""
    UNNAMED_LOG = "unnamed_log"
    """Stored rows of a log that none of its rows names: its tenant is unknown."""


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: Reason
    detail: str


@dataclass(frozen=True)
class TenantReport:
    tenant: str
    records: int
    """How many records were checked before the first break (or in all)."""
    head_hash: str
    """Hash of the last good record."""
    problem: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON, as the CLI and the API print it."""
        problem = self.problem
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "records": self.records,
            "head_hash": self.head_hash,
            "first_bad_seq": problem.seq if problem else None,
            "reason": problem.reason.value if problem else None,
            "detail": problem.detail if problem else None,
        }


Progress = Callable[[int], None]


class LeafCheck(Protocol):
    """What reads a log's leaves in the same pass as its chain (the tree checks)."""

    def add(self, leaf_hashes: Sequence[bytes]) -> bool:
        """Take the next records' leaf hashes (SHA-256 of 0x00 and the record's
        canonical bytes) in seq order; return False when no more are needed."""
        ...

    def unreadable(self) -> None:
        """The next record cannot be decoded: no leaf follows (the chain's report names
        that record)."""
        ...

    def restart(self) -> None:
        """Forget the leaves taken: they are about to be given again from seq 0."""
        ...


def verify_tenant(
    ledger: Ledger,
    tenant: str,
    progress: Progress | None = None,
    leaves: LeafCheck | None = None,
    jobs: int = 1,
) -> TenantReport:
    """Check one tenant's whole chain; ``progress`` is told how many records each step did
    (a negative count when records told of are to be read again).

    ``leaves`` is given every record's leaf hash in the same pass, up to the first
    record that cannot be decoded, after a break of the chain too. With ``jobs`` above
    one, a long log is read in ranges by that many processes (see
    :func:`_verify_intact_in_parallel`).

    Raises ``TenantNotFoundError`` for a tenant of which storage holds nothing (no event,
    id or snapshot): a typo is not an intact empty log.
    """
    check_tenant(tenant)
    if not ledger.has_log(tenant):
        raise TenantNotFoundError(tenant)
    chain = None
    if jobs > 1:
        chain = _verify_intact_in_parallel(ledger, tenant, progress, leaves, jobs)
    if chain is None:
        chain = _verify_chain(ledger, tenant, progress, leaves)
    opened = ledger.opened_problem(tenant)
    emptied = chain.problem is not None and chain.problem.reason is Reason.TRUNCATED
    if opened is None or (emptied and chain.records == 0):
        # With no record left at all, the missing Opened event is part of the
        # truncation that the chain reports.
        return chain
    kind, opened_detail = opened
    unreadable = chain.problem is not None and chain.problem.reason is Reason.UNDECODABLE
    if kind == "unreadable" and unreadable and chain.records == 0:
        return chain  # nothing reads, as with the wrong key: the chain's report says so
    reason = Reason.OPENED_MISSING if kind == "missing" else Reason.OPENED_ALTERED
    records = (
        f"the records themselves: first bad seq {chain.problem.seq} ({chain.problem.reason})"
        if chain.problem
        else f"the {chain.records} records themselves chain intact"
    )
    return TenantReport(
        tenant, 0, GENESIS_HASH, ChainBreak(0, reason, f"{opened_detail}; {records}")
    )


class _ChainBrokenError(Exception):
    """The chain breaks at the record being checked."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason, self.detail = reason, detail


def _verify_chain(
    ledger: Ledger, tenant: str, progress: Progress | None, leaves: LeafCheck | None
) -> TenantReport:
    mapper = ledger.ledger_mapper
    intact = functools.partial(_intact, mapper.stored_parts, with_leaf=leaves is not None)
    expected_seq = 0
    prev_hash = GENESIS_HASH
    problem: ChainBreak | None = None
    wants_leaves = leaves is not None
    # Read first: what the ledger had written before the chain is read must be in it,
    # whatever is appended while it is read.
    written = _highest_seq_written(ledger, tenant)

    for versions, states, other_topics in ledger.ledger_recorder.checked_pages(
        tenant_log_id(tenant)
    ):
        misfiled = set(other_topics)
        page_hashes: list[bytes] = []
        for version, state in zip(versions, states, strict=True):
            hashed: bytes | None
            if problem is None:
                seq = version - 1
                try:
                    if seq != expected_seq:
                        missing = f"seq {expected_seq}" + (
                            f" to {seq - 1}" if seq - 1 > expected_seq else ""
                        )
                        raise _ChainBrokenError(Reason.GAP, f"{missing} missing from storage")
                    if version in misfiled:
                        raise _ChainBrokenError(
                            Reason.UNDECODABLE, "stored under another topic than Recorded"
                        )
                    # What still hashes to its stored hash needs no decoding: only where
                    # the record says it sits is left to check.
                    fast = intact(state)
                    if fast is None:
                        leaf, stored_hash = _checked_slowly(mapper, state, seq, tenant, prev_hash)
                        hashed = leaf_hash(leaf)
                    else:
                        hashed, stored_hash, head = fast
                        if head.seq != seq or head.tenant != tenant or head.prev_hash != prev_hash:
                            _check_place(
                                head.seq, head.tenant, head.prev_hash, seq, tenant, prev_hash
                            )
                    prev_hash = stored_hash
                    expected_seq += 1
                except _ChainBrokenError as broken:
                    problem = ChainBreak(expected_seq, broken.reason, broken.detail)
                    if not wants_leaves:
                        break
                    hashed = _leaf_hash_of(mapper, state)
            else:
                hashed = _leaf_hash_of(mapper, state)
            if wants_leaves:
                if hashed is None:
                    break
                page_hashes.append(hashed)
        if progress is not None:
            progress(len(versions))
        if leaves is not None and wants_leaves:
            if page_hashes and not leaves.add(page_hashes):
                wants_leaves = False
            elif hashed is None:
                leaves.unreadable()
                wants_leaves = False
        if problem is not None and not wants_leaves:
            break

    if problem is not None:
        return TenantReport(tenant, expected_seq, prev_hash, problem)
    if written is not None and written >= expected_seq:
        return TenantReport(
            tenant,
            expected_seq,
            prev_hash,
            ChainBreak(
                expected_seq,
                Reason.TRUNCATED,
                f"the ledger wrote up to seq {written} but storage ends at seq {expected_seq - 1}",
            ),
        )
    return TenantReport(tenant, expected_seq, prev_hash)


def _check_place(
    claimed_seq: Any, claimed_tenant: Any, claimed_prev: Any, seq: int, tenant: str, prev_hash: str
) -> None:
    if claimed_seq != seq or claimed_tenant != tenant:
        raise _ChainBrokenError(
            Reason.SEQ_MISMATCH,
            f"stored at seq {seq} of {tenant!r} but the record says seq "
            f"{claimed_seq!r} of {claimed_tenant!r}",
        )
    if claimed_prev != prev_hash:
        raise _ChainBrokenError(
            Reason.BROKEN_LINK,
            f"prev_hash {claimed_prev!r} is not the hash of seq {seq - 1} ({prev_hash})",
        )


def _checked_slowly(
    mapper: LedgerMapper, state: bytes, seq: int, tenant: str, prev_hash: str
) -> tuple[bytes, str]:
    """(canonical bytes, stored hash) of a record whose stored bytes are not its
    canonical bytes (or are not well formed): decoded, checked and re-encoded."""
    try:
        decoded = mapper.decode_recorded(state)
        record, stored_hash = decoded["record"], decoded["hash"]
    except Exception as error:
        raise _ChainBrokenError(Reason.UNDECODABLE, f"{type(error).__name__}: {error}") from None
    if not isinstance(record, dict) or not isinstance(stored_hash, str):
        raise _ChainBrokenError(Reason.UNDECODABLE, "the stored JSON is not an audit record")
    _check_place(
        record.get("seq"), record.get("tenant"), record.get("prev_hash"), seq, tenant, prev_hash
    )
    # The stored record has no "hash" of its own: one added to it is tampering.
    try:
        canonical = canonical_bytes(record)
    except Exception as error:  # a value no event could hold (e.g. a huge integer)
        raise _ChainBrokenError(Reason.UNDECODABLE, f"{type(error).__name__}: {error}") from None
    computed = sha256(canonical).hexdigest()
    if computed != stored_hash:
        raise _ChainBrokenError(
            Reason.HASH_MISMATCH,
            f"content hashes to {computed} but the stored hash is {stored_hash}",
        )
    return canonical, stored_hash


def _leaf_hash_of(mapper: LedgerMapper, state: bytes) -> bytes | None:
    """A record's leaf hash once its chain is broken: of its canonical bytes, whatever
    its hash; None if it cannot be decoded."""
    fast = mapper.canonical_record(state)
    if fast is not None:
        return leaf_hash(fast.canonical)
    try:
        return leaf_hash(canonical_bytes(mapper.decode_recorded(state)["record"]))
    except Exception:
        return None


_LEAF = sha256(b"\x00")
"""``leaf_hash`` begun: copied and fed a record's bytes, it hashes them uncopied."""


def _intact(
    stored_parts: Callable[[bytes], tuple[str, msgspec.Raw, RecordHead] | None],
    state: bytes,
    with_leaf: bool = True,
) -> tuple[bytes, str, RecordHead] | None:
    """(leaf hash, or b"" without ``with_leaf``; stored hash; where it sits) of a record
    stored intact: its bytes, read in place, still hash to its stored hash. None for
    anything else (the caller decodes it to say what is wrong)."""
    parts = stored_parts(state)
    if parts is None:
        return None
    stored_hash, record, head = parts
    if sha256(record).hexdigest() != stored_hash:
        return None
    if not with_leaf:
        return b"", stored_hash, head
    leaf = _LEAF.copy()
    leaf.update(record)
    return leaf.digest(), stored_hash, head


_RANGE = 50_000
"""Records per range of a parallel check."""

_worker_ledger: Ledger | None = None


def _open_worker_ledger(env: dict[str, str]) -> None:
    global _worker_ledger
    _worker_ledger = Ledger(env)


class _IntactRange(NamedTuple):
    first_prev_hash: str
    """What the range's first record says the hash before it is."""
    last_hash: str
    leaf_hashes: list[bytes]


def _intact_range(tenant: str, first_seq: int, last_seq: int) -> _IntactRange | None:
    """The range's leaf hashes if each of its records is stored, intact (still its
    canonical bytes, hashing to its stored hash), in place and linked to the one
    before; None at the first thing that is not so."""
    ledger = _worker_ledger
    assert ledger is not None
    intact = functools.partial(_intact, ledger.ledger_mapper.stored_parts)
    seq = first_seq
    first_prev_hash = prev_hash = ""
    hashes: list[bytes] = []
    pages = ledger.ledger_recorder.checked_pages(tenant_log_id(tenant), first_seq, last_seq + 1)
    for versions, states, other_topics in pages:
        if other_topics or versions[0] != seq + 1 or versions[-1] != seq + len(versions):
            return None
        for state in states:
            parts = intact(state)
            if parts is None:
                return None
            hashed, stored_hash, head = parts
            if head.seq != seq or head.tenant != tenant:
                return None
            if seq == first_seq:
                first_prev_hash = head.prev_hash
            elif head.prev_hash != prev_hash:
                return None
            hashes.append(hashed)
            prev_hash = stored_hash
            seq += 1
    return _IntactRange(first_prev_hash, prev_hash, hashes) if seq == last_seq + 1 else None


def _verify_intact_in_parallel(
    ledger: Ledger, tenant: str, progress: Progress | None, leaves: LeafCheck | None, jobs: int
) -> TenantReport | None:
    """The report of an intact log, read in ranges by ``jobs`` processes; None if it is
    short, kept in memory, or anything in it is not intact (the one-process check then
    reads it again, to name the first break exactly as it always does)."""
    log_id = tenant_log_id(tenant)
    written = _highest_seq_written(ledger, tenant)
    last_version = ledger.ledger_recorder.max_version(log_id)
    in_memory = ":memory:" in ledger.env.get("SQLITE_DBNAME", "")
    if last_version is None or last_version < 2 * _RANGE or in_memory:
        return None
    size = last_version if written is None else max(last_version, written + 1)
    starts = range(0, size, _RANGE)
    ends = [min(start + _RANGE, size) - 1 for start in starts]
    prev_hash = GENESIS_HASH
    wants_leaves = leaves is not None
    reported = 0
    context = multiprocessing.get_context("spawn")  # forking a process with threads is unsafe
    with ProcessPoolExecutor(
        jobs, context, initializer=_open_worker_ledger, initargs=(dict(ledger.env),)
    ) as pool:
        for intact in pool.map(functools.partial(_intact_range, tenant), starts, ends):
            if intact is None or intact.first_prev_hash != prev_hash:
                pool.shutdown(cancel_futures=True)
                # The log is read again from seq 0: what was told is taken back.
                if leaves is not None:
                    leaves.restart()
                if progress is not None and reported:
                    progress(-reported)
                return None
            prev_hash = intact.last_hash
            if leaves is not None and wants_leaves:
                wants_leaves = leaves.add(intact.leaf_hashes)
            if progress is not None:
                progress(len(intact.leaf_hashes))
                reported += len(intact.leaf_hashes)
    return TenantReport(tenant, size, prev_hash)


def _highest_seq_written(ledger: Ledger, tenant: str) -> int | None:
    """Highest seq the id index or the latest snapshot says was recorded."""
    log_id = tenant_log_id(tenant)
    highest = ledger.ledger_recorder.max_indexed_seq(log_id)
    if ledger.snapshots is not None:
        for snapshot in ledger.snapshots.get(log_id, desc=True, limit=1):
            from_snapshot = snapshot.originator_version - 1
            highest = from_snapshot if highest is None else max(highest, from_snapshot)
    return highest


def unnamed_log_report(ledger: Ledger, log: StoredLog) -> TenantReport:
    """The finding for stored rows of a log that no row names (``log.tenant`` is None)."""
    written = ledger.ledger_recorder.max_indexed_seq(log.log_id)
    what = (
        "its records are missing, unreadable or claim other tenants"
        if log.opened_at is not None
        else "no event of it is stored"
        + (f", though the id index says seqs up to {written} were" if written is not None else "")
    )
    return TenantReport(
        f"log:{log.log_id}",
        0,
        GENESIS_HASH,
        ChainBreak(
            0,
            Reason.UNNAMED_LOG,
            f"storage holds rows of log {log.log_id} but no row names its tenant: {what}",
        ),
    )


def verify(
    ledger: Ledger, tenants: list[str] | None = None, progress: Progress | None = None
) -> list[TenantReport]:
    """Verify the named tenants, or every log storage holds (those no row names
    included, as findings)."""
    if tenants is not None:
        return [verify_tenant(ledger, tenant, progress) for tenant in tenants]
    return [
        verify_tenant(ledger, log.tenant, progress)
        if log.tenant is not None
        else unnamed_log_report(ledger, log)
        for log in ledger.stored_logs()
    ]
