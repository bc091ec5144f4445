"""The tamper matrix over storage: what someone with write access to the database does
to a tenant's log and its checkpoints, and how the tree checks name it (tenant,
checkpoint, first seq that no longer matches)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from audit_core import verify_tenant
from audit_core.canonical import GENESIS_HASH
from audit_core.transparency import Checkpoint, Signer, sign_checkpoint
from audit_core.transparency.store import StoredCheckpoint
from audit_core.transparency.verify import TreeReport, verify_tree
from tests.stores import Store
from tests.transparency.conftest import ORIGIN, OpenedLog

SIZE = 12


@pytest.fixture
def seeded(opened: OpenedLog) -> OpenedLog:
    opened.record("acme", 7)
    opened.follow()
    opened.record("acme", SIZE - 7, prefix="late")
    opened.follow()
    assert [c.size for c in opened.trees.checkpoints("acme")] == [7, SIZE]
    return opened


def check(opened: OpenedLog, tenant: str = "acme", kept: tuple[str, ...] = ()) -> TreeReport:
    return verify_tree(opened.ledger, opened.trees, tenant, [opened.signer.verifier], kept)


def rewrite_tail(store: Store, tenant: str, first: int, last: int) -> None:
    """Rewrite seqs first..last with new content, each linked and hashed correctly."""
    previous = GENESIS_HASH
    if first:
        previous = orjson.loads(store.stored_state(tenant, first - 1))["hash"]
    for seq in range(first, last + 1):

        def edit(record: dict[str, Any], previous: str = previous) -> None:
            record["metadata"] = {"rewritten": "yes"}
            record["prev_hash"] = previous

        store.edit_stored_record(tenant, seq, edit, rehash=True)
        previous = orjson.loads(store.stored_state(tenant, seq))["hash"]


def delete_tenant(store: Store, tenant: str) -> None:
    key = store._log_key(tenant)
    for table in (store.events_table, store.ids_table, store.snapshots_table):
        store._run(f"DELETE FROM {table} WHERE originator_id = ?", (key,))


def test_an_untouched_log_matches_every_checkpoint(seeded: OpenedLog) -> None:
    report = check(seeded)
    assert report.ok, report.problems
    assert (report.records, report.checkpoints, report.latest) == (SIZE, 2, SIZE)


Case = tuple[str, Callable[[Store], None], str, int, int]
CASES: list[Case] = [
    # name, tampering, reason, checkpoint named, first bad seq
    (
        "edited record",
        lambda s: s.edit_stored_record("acme", 3, lambda r: r.update(action="x.y")),
        "root_mismatch", 7, 3,
    ),
    ("deleted record", lambda s: s.delete_seqs("acme", 9), "root_mismatch", SIZE, 9),
    ("reordered records", lambda s: s.swap_states("acme", 4, 5), "root_mismatch", 7, 4),
    (
        "deleted tail with its id index",
        lambda s: (s.delete_seq_range("acme", 8, SIZE - 1), s.delete_indexed_ids("acme", 8)),
        "truncated", SIZE, 8,
    ),
    (
        "forged record appended with a correct chain hash",
        lambda s: s.edit_stored_record(
            "acme", SIZE - 1, lambda r: r.update(action="money.move"), rehash=True
        ),
        "root_mismatch", SIZE, SIZE - 1,
    ),
    (
        "tail rewritten consistently from seq 8",
        lambda s: rewrite_tail(s, "acme", 8, SIZE - 1),
        "root_mismatch", SIZE, 8,
    ),
    ("tenant deleted entirely", lambda s: delete_tenant(s, "acme"), "truncated", 7, 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tampering", "reason", "checkpoint", "seq"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_tampering_is_caught_naming_checkpoint_and_first_bad_seq(
    seeded: OpenedLog,
    tampering: Callable[[Store], None],
    reason: str,
    checkpoint: int,
    seq: int,
) -> None:
    tampering(seeded.store)
    report = check(seeded)
    assert not report.ok
    problem = report.problems[0]
    assert (problem.reason, problem.checkpoint, problem.seq) == (reason, checkpoint, seq)
    assert report.as_dict()["first_bad_seq"] == seq


def test_a_consistent_rewrite_passes_the_chain_check_but_not_the_tree(seeded: OpenedLog) -> None:
    rewrite_tail(seeded.store, "acme", 8, SIZE - 1)
    assert verify_tenant(seeded.ledger, "acme").ok
    assert "seq 8 is the first that no longer matches" in check(seeded).problems[0].detail


def test_a_deleted_tenant_is_found_through_its_checkpoints(seeded: OpenedLog) -> None:
    delete_tenant(seeded.store, "acme")
    assert "acme" not in seeded.ledger.tenants()
    assert "acme" in seeded.trees.checkpoint_tenants()
    assert "the tenant's log is gone" in check(seeded).problems[0].detail


def _store_checkpoint(opened: OpenedLog, note: str, size: int) -> None:
    root = Checkpoint.parse(note).root
    opened.trees.add_checkpoint(StoredCheckpoint("acme", size, root, note, "now"))


def test_a_forged_checkpoint_row_is_refused(seeded: OpenedLog) -> None:
    latest = seeded.trees.latest_checkpoint("acme")
    assert latest is not None
    forged = latest.note.replace(f"\n{SIZE}\n", f"\n{SIZE + 1}\n")
    _store_checkpoint(seeded, forged, SIZE + 1)
    problem = check(seeded).problems[0]
    assert (problem.reason, problem.checkpoint) == ("bad_signature", SIZE + 1)
    assert "does not verify" in problem.detail


def test_a_checkpoint_signed_with_another_key_is_refused(seeded: OpenedLog) -> None:
    intruder = Signer.generate(ORIGIN)
    root = seeded.trees.checkpoint("acme", SIZE).root  # type: ignore[union-attr]
    note = sign_checkpoint(Checkpoint(f"{ORIGIN}/acme", SIZE + 5, root), intruder)
    _store_checkpoint(seeded, note, SIZE + 5)
    problem = check(seeded).problems[0]
    assert (problem.reason, problem.checkpoint) == ("bad_signature", SIZE + 5)
    assert "no signature by a trusted key" in problem.detail


def test_a_kept_checkpoint_catches_a_rewrite_even_with_every_stored_one_deleted(
    seeded: OpenedLog,
) -> None:
    kept = seeded.trees.latest_checkpoint("acme")
    assert kept is not None
    assert check(seeded, kept=(kept.note,)).ok
    rewrite_tail(seeded.store, "acme", 10, SIZE - 1)
    seeded.store._run(f"DELETE FROM {_table(seeded.store, 'tlog_checkpoints')}")
    assert check(seeded).ok  # nothing left to compare with: the documented window
    problem = check(seeded, kept=(kept.note,)).problems[0]
    assert (problem.reason, problem.checkpoint) == ("root_mismatch", SIZE)
    assert "kept checkpoint 1" in problem.detail


def test_a_stale_kept_checkpoint_of_another_history_is_refused(
    seeded: OpenedLog, store: Store
) -> None:
    # A checkpoint signed by the log's key over a history that is not this log's.
    other = OpenedLog(store, signer=seeded.signer)
    try:
        stale = sign_checkpoint(
            Checkpoint(f"{ORIGIN}/acme", 5, b"\x01" * 32), seeded.signer.named(ORIGIN)
        )
        problem = check(seeded, kept=(stale,)).problems[0]
        assert (problem.reason, problem.checkpoint) == ("root_mismatch", 5)
    finally:
        other.close()


def _table(store: Store, name: str) -> str:
    schema = getattr(store, "schema", None)
    return f'"{schema}".{name}' if schema else name
