"""Interpreter tuning for the long-running processes (the API server, the followers):
each one an operator's choice, off by default (``VIGIL_TUNE_COLLECTOR``,
``VIGIL_GIL_SWITCH_SECONDS``, ``VIGIL_ONE_CPU``; measurements in docs/performance.md).

They hold for as long as a server or worker runs and are put back after, so a process
that runs one in passing (the tests, an embedding application) keeps its own.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_COLLECTION_THRESHOLD = 100_000
"""Net container allocations that start a collection of the youngest generation
(CPython's default is 700). A batch of 500 events in flight is about 6,000 containers,
all freed by reference counting when its request ends; at the default, the collector
ran every few dozen events and moved the batches in flight into the old generations,
whose collections then walked them again. Cyclic garbage is still collected: it counts
towards this threshold until it is."""


@contextmanager
def tuned_for_service(
    *,
    collector: bool = False,
    gil_switch_seconds: float | None = None,
    one_cpu: bool = False,
) -> Iterator[None]:
    """Optional collector, GIL and CPU settings for a service.

    ``collector``: the objects alive on entry (modules, the app, its settings and
    connections) live as long as the service, so they are frozen out of the collector's
    walks, and the youngest generation is collected less often.

    ``gil_switch_seconds``: how long a thread may hold the GIL while another waits;
    shorter than CPython's 5 ms lets a committing thread take it back sooner after each
    database round trip.

    ``one_cpu``: keep the process's threads on one of its CPUs (the last one; the
    follower worker is never pinned, so two Vigil processes never share one core by
    this setting). They share a GIL, so they never run at once anyway; on one CPU, a
    batch's objects stay in that CPU's caches between threads.
    """
    thresholds = gc.get_threshold()
    switch = sys.getswitchinterval()
    if collector:
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
    if gil_switch_seconds is not None:
        sys.setswitchinterval(gil_switch_seconds)
    cpus = _cpus()
    pinned = one_cpu and len(cpus) > 1
    if pinned:
        _set_cpus({max(cpus)})
    try:
        yield
    finally:
        if pinned:
            _set_cpus(cpus)
        sys.setswitchinterval(switch)
        if collector:
            gc.set_threshold(*thresholds)
            gc.unfreeze()


def _cpus() -> set[int]:
    """The CPUs this process may run on (all of them where that cannot be told)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def _set_cpus(cpus: set[int]) -> None:
    """Every thread of this process (Linux), else none: the calling thread alone would
    leave the others where they are."""
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        return
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that has just ended
            os.sched_setaffinity(int(thread), cpus)
