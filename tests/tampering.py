"""Ways to change a tenant's log directly in the database, and where verification must say so.

Each applies to tenant ``acme`` holding seqs 0 to 5 (see :func:`seed`), written once and
used by both the in-process verifier tests and the ``vigil verify`` CLI tests. Seq -1 is
the row of the log's ``Opened`` event (version 0), which no hash covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from audit_core import Ledger
from audit_core.domain import tenant_log_id
from audit_core.persistence import OPENED_TOPIC, RECORDED_TOPIC
from tests.events import audit_events
from tests.stores import Store

Finding = tuple[int, str]
"""(first bad seq, reason)."""


@dataclass(frozen=True)
class Tampering:
    name: str
    apply: Callable[[Store], None]
    seq: int
    """First seq verification of ``acme`` must report as bad."""
    reason: str
    listed_as: tuple[str, Finding] | None = None
    """The name and finding under which verifying every stored log lists ``acme``, when
    not ``acme`` with (seq, reason)."""
    others: dict[str, Finding] = field(default_factory=dict)
    """Other logs that verifying every stored log finds broken (``globex`` is intact
    unless named here)."""

    def every_log(self) -> dict[str, Finding | None]:
        """Each log that ``vigil verify`` lists, and its finding (None: intact)."""
        acme = self.listed_as or ("acme", (self.seq, self.reason))
        return {acme[0]: acme[1], "globex": None, **self.others}


def _change_metadata(record: dict[str, Any]) -> None:
    record["metadata"]["workspace"] = "somewhere-else"


def _opened_naming(tenant: str) -> Callable[[Store], None]:
    def apply(store: Store) -> None:
        opened = orjson.loads(store.stored_state("acme", -1))
        opened["tenant"] = tenant
        store.set_stored_state("acme", -1, orjson.dumps(opened))

    return apply


def _all_rows_deleted(store: Store) -> None:
    store.delete_seq_range("acme", -1, 5)


def _opened_deleted_and_a_record_edited(store: Store) -> None:
    store.delete_seqs("acme", -1)
    store.edit_stored_record("acme", 3, _change_metadata)


ACME_LOG = f"log:{tenant_log_id('acme')}"

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
    Tampering(
        "garbage_bytes",
        lambda store: store.set_stored_state("acme", 2, bytes(range(256))),
        2,
        "undecodable",
    ),
    Tampering(
        "json_that_is_not_a_record",
        lambda store: store.set_stored_state("acme", 3, b'{"hash": 7, "record": [1, 2]}'),
        3,
        "undecodable",
    ),
    Tampering(
        "record_stored_under_another_topic",
        lambda store: store.set_topic("acme", 2, OPENED_TOPIC),
        2,
        "undecodable",
    ),
    Tampering("opened_deleted", lambda store: store.delete_seqs("acme", -1), 0, "opened_missing"),
    Tampering(
        "opened_deleted_and_a_record_edited",
        _opened_deleted_and_a_record_edited,
        0,
        "opened_missing",
    ),
    Tampering("opened_names_another_tenant", _opened_naming("globex"), 0, "opened_altered"),
    Tampering(
        "opened_garbage",
        lambda store: store.set_stored_state("acme", -1, b"\xff\xfe garbage"),
        0,
        "opened_altered",
    ),
    Tampering(
        "opened_replaced_by_a_record",
        lambda store: store.set_topic("acme", -1, RECORDED_TOPIC),
        0,
        "opened_altered",
    ),
    Tampering(
        "record_moved_to_another_tenant_s_log",
        lambda store: store.move_row("acme", 5, "globex", 3),
        5,
        "truncated",
        others={"globex": (3, "seq_mismatch")},
    ),
    Tampering(
        # Every event row gone, the id index left: the log is still listed, by its id.
        "all_rows_deleted_id_index_left",
        _all_rows_deleted,
        0,
        "truncated",
        listed_as=(ACME_LOG, (0, "unnamed_log")),
    ),
]

tamperings = pytest.mark.parametrize("tampering", TAMPERINGS, ids=lambda t: t.name)


def seed(ledger: Ledger) -> None:
    """``acme`` with seqs 0-5 in two batches, and an untouched ``globex`` with 3 records."""
    ledger.record("acme", audit_events(4, prefix="a"))
    ledger.record("globex", audit_events(3, prefix="g"))
    ledger.record("acme", audit_events(2, prefix="b"))
