"""Separate processes appending to one tenant on PostgreSQL never fork or skip the chain."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from audit_core import EventNotFoundError, verify_tenant
from tests.audit_core import writers
from tests.events import assert_valid_chain, audit_event
from tests.stores import PostgresStore

SPAWN = multiprocessing.get_context("spawn")


def run_writers(store: PostgresStore, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    """Run each (writer function, args) in its own spawned process, released together."""
    # Tables are created here, before the race, as a deployment's migration step would.
    store.open_ledger()
    start = SPAWN.Barrier(len(calls))
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=writers.run, args=(target, args, start, results, slot))
        for slot, (target, args) in enumerate(calls)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, Any] = {}
    try:
        for _ in processes:
            slot, outcome = results.get(timeout=60)
            outcomes[slot] = outcome
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    failures = [outcome for outcome in outcomes.values() if isinstance(outcome, RuntimeError)]
    if failures:
        pytest.fail(f"a writer process failed: {failures[0]}")
    assert all(process.exitcode == 0 for process in processes)
    return [outcomes[slot] for slot in range(len(calls))]


def test_concurrent_writers_on_one_tenant_leave_one_gap_free_chain(
    postgres_store: PostgresStore,
) -> None:
    processes, batches, batch_size = 4, 20, 10
    returned = run_writers(
        postgres_store,
        [
            ("append_batches", (postgres_store.url, writer, batches, batch_size))
            for writer in range(processes)
        ],
    )

    ledger = postgres_store.open_ledger()
    total = processes * batches * batch_size
    stored = ledger.read(writers.TENANT, limit=total + 10)
    assert len(stored) == ledger.size(writers.TENANT) == total
    assert_valid_chain(stored, writers.TENANT)
    assert len({record["id"] for record in stored}) == total
    for records in returned:
        assert records == [stored[record["seq"]] for record in records]
        seqs = [record["seq"] for record in records]
        assert seqs == sorted(seqs), "each writer's batches keep the order it sent them in"
    assert verify_tenant(ledger, writers.TENANT).ok


def test_concurrent_retries_of_one_batch_record_it_once(postgres_store: PostgresStore) -> None:
    batch = [audit_event(f"evt-{index}") for index in range(30)]
    returned = run_writers(
        postgres_store, [("record_batch", (postgres_store.url, batch)) for _ in range(3)]
    )

    assert returned[0] == returned[1] == returned[2]
    ledger = postgres_store.open_ledger()
    assert ledger.read(writers.TENANT) == returned[0]
    assert_valid_chain(returned[0], writers.TENANT)


def test_racing_writers_reusing_an_id_with_different_content_record_only_one_batch(
    postgres_store: PostgresStore,
) -> None:
    def batch(writer: int) -> list[dict[str, Any]]:
        return [
            audit_event(f"own-{writer}"),
            audit_event("evt-shared", metadata={"writer": writer}),
        ]

    returned = run_writers(
        postgres_store, [("record_batch", (postgres_store.url, batch(w))) for w in range(3)]
    )

    accepted = [w for w, outcome in enumerate(returned) if isinstance(outcome, list)]
    assert len(accepted) == 1
    refusals = [outcome for outcome in returned if isinstance(outcome, str)]
    assert all("event 1, field 'id': id 'evt-shared'" in refusal for refusal in refusals)
    ledger = postgres_store.open_ledger()
    assert ledger.size(writers.TENANT) == 2
    assert ledger.get(writers.TENANT, "evt-shared")["metadata"] == {"writer": accepted[0]}
    for writer in set(range(3)) - set(accepted):
        with pytest.raises(EventNotFoundError):
            ledger.get(writers.TENANT, f"own-{writer}")
