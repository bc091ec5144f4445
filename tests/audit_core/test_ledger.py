"""The ledger's contract, run once on SQLite and once on PostgreSQL (see the ``store`` fixture)."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.settings import Settings
from audit_core import (
    DuplicateEventIdError,
    EventNotFoundError,
    InvalidEventError,
    Ledger,
    Limits,
    TenantNotFoundError,
    verify_tenant,
)
from tests.events import GENESIS, assert_valid_chain, audit_event, audit_events, expected_hash
from tests.stores import Store

KEY = base64.b64encode(bytes(range(32))).decode()


# -- the chain ----------------------------------------------------------------------------


def test_the_first_record_of_a_tenant_is_seq_0_linked_to_the_genesis_hash(ledger: Ledger) -> None:
    [record] = ledger.record("acme", [audit_event("evt-1")])
    assert (record["tenant"], record["seq"], record["prev_hash"]) == ("acme", 0, GENESIS)
    assert record["hash"] == expected_hash(record)
    assert record["received_at"].endswith("Z")


def test_batches_form_one_gap_free_chain_whose_hashes_recompute(ledger: Ledger) -> None:
    returned = []
    for batch, size in enumerate([1, 5, 3]):
        returned += ledger.record("acme", audit_events(size, prefix=f"b{batch}"))
    stored = ledger.read("acme", limit=100)
    assert stored == returned
    assert_valid_chain(stored, "acme")
    assert ledger.head("acme") == (9, stored[-1]["hash"])


def test_a_batch_comes_back_in_input_order_sharing_one_received_at(ledger: Ledger) -> None:
    events = [audit_event(f"evt-{name}") for name in "cab"]
    records = ledger.record("acme", events)
    assert [r["id"] for r in records] == ["evt-c", "evt-a", "evt-b"]
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert len({r["received_at"] for r in records}) == 1


def test_each_tenant_has_its_own_chain_starting_at_seq_0(ledger: Ledger) -> None:
    ledger.record("acme", audit_events(3))
    [globex] = ledger.record("globex", [audit_event("evt-0")])
    assert (globex["seq"], globex["prev_hash"]) == (0, GENESIS)
    assert ledger.size("acme") == 3
    assert ledger.size("globex") == 1
    assert_valid_chain(ledger.read("globex"), "globex")


def test_a_reopened_ledger_continues_the_chain_from_storage(store: Store) -> None:
    store.open_ledger().record("acme", audit_events(4, prefix="first"))
    reopened = store.open_ledger()
    reopened.record("acme", audit_events(2, prefix="second"))
    assert_valid_chain(reopened.read("acme"), "acme")
    assert reopened.size("acme") == 6


def test_two_ledgers_on_one_database_append_to_a_single_chain(store: Store) -> None:
    one, other = store.open_ledger(), store.open_ledger()
    one.record("acme", audit_events(2, prefix="one-a"))
    other.record("acme", audit_events(3, prefix="other"))
    one.record("acme", audit_events(2, prefix="one-b"))
    records = other.read("acme")
    assert_valid_chain(records, "acme")
    assert len(records) == 7
    assert one.head("acme") == other.head("acme")


def test_a_log_longer_than_the_snapshot_interval_reads_back_and_verifies(store: Store) -> None:
    writer = store.open_ledger()
    writer.snapshot_every = 4
    for batch in range(4):
        writer.record("acme", audit_events(3, prefix=f"b{batch}"))
    reopened = store.open_ledger()
    assert reopened.head("acme") == writer.head("acme")
    reopened.record("acme", [audit_event("after")])
    assert_valid_chain(reopened.read("acme"), "acme")
    assert verify_tenant(reopened, "acme").ok


SAFE = 2**53 - 1
STORABLE = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
"""Any character PostgreSQL stores: not a lone surrogate, not NUL (both refused by name)."""
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-SAFE, SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(STORABLE, max_size=10)
)
json_keys = st.text(STORABLE, max_size=6)
bounded_json_objects = st.dictionaries(
    json_keys,
    st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
        max_leaves=12,
    ),
    max_size=5,
)


@pytest.fixture(scope="module")
def memory_ledger() -> Iterator[Ledger]:
    """One in-memory SQLite ledger for every example of a property."""
    configured = Settings(database_url="sqlite:///:memory:")
    ledger = Ledger(configured.ledger_env(), configured.limits())
    yield ledger
    ledger.close()


@settings(max_examples=60)
@given(metadata=bounded_json_objects, changes=bounded_json_objects)
def test_any_bounded_json_metadata_reads_back_equal_and_hashes_as_rfc_8785(
    memory_ledger: Ledger, metadata: dict[str, Any], changes: dict[str, Any]
) -> None:
    event_id = f"prop-{uuid.uuid4()}"
    event = audit_event(event_id, metadata=metadata, changes=changes)
    [record] = memory_ledger.record("prop", [event])
    stored = memory_ledger.get("prop", event_id)
    assert stored == record
    assert (stored["metadata"], stored["changes"]) == (metadata, changes)
    assert stored["hash"] == expected_hash(stored)
    assert memory_ledger.record("prop", [event]) == [record]


# -- reading --------------------------------------------------------------------------------


def test_records_are_found_by_id_and_by_seq(ledger: Ledger) -> None:
    records = ledger.record("acme", audit_events(5))
    assert ledger.get("acme", "evt-3") == records[3]
    assert ledger.get_seq("acme", 4) == records[4]


def test_read_pages_from_a_seq_and_latest_returns_the_tail_oldest_first(ledger: Ledger) -> None:
    records = ledger.record("acme", audit_events(10))
    assert ledger.read("acme", from_seq=3, limit=4) == records[3:7]
    assert ledger.read("acme", from_seq=8, limit=100) == records[8:]
    assert ledger.latest("acme", limit=3) == records[7:]
    assert ledger.latest("acme", limit=50) == records


def test_tenants_are_listed_in_the_order_their_logs_were_opened(ledger: Ledger) -> None:
    for tenant in ["globex", "acme", "initech"]:
        ledger.record(tenant, [audit_event()])
    ledger.record("acme", [audit_event("evt-2")])
    assert ledger.tenants() == ["globex", "acme", "initech"]


def test_a_tenant_without_a_log_is_not_found_by_reads_that_name_it(ledger: Ledger) -> None:
    assert ledger.tenants() == []
    assert ledger.size("nobody") == 0
    assert ledger.read("nobody") == []
    for read in (
        lambda: ledger.latest("nobody"),
        lambda: ledger.head("nobody"),
        lambda: ledger.get("nobody", "evt-0"),
        lambda: ledger.get_seq("nobody", 0),
    ):
        with pytest.raises(TenantNotFoundError, match="'nobody'"):
            read()
    assert ledger.tenants() == []


def test_unknown_ids_and_seqs_are_not_found_and_say_which(ledger: Ledger) -> None:
    ledger.record("acme", audit_events(2))
    with pytest.raises(EventNotFoundError, match="'evt-9'"):
        ledger.get("acme", "evt-9")
    with pytest.raises(EventNotFoundError, match="seq 2"):
        ledger.get_seq("acme", 2)


@pytest.mark.parametrize("tenant", ["Acme", "../etc", ""])
def test_queries_refuse_malformed_tenant_names(ledger: Ledger, tenant: str) -> None:
    with pytest.raises(InvalidEventError, match="tenant"):
        ledger.size(tenant)
    with pytest.raises(InvalidEventError, match="tenant"):
        ledger.read(tenant)


# -- idempotency ------------------------------------------------------------------------------


def test_resending_an_event_returns_the_original_record_and_records_nothing(ledger: Ledger) -> None:
    [original] = ledger.record("acme", [audit_event("evt-1")])
    ledger.record("acme", [audit_event("evt-2")])
    [again] = ledger.record("acme", [audit_event("evt-1")])
    assert again == original
    assert ledger.size("acme") == 2


def test_an_idempotent_retry_is_recognised_by_a_fresh_ledger(store: Store) -> None:
    originals = store.open_ledger().record("acme", audit_events(3))
    fresh = store.open_ledger()
    assert fresh.record("acme", audit_events(3)) == originals
    assert fresh.size("acme") == 3


def test_a_retry_spelling_the_same_content_differently_is_still_the_same_event(
    ledger: Ledger,
) -> None:
    [original] = ledger.record(
        "acme", [audit_event(occurred_at="2024-05-01T12:00:00Z", actor={"id": "u", "ip": "::1"})]
    )
    [again] = ledger.record(
        "acme",
        [audit_event(occurred_at="2024-05-01T14:00:00+02:00", actor={"id": "u", "ip": "0::1"})],
    )
    assert again == original


def test_a_batch_mixing_known_and_new_events_records_only_the_new_ones(ledger: Ledger) -> None:
    first = ledger.record("acme", audit_events(2))
    mixed = ledger.record("acme", [audit_event("new-a"), *audit_events(2), audit_event("new-b")])
    assert mixed[1:3] == first
    assert [r["seq"] for r in mixed] == [2, 0, 1, 3]
    assert ledger.get("acme", "new-b") == mixed[3]
    assert_valid_chain(ledger.read("acme"), "acme")


def test_reusing_an_id_with_other_content_refuses_the_whole_batch(ledger: Ledger) -> None:
    ledger.record("acme", [audit_event("evt-1", outcome="success")])
    batch = [audit_event("evt-new"), audit_event("evt-1", outcome="denied")]
    with pytest.raises(DuplicateEventIdError) as refused:
        ledger.record("acme", batch)
    assert (refused.value.event_id, refused.value.index) == ("evt-1", 1)
    assert "event 1, field 'id': id 'evt-1' is already recorded at seq 0" in str(refused.value)
    assert ledger.size("acme") == 1
    with pytest.raises(EventNotFoundError):
        ledger.get("acme", "evt-new")


def test_an_id_repeated_within_one_batch_is_refused_and_nothing_recorded(ledger: Ledger) -> None:
    batch = [audit_event("evt-1"), audit_event("evt-2"), audit_event("evt-1")]
    with pytest.raises(DuplicateEventIdError) as refused:
        ledger.record("acme", batch)
    assert (refused.value.event_id, refused.value.index) == ("evt-1", 2)
    assert "repeats event 0" in str(refused.value)
    assert ledger.size("acme") == 0
    assert ledger.tenants() == []


def test_the_same_id_in_two_tenants_names_two_events(ledger: Ledger) -> None:
    [acme] = ledger.record("acme", [audit_event("evt-1", outcome="success")])
    [globex] = ledger.record("globex", [audit_event("evt-1", outcome="failure")])
    assert (acme["outcome"], globex["outcome"]) == ("success", "failure")


def test_events_without_an_id_are_each_recorded(ledger: Ledger) -> None:
    first = ledger.record("acme", [audit_event(None)])
    second = ledger.record("acme", [audit_event(None)])
    assert first[0]["id"] != second[0]["id"]
    assert ledger.get("acme", second[0]["id"]) == second[0]
    assert ledger.size("acme") == 2


# -- atomic batches -------------------------------------------------------------------------


def test_a_batch_with_one_invalid_event_records_nothing(ledger: Ledger) -> None:
    ledger.record("acme", audit_events(2, prefix="before"))
    batch = [*audit_events(3), audit_event("bad", actor={"id": "u", "ip": "1.2.3.999"})]
    with pytest.raises(InvalidEventError) as refused:
        ledger.record("acme", batch)
    assert [(p.index, p.field) for p in refused.value.problems] == [(3, "actor.ip")]
    assert ledger.size("acme") == 2
    with pytest.raises(EventNotFoundError):
        ledger.get("acme", "evt-0")


def test_an_invalid_first_batch_does_not_open_a_log(ledger: Ledger) -> None:
    with pytest.raises(InvalidEventError):
        ledger.record("acme", [audit_event(action="Nope")])
    assert ledger.tenants() == []


def test_the_ledger_applies_its_configured_limits(store: Store) -> None:
    ledger = store.open_ledger(Limits(max_batch_events=2))
    with pytest.raises(InvalidEventError, match="exceeds the limit of 2"):
        ledger.record("acme", audit_events(3))
    assert ledger.size("acme") == 0


# -- encryption at rest ----------------------------------------------------------------------

SECRETS = ["actor-7f3a-secret", "payroll.export_all", "salary-file-91x", "evt-confidential"]


def secret_event() -> dict[str, object]:
    return audit_event(
        "evt-confidential",
        actor={"id": "actor-7f3a-secret", "ip": "198.51.100.7"},
        action="payroll.export_all",
        metadata={"file": "salary-file-91x"},
    )


def test_without_a_key_the_stored_rows_hold_the_records_in_clear(store: Store) -> None:
    store.open_ledger().record("acme", [secret_event()])
    stored = store.everything_stored()
    assert all(secret.encode() in stored for secret in SECRETS if secret != "evt-confidential")
    assert b"evt-confidential" in store.stored_state("acme", 0)


def test_with_a_key_no_stored_row_holds_any_recorded_value_in_clear(store: Store) -> None:
    ledger = store.open_ledger(encryption_key=KEY)
    record = ledger.record("acme", [secret_event(), *audit_events(2)])[0]
    stored = store.everything_stored()
    leaked = [secret for secret in SECRETS if secret.encode() in stored]
    assert leaked == []
    assert b"198.51.100.7" not in stored
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(store.stored_state("acme", 0))

    reopened = store.open_ledger(encryption_key=KEY)
    assert reopened.get("acme", "evt-confidential") == record
    assert record["metadata"] == {"file": "salary-file-91x"}
    assert_valid_chain(reopened.read("acme"), "acme")
    assert verify_tenant(reopened, "acme").ok
    assert reopened.record("acme", [secret_event()]) == [record]


def test_a_ledger_with_another_key_cannot_pass_off_the_log_as_verified(store: Store) -> None:
    store.open_ledger(encryption_key=KEY).record("acme", audit_events(3))
    other_key = base64.b64encode(uuid.uuid4().bytes * 2).decode()
    report = verify_tenant(store.open_ledger(encryption_key=other_key), "acme")
    assert report.problem is not None
    assert (report.problem.seq, report.problem.reason.value) == (0, "undecodable")


def test_a_batch_chained_after_one_that_fails_is_stored_in_its_place(store: Store) -> None:
    ledger = store.open_ledger()
    ledger.record("acme", [audit_event("taken")])
    other: dict[str, list[dict[str, Any]]] = {}
    other_chained = threading.Event()

    def record_other() -> None:
        batch = ledger.prepare("acme", audit_events(3, "other"))
        other["records"] = ledger.record_prepared(batch, other_chained.set)

    thread = threading.Thread(target=record_other)

    def start_other_after_this_one() -> None:
        thread.start()
        assert other_chained.wait(timeout=10)

    refused = ledger.prepare("acme", [audit_event("taken", outcome="failure")])
    with pytest.raises(DuplicateEventIdError):
        ledger.record_prepared(refused, start_other_after_this_one)
    thread.join(timeout=10)
    assert [record["seq"] for record in other["records"]] == [1, 2, 3]
    assert_valid_chain(ledger.read("acme"), "acme")
    assert verify_tenant(ledger, "acme").ok


def test_an_id_repeated_by_the_batch_chained_after_it_is_recorded_once(store: Store) -> None:
    """A client's retry that arrives while its original is being stored: on PostgreSQL
    the retry's id row waits on the original's in the database; either way the retry
    gets the original record, and nothing waits forever."""
    ledger = store.open_ledger()
    ledger.record("acme", audit_events(1, "first"))
    retry: dict[str, list[dict[str, Any]]] = {}
    retry_chained = threading.Event()

    def record_retry() -> None:
        batch = ledger.prepare("acme", [audit_event("shared"), audit_event("after")])
        retry["records"] = ledger.record_prepared(batch, retry_chained.set)

    thread = threading.Thread(target=record_retry)

    def start_retry_after_this_one() -> None:
        thread.start()
        assert retry_chained.wait(timeout=10)

    original = ledger.prepare("acme", [audit_event("shared")])
    [shared] = ledger.record_prepared(original, start_retry_after_this_one)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert retry["records"][0] == shared
    records = ledger.read("acme")
    assert [(r["id"], r["seq"]) for r in records] == [("first-0", 0), ("shared", 1), ("after", 2)]
    assert verify_tenant(ledger, "acme").ok


def test_overlapping_calls_of_one_process_keep_one_chain(store: Store) -> None:
    ledger = store.open_ledger()
    ledger.record("acme", audit_events(1, "first"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = [audit_events(50, f"t{n}") for n in range(12)]
        list(pool.map(lambda events: ledger.record("acme", events), batches))
    records = ledger.read("acme", limit=1000)
    assert len(records) == 1 + 12 * 50
    assert_valid_chain(records, "acme")
    assert verify_tenant(ledger, "acme").ok
