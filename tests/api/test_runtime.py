"""The service's interpreter settings hold while it runs and are put back after."""

from __future__ import annotations

import gc
import sys
import weakref

from api.runtime import YOUNG_COLLECTION_THRESHOLD, tuned_for_service


def test_settings_hold_while_serving_and_are_restored() -> None:
    thresholds, switch = gc.get_threshold(), sys.getswitchinterval()
    with tuned_for_service(gil_switch_seconds=0.0005):
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

    with tuned_for_service():
        first = weakref.ref(cycle())
        for _ in range(YOUNG_COLLECTION_THRESHOLD):  # past the raised threshold
            cycle()
        assert first() is None  # collected without anyone calling gc.collect()
