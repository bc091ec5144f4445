"""The service's interpreter settings hold while it runs and are put back after."""

from __future__ import annotations

import gc
import os
import sys
import threading
import weakref

import pytest

from api.runtime import YOUNG_COLLECTION_THRESHOLD, tuned_for_service


def test_tuning_is_off_unless_asked_for() -> None:
    thresholds, switch = gc.get_threshold(), sys.getswitchinterval()
    with tuned_for_service():
        assert gc.get_threshold() == thresholds
        assert sys.getswitchinterval() == switch
        assert gc.get_freeze_count() == 0


def test_settings_hold_while_serving_and_are_restored() -> None:
    thresholds, switch = gc.get_threshold(), sys.getswitchinterval()
    with tuned_for_service(collector=True, gil_switch_seconds=0.0005):
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
        assert gc.get_threshold()[1:] == thresholds[1:]
        assert sys.getswitchinterval() == 0.0005
        assert gc.get_freeze_count() > 0  # what lived before is out of the collector's walks
    assert gc.get_threshold() == thresholds
    assert sys.getswitchinterval() == switch
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_is_still_collected() -> None:
    class Node:
        pass

    def cycle() -> Node:
        node = Node()
        node.loop = node  # type: ignore[attr-defined]
        return node

    with tuned_for_service(collector=True):
        first = weakref.ref(cycle())
        for _ in range(YOUNG_COLLECTION_THRESHOLD):  # past the raised threshold
            cycle()
        assert first() is None  # collected without anyone calling gc.collect()


def _thread_cpus() -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")]


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and two CPUs to tell",
)
def test_one_cpu_holds_every_thread_and_is_given_back() -> None:
    before = os.sched_getaffinity(0)
    stop = threading.Event()
    waiting = threading.Thread(target=stop.wait)
    waiting.start()  # a thread that exists before, like a connection pool's
    try:
        with tuned_for_service(one_cpu=True):
            assert all(cpus == {max(before)} for cpus in _thread_cpus())
            seen: list[set[int]] = []
            later = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
            later.start()
            later.join()
            assert seen == [{max(before)}]  # and one started while it holds
        assert all(cpus == before for cpus in _thread_cpus())
    finally:
        stop.set()
        waiting.join()
