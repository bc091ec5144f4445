"""Check a tenant's stored records against every checkpoint signed for its log.

The tree is recomputed from the stored records (never from the stored tiles), and its
root at each checkpoint's size must be the signed one. What a hash chain alone cannot
show then fails with the tenant, the checkpoint and the first seq that no longer
matches:

- a deleted tail (records, id index and snapshots together): a checkpoint's tree is
  larger than the log;
- a forged record appended, or a tail rewritten consistently from some seq on: the
  root at a checkpoint's size differs;
- a tenant deleted entirely: its checkpoints remain, its log does not.

Each checkpoint's signature is checked with the trusted keys, and its text against
the row that holds it. Checkpoints the operator or an auditor kept elsewhere
(``vigil verify --checkpoint FILE``) are checked the same way: the log must extend them.
When every checkpoint is the root of the recomputed tree at its size, each is
consistent with the next: no two of them can contradict each other.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit_core.application import Ledger
from audit_core.domain import tenant_log_id
from audit_core.transparency.checkpoint import Checkpoint
from audit_core.transparency.exceptions import CheckpointError, NoteError, TransparencyError
from audit_core.transparency.leaves import stored_leaf_only
from audit_core.transparency.merkle import HASH_SIZE, Frontier, leaf_hash, tree_hash
from audit_core.transparency.note import Verifier, parse_note, verify_note
from audit_core.transparency.store import StoredCheckpoint, TreeStore
from audit_core.transparency.tiles import TileHashes

Progress = Callable[[int], None]


@dataclass(frozen=True)
class TreeProblem:
    reason: str
    """``bad_signature``, ``forged_checkpoint``, ``truncated``, ``root_mismatch``,
    ``foreign_checkpoint``."""
    detail: str
    checkpoint: int | None = None
    """The size of the checkpoint at fault."""
    seq: int | None = None
    """The first seq that no longer matches (when it can be located)."""


@dataclass
class TreeReport:
    tenant: str
    records: int = 0
    checkpoints: int = 0
    """How many checkpoints were checked (stored and kept)."""
    latest: int | None = None
    """Size of the largest checkpoint."""
    problems: list[TreeProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        first = self.problems[0] if self.problems else None
        return {
            "tenant": self.tenant,
            "check": "tree",
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest,
            "first_bad_seq": first.seq if first else None,
            "checkpoint": first.checkpoint if first else None,
            "reason": first.reason if first else None,
            "detail": first.detail if first else None,
            "problems": [problem.__dict__ for problem in self.problems],
        }


@dataclass(frozen=True)
class _Signed:
    size: int
    root: bytes
    source: str


def _open(note: str, keys: Sequence[Verifier], tenant: str) -> Checkpoint:
    checkpoint = Checkpoint.parse(parse_note(note).text)
    if not checkpoint.origin.endswith(f"/{tenant}"):
        raise CheckpointError(f"its origin {checkpoint.origin!r} is not the log of {tenant!r}")
    verify_note(note, [key.named(checkpoint.origin) for key in keys])
    return checkpoint


def _leaf(mapper: Any, state: bytes) -> bytes | None:
    """The leaf of a stored record, or None if it cannot be decoded (the chain check
    reports that)."""
    try:
        return stored_leaf_only(mapper, state)
    except Exception:
        return None


def verify_tree(
    ledger: Ledger,
    store: TreeStore,
    tenant: str,
    keys: Sequence[Verifier],
    kept: Iterable[str] = (),
    progress: Progress | None = None,
) -> TreeReport:
    """Check a tenant's records against its stored checkpoints and ``kept`` ones (signed
    notes), with the trusted verifier ``keys``."""
    report = TreeReport(tenant)
    signed: list[_Signed] = []
    stored = store.checkpoints(tenant)
    for row in stored:
        checked = _check_stored(row, keys, tenant, report)
        if checked is not None:
            signed.append(checked)
    for number, note in enumerate(kept, start=1):
        try:
            checkpoint = _open(note, keys, tenant)
        except TransparencyError as error:
            report.problems.append(
                TreeProblem("bad_signature", f"kept checkpoint {number}: {error}")
            )
            continue
        signed.append(_Signed(checkpoint.size, checkpoint.root, f"kept checkpoint {number}"))
    report.checkpoints = len(stored) + sum(1 for s in signed if s.source.startswith("kept"))
    signed.sort(key=lambda s: s.size)
    report.latest = signed[-1].size if signed else None
    if not signed:
        return report

    sizes = [s.size for s in signed]
    frontier = Frontier()
    leaves = bytearray()
    # Checkpoint roots are compared as the recomputed tree passes their sizes.
    index = bisect.bisect_left(sizes, 1)
    for s in signed[:index]:  # size 0: the empty tree
        _compare(report, s, frontier.root(), leaves, store, tenant, signed)
    mapper = ledger.ledger_mapper
    last = sizes[-1]
    for page in ledger.ledger_recorder.record_pages(tenant_log_id(tenant)):
        for state in page.states:
            leaf = _leaf(mapper, state)
            if leaf is None:
                report.records = frontier.size
                return report  # undecodable: the chain check names it
            value = leaf_hash(leaf)
            frontier.append(value)
            leaves += value
            while index < len(signed) and signed[index].size == frontier.size:
                _compare(report, signed[index], frontier.root(), leaves, store, tenant, signed)
                index += 1
        if progress is not None:
            progress(len(page.versions))
        if frontier.size >= last and report.problems:
            break
    report.records = frontier.size
    for s in signed[index:]:
        if s.size > frontier.size:
            seq = _first_bad(s, leaves, store, tenant)
            if seq is not None and seq < frontier.size:
                # Records are missing inside the log, not only at its end.
                _compare(report, s, b"", leaves, store, tenant, signed)
                break
            ends = (
                f"at seq {frontier.size - 1}"
                if frontier.size
                else "before seq 0: the tenant's log is gone"
            )
            report.problems.append(
                TreeProblem(
                    "truncated",
                    f"{s.source} (size {s.size}) covers seq {s.size - 1}, but the log ends "
                    f"{ends}: records were deleted from seq {frontier.size} on",
                    s.size,
                    frontier.size,
                )
            )
            break
    return report


def _check_stored(
    row: StoredCheckpoint, keys: Sequence[Verifier], tenant: str, report: TreeReport
) -> _Signed | None:
    try:
        checkpoint = _open(row.note, keys, tenant)
    except (NoteError, CheckpointError) as error:
        report.problems.append(
            TreeProblem(
                "bad_signature",
                f"the stored checkpoint at size {row.size} is not signed by a trusted key: {error}",
                row.size,
            )
        )
        return None
    if checkpoint.size != row.size or checkpoint.root != row.root:
        report.problems.append(
            TreeProblem(
                "forged_checkpoint",
                f"the stored checkpoint row at size {row.size} does not hold what its "
                f"signed note says (size {checkpoint.size})",
                row.size,
            )
        )
    return _Signed(checkpoint.size, checkpoint.root, f"checkpoint at size {checkpoint.size}")


def _compare(
    report: TreeReport,
    signed: _Signed,
    root: bytes,
    leaves: bytearray,
    store: TreeStore,
    tenant: str,
    everything: list[_Signed],
) -> None:
    if root == signed.root:
        return
    seq = _first_bad(signed, leaves, store, tenant)
    if seq is not None:
        where = f"seq {seq} is the first that no longer matches"
    else:
        earlier = [s.size for s in everything if s.size < signed.size]
        where = (
            f"the first that no longer matches is at or after seq {max(earlier, default=0)} "
            "(the stored tiles no longer lead to the signed root either, so the exact seq "
            "cannot be told)"
        )
    report.problems.append(
        TreeProblem(
            "root_mismatch",
            f"the records' tree at size {signed.size} does not have the root that "
            f"{signed.source} signed: records were altered, deleted, reordered or forged; " + where,
            signed.size,
            seq,
        )
    )


def _first_bad(signed: _Signed, leaves: bytearray, store: TreeStore, tenant: str) -> int | None:
    """The first seq whose recomputed leaf differs from the leaf the log had when it
    signed, read from the stored tiles if they still lead to the signed root."""
    try:
        hashes = TileHashes(lambda keys: store.read_tiles(tenant, keys))
        if tree_hash(signed.size, hashes.read) != signed.root:
            return None
        count = min(signed.size, len(leaves) // HASH_SIZE)
        for seq in range(count):
            if hashes.read(0, seq) != bytes(leaves[seq * HASH_SIZE : (seq + 1) * HASH_SIZE]):
                return seq
        return count
    except TransparencyError:
        return None
