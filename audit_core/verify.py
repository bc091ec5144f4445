"""Recompute tenants' hash chains from storage and report the first break of each.

The verifier reads stored rows, not the application's cached state, so whatever was
done to the database behind the ledger's back (an edited payload, a deleted or swapped
row, a truncated tail, a deleted or altered ``Opened`` event, garbage) shows up at the
``seq`` where it happened. Nothing stored can make it raise or leave a log out: the
logs are found from the stored rows themselves, and every outcome is a report.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Protocol

from audit_core.application import Ledger, StoredLog
from audit_core.canonical import GENESIS_HASH, canonical_bytes
from audit_core.domain import tenant_log_id
from audit_core.exceptions import TenantNotFoundError
from audit_core.persistence import LedgerMapper
from audit_core.schema import check_tenant


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

    def add(self, leaves: Sequence[bytes]) -> bool:
        """Take the next records' leaves (canonical bytes) in seq order; return False
        when no more are needed."""
        ...

    def unreadable(self) -> None:
        """The next record cannot be decoded: no leaf follows (the chain's report names
        that record)."""
        ...


def verify_tenant(
    ledger: Ledger,
    tenant: str,
    progress: Progress | None = None,
    leaves: LeafCheck | None = None,
) -> TenantReport:
    """Check one tenant's whole chain; ``progress`` is told how many records each step did.

    ``leaves`` is given every record's canonical bytes in the same pass, up to the
    first record that cannot be decoded, after a break of the chain too.

    Raises ``TenantNotFoundError`` for a tenant of which storage holds nothing (no event,
    id or snapshot): a typo is not an intact empty log.
    """
    check_tenant(tenant)
    if not ledger.has_log(tenant):
        raise TenantNotFoundError(tenant)
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
    def __init__(self, reason: Reason, detail: str, seq: int | None = None) -> None:
        self.reason, self.detail, self.seq = reason, detail, seq


def _verify_chain(
    ledger: Ledger, tenant: str, progress: Progress | None, leaves: LeafCheck | None
) -> TenantReport:
    mapper = ledger.ledger_mapper
    canonical_record = mapper.canonical_record
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
        page_leaves: list[bytes] = []
        for version, state in zip(versions, states, strict=True):
            leaf: bytes | None
            if problem is None:
                seq = version - 1
                try:
                    if seq != expected_seq:
                        missing = f"seq {expected_seq}" + (
                            f" to {seq - 1}" if seq - 1 > expected_seq else ""
                        )
                        raise _ChainBrokenError(
                            Reason.GAP, f"{missing} missing from storage", expected_seq
                        )
                    if version in misfiled:
                        raise _ChainBrokenError(
                            Reason.UNDECODABLE, "stored under another topic than Recorded"
                        )
                    # What still hashes to its stored hash needs no decoding: only where
                    # the record says it sits is left to check.
                    fast = canonical_record(state)
                    if fast is None:
                        leaf, stored_hash = _checked_slowly(mapper, state, seq, tenant, prev_hash)
                    else:
                        leaf, stored_hash, head = fast
                        if head.seq != seq or head.tenant != tenant or head.prev_hash != prev_hash:
                            _check_place(
                                head.seq, head.tenant, head.prev_hash, seq, tenant, prev_hash
                            )
                    prev_hash = stored_hash
                    expected_seq += 1
                except _ChainBrokenError as broken:
                    at = expected_seq if broken.seq is None else broken.seq
                    problem = ChainBreak(at, broken.reason, broken.detail)
                    if not wants_leaves:
                        break
                    leaf = _leaf_of(mapper, state)
            else:
                leaf = _leaf_of(mapper, state)
            if wants_leaves:
                if leaf is None:
                    break
                page_leaves.append(leaf)
        if progress is not None:
            progress(len(versions))
        if leaves is not None and wants_leaves:
            if page_leaves and not leaves.add(page_leaves):
                wants_leaves = False
            elif leaf is None:
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


def _leaf_of(mapper: LedgerMapper, state: bytes) -> bytes | None:
    """A record's leaf once its chain is broken: its canonical bytes, whatever its
    hash; None if it cannot be decoded."""
    fast = mapper.canonical_record(state)
    if fast is not None:
        return fast.canonical
    try:
        return canonical_bytes(mapper.decode_recorded(state)["record"])
    except Exception:
        return None


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
