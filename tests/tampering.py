"""Ways to change a tenant's log directly in the database, and where verification must say so.

Each applies to tenant ``acme`` holding seqs 0 to 5 (see :func:`seed`), written once and
used by both the in-process verifier tests and the ``vigil verify`` CLI tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from audit_core import Ledger
from tests.events import audit_events
from tests.stores import Store


@dataclass(frozen=True)
class Tampering:
    name: str
    apply: Callable[[Store], None]
    seq: int
    """First seq verification must report as bad."""
    reason: str


def _change_metadata(record: dict[str, Any]) -> None:
    record["metadata"]["workspace"] = "somewhere-else"


TAMPERINGS = [
    Tampering(
        "edited_payload",
        lambda store: store.edit_stored_record("acme", 3, _change_metadata),
        3,
        "hash_mismatch",
    ),
    Tampering(
        "edited_payload_with_recomputed_hash",
        lambda store: store.edit_stored_record("acme", 3, _change_metadata, rehash=True),
        4,
        "broken_link",
    ),
    Tampering(
        "record_claims_another_tenant",
        lambda store: store.edit_stored_record("acme", 2, lambda r: r.update(tenant="globex")),
        2,
        "seq_mismatch",
    ),
    Tampering("deleted_middle_row", lambda store: store.delete_seqs("acme", 2), 2, "gap"),
    Tampering("swapped_states", lambda store: store.swap_states("acme", 2, 3), 2, "seq_mismatch"),
    Tampering(
        "swapped_versions", lambda store: store.swap_versions("acme", 2, 3), 2, "seq_mismatch"
    ),
    Tampering("truncated_tail", lambda store: store.delete_seqs("acme", 4, 5), 4, "truncated"),
    Tampering(
        "unreadable_payload",
        lambda store: store.set_stored_state("acme", 1, b"\x00 not json"),
        1,
        "undecodable",
    ),
]

tamperings = pytest.mark.parametrize("tampering", TAMPERINGS, ids=lambda t: t.name)


def seed(ledger: Ledger) -> None:
    """``acme`` with seqs 0-5 in two batches, and an untouched ``globex`` with 3 records."""
    ledger.record("acme", audit_events(4, prefix="a"))
    ledger.record("globex", audit_events(3, prefix="g"))
    ledger.record("acme", audit_events(2, prefix="b"))
