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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit_core.application import Ledger
from audit_core.transparency.checkpoint import Checkpoint
from audit_core.transparency.exceptions import CheckpointError, NoteError, TransparencyError
from audit_core.transparency.merkle import HASH_SIZE, Frontier, tree_hash
from audit_core.transparency.note import Verifier, parse_note, verify_note
from audit_core.transparency.store import StoredCheckpoint, TreeStore
from audit_core.transparency.tiles import TileHashes, hashes_only
from audit_core.verify import verify_tenant

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


class TreeCheck:
    """A tenant's tree recomputed from the leaves the chain check reads (one pass over
    the log for both), and compared with every signed checkpoint as it passes their
    sizes."""

    def __init__(
        self,
        store: TreeStore,
        tenant: str,
        keys: Sequence[Verifier],
        kept: Iterable[str] = (),
    ) -> None:
        """``kept``: signed notes of checkpoints kept elsewhere; ``keys``: the trusted
        verifier keys."""
        self.store, self.tenant = store, tenant
        self.report = TreeReport(tenant)
        signed: list[_Signed] = []
        stored = store.checkpoints(tenant)
        for row in stored:
            checked = _check_stored(row, keys, tenant, self.report)
            if checked is not None:
                signed.append(checked)
        kept_count = 0
        for number, note in enumerate(kept, start=1):
            try:
                checkpoint = _open(note, keys, tenant)
            except TransparencyError as error:
                self.report.problems.append(
                    TreeProblem("bad_signature", f"kept checkpoint {number}: {error}")
                )
                continue
            kept_count += 1
            signed.append(_Signed(checkpoint.size, checkpoint.root, f"kept checkpoint {number}"))
        self.report.checkpoints = len(stored) + kept_count
        signed.sort(key=lambda s: s.size)
        self.signed = signed
        self.report.latest = signed[-1].size if signed else None
        self._found = list(self.report.problems)
        """What the checkpoints themselves show, whatever the records."""
        self.restart()

    def restart(self) -> None:
        self.report.problems = list(self._found)
        self.frontier = Frontier()
        self.leaves = bytearray()
        """Every leaf hash so far, to locate the first bad seq when a root differs."""
        self.index = 0
        """How many of ``signed`` have been compared."""
        self.unreadable_record = False
        self._compare_due()  # checkpoints of the empty tree

    @property
    def needs_records(self) -> bool:
        return bool(self.signed)

    def add(self, leaf_hashes: Sequence[bytes]) -> bool:
        frontier, signed = self.frontier, self.signed
        if not signed:
            return False
        self.leaves += b"".join(leaf_hashes)
        at = 0
        while at < len(leaf_hashes):
            # Up to the next checkpoint's size, whose root is compared there.
            take = len(leaf_hashes) - at
            if self.index < len(signed):
                take = min(take, signed[self.index].size - frontier.size)
            frontier.extend(leaf_hashes[at : at + take])
            at += take
            self._compare_due()
        return not (frontier.size >= signed[-1].size and self.report.problems)

    def unreadable(self) -> None:
        self.unreadable_record = True

    def _compare_due(self) -> None:
        signed = self.signed
        while self.index < len(signed) and signed[self.index].size == self.frontier.size:
            self._compare(signed[self.index], self.frontier.root())
            self.index += 1

    def finish(self) -> TreeReport:
        """The report, once the log's leaves have all been added."""
        report, frontier = self.report, self.frontier
        report.records = frontier.size
        if self.unreadable_record:
            return report  # undecodable: the chain check names it
        for s in self.signed[self.index :]:
            if s.size > frontier.size:
                seq = self._first_bad(s)
                if seq is not None and seq < frontier.size:
                    # Records are missing inside the log, not only at its end.
                    self._compare(s, b"")
                    break
                ends = (
                    f"at seq {frontier.size - 1}"
                    if frontier.size
                    else "before seq 0: the tenant's log is gone"
                )
                report.problems.append(
                    TreeProblem(
                        "truncated",
                        f"{s.source} (size {s.size}) covers seq {s.size - 1}, but the log "
                        f"ends {ends}: records were deleted from seq {frontier.size} on",
                        s.size,
                        frontier.size,
                    )
                )
                break
        return report

    def _compare(self, signed: _Signed, root: bytes) -> None:
        if root == signed.root:
            return
        seq = self._first_bad(signed)
        if seq is not None:
            where = f"seq {seq} is the first that no longer matches"
        else:
            earlier = [s.size for s in self.signed if s.size < signed.size]
            where = (
                f"the first that no longer matches is at or after seq {max(earlier, default=0)} "
                "(the stored tiles no longer lead to the signed root either, so the exact seq "
                "cannot be told)"
            )
        self.report.problems.append(
            TreeProblem(
                "root_mismatch",
                f"the records' tree at size {signed.size} does not have the root that "
                f"{signed.source} signed: records were altered, deleted, reordered or forged; "
                + where,
                signed.size,
                seq,
            )
        )

    def _first_bad(self, signed: _Signed) -> int | None:
        """The first seq whose recomputed leaf differs from the leaf the log had when it
        signed, read from the stored tiles if they still lead to the signed root."""
        leaves = self.leaves
        try:
            hashes = TileHashes(hashes_only(lambda keys: self.store.read_tiles(self.tenant, keys)))
            if tree_hash(signed.size, hashes.read) != signed.root:
                return None
            count = min(signed.size, len(leaves) // HASH_SIZE)
            for seq in range(count):
                if hashes.read(0, seq) != bytes(leaves[seq * HASH_SIZE : (seq + 1) * HASH_SIZE]):
                    return seq
            return count
        except TransparencyError:
            return None


def verify_tree(
    ledger: Ledger,
    store: TreeStore,
    tenant: str,
    keys: Sequence[Verifier],
    kept: Iterable[str] = (),
    progress: Progress | None = None,
    jobs: int = 1,
) -> TreeReport:
    """The tree checks of a tenant alone (``vigil verify`` runs them in the chain's pass)."""
    check = TreeCheck(store, tenant, keys, kept)
    if check.needs_records and ledger.has_log(tenant):
        verify_tenant(ledger, tenant, progress, check, jobs)
    return check.finish()


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
