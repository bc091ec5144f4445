"""Storage behaviour of the PostgreSQL adapter that a user of the ledger would notice."""

from __future__ import annotations

import threading

import psycopg

from tests.events import assert_valid_chain, audit_event
from tests.stores import POSTGRES_URL, PostgresStore


def test_a_record_waits_out_another_transaction_holding_the_table_lock(
    postgres_store: PostgresStore,
) -> None:
    ledger = postgres_store.open_ledger(postgres_lock_timeout_seconds=1)
    ledger.record("acme", [audit_event("before")])
    with psycopg.connect(POSTGRES_URL) as holder:
        holder.execute(f"LOCK TABLE {postgres_store.events_table} IN EXCLUSIVE MODE")
        # Released after one lock timeout has passed, while record() is waiting or retrying.
        release = threading.Timer(1.5, holder.rollback)
        release.start()
        try:
            ledger.record("acme", [audit_event("during")])
        finally:
            release.cancel()
            release.join()
    assert_valid_chain(ledger.read("acme"), "acme")
    assert ledger.size("acme") == 2
