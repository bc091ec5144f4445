"""Interpreter settings for the long-running processes: the API server and the follower.

Both are set for as long as a server or follower runs and put back after, so a process
that runs one in passing (the tests, an embedding application) keeps its own.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

GIL_SWITCH_SECONDS = 0.0005
"""How long a thread may hold the GIL while another waits for it. Batches are validated
and hashed in worker threads while a group commit talks to the database; at CPython's
default of 5 ms, the committing thread waits up to that long for the GIL after every
round trip, and each commit stretches behind validation (batch ingest over HTTP ran
at 15,900 to 17,100 events/s with the default and 19,200 to 21,700 with this)."""

YOUNG_COLLECTION_THRESHOLD = 100_000
"""Net container allocations that start a collection of the youngest generation
(CPython's default is 700). A batch of 500 events in flight is about 6,000 containers,
all freed by reference counting when its request ends; at the default, the collector
ran every few dozen events and moved the batches in flight into the old generations,
whose collections then walked them again. Cyclic garbage is still collected: it counts
towards this threshold until it is."""


@contextmanager
def tuned_for_service(*, gil_switch_seconds: float | None = None) -> Iterator[None]:
    """Collector (and, for a threaded server, GIL) settings for a long-running service.

    The objects alive on entry (modules, the app, its settings and connections) live as
    long as the service, so they are frozen out of the collector's walks.
    """
    thresholds = gc.get_threshold()
    switch = sys.getswitchinterval()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
    if gil_switch_seconds is not None:
        sys.setswitchinterval(gil_switch_seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        gc.set_threshold(*thresholds)
        gc.unfreeze()
