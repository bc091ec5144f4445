"""StoreTurn: a batch is stored after the one it was chained after, and only if that
one was; nobody waits forever."""

from __future__ import annotations

import threading
import time

import pytest
from eventsourcing.persistence import IntegrityError

from audit_core.overlapping_appends import StoreTurn


def test_a_batch_waits_for_the_one_before_and_follows_its_fate() -> None:
    before = StoreTurn()
    after = StoreTurn(before, patience=10)
    passed = threading.Event()

    def store_after() -> None:
        after.wait_for_batch_before()
        passed.set()

    thread = threading.Thread(target=store_after)
    thread.start()
    time.sleep(0.05)
    assert not passed.is_set()  # still waiting for the batch before
    before.finish(stored=True)
    thread.join(timeout=10)
    assert passed.is_set()

    failed = StoreTurn()
    next_one = StoreTurn(failed, patience=10)
    failed.finish(stored=False)
    next_one.wait_for_ids_before()  # a failed batch writes no ids: nothing to wait for
    with pytest.raises(IntegrityError, match="was not stored"):
        next_one.wait_for_batch_before()


def test_ids_follow_the_ids_of_the_batch_before() -> None:
    before = StoreTurn()
    after = StoreTurn(before, patience=10)
    released = threading.Event()
    thread = threading.Thread(target=lambda: (after.wait_for_ids_before(), released.set()))
    thread.start()
    time.sleep(0.05)
    assert not released.is_set()
    before.ids_written()  # not yet stored: the ids may go in all the same
    thread.join(timeout=10)
    assert released.is_set()
    assert not before.stored(timeout=0)


def test_a_batch_gives_up_waiting_after_its_patience() -> None:
    after = StoreTurn(StoreTurn(), patience=0.05)
    with pytest.raises(IntegrityError, match="in time"):
        after.wait_for_ids_before()
    with pytest.raises(IntegrityError, match="was not stored"):
        after.wait_for_batch_before()


def test_a_finished_turn_lets_go_of_the_one_before() -> None:
    before = StoreTurn()
    after = StoreTurn(before)
    before.finish(stored=True)
    after.wait_for_batch_before()
    after.finish(stored=True)
    assert after._before is None  # a long line of appends does not pile up in memory
    assert after.stored()
