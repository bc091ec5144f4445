"""Followers opened the way the entry points open them, for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from audit_core import Ledger
from audit_core.followers import FollowerRunner, open_store
from audit_core.readmodel import open_read_model


class OpenedReadModel:
    """The read model's follower on its own follower store (as one process has it)."""

    def __init__(self, env: dict[str, str]):
        self.store = open_store(env)
        self.follower = open_read_model(self.store, env)
        self.view = self.follower.view

    def runner(self, ledger: Ledger, **options: Any) -> FollowerRunner:
        return FollowerRunner(ledger, self.follower, self.store, **options)

    def close(self) -> None:
        self.follower.close()
        self.store.close()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """The first true value of ``condition``, polled; fails saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value
