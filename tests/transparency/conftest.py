"""The transparency log's follower opened as an entry point opens it, on each backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from audit_core import Ledger
from audit_core.followers import FollowerRunner, FollowerStore, open_store
from audit_core.transparency import Signer
from audit_core.transparency.follower import TransparencyLog
from audit_core.transparency.proofs import TreeReader
from audit_core.transparency.store import TreeStore, tree_store_class
from tests.api.conftest import api, open_api  # noqa: F401  (the API fixtures, here too)
from tests.events import audit_events
from tests.stores import Store

ORIGIN = "vigil.test/log"


class OpenedLog:
    """A ledger, the transparency follower on its store, and a runner to drain it."""

    def __init__(self, store: Store, signer: Signer | None = None, **options: Any):
        self.store = store
        self.env = store.settings().ledger_env()
        self.ledger: Ledger = store.open_ledger()
        self.followers: FollowerStore = open_store(self.env)
        self.trees: TreeStore = self.followers.view_recorder(tree_store_class(self.env))
        self.signer = signer or Signer.generate(ORIGIN)
        options.setdefault("every_records", 1_000_000)
        options.setdefault("every_seconds", 3600.0)
        self.log = TransparencyLog(self.trees, self.signer, ORIGIN, **options)
        self.runner = FollowerRunner(self.ledger, self.log, self.followers, page_size=97)
        self.reader = TreeReader(self.trees)

    def record(self, tenant: str, count: int, prefix: str = "evt") -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for start in range(0, count, 500):
            events = audit_events(min(500, count - start), prefix=f"{prefix}-{start}")
            records += self.ledger.record(tenant, events)
        return records

    def follow(self) -> None:
        """Bring the trees up to date and sign every grown tenant's checkpoint."""
        self.runner.drain()
        self.log.sign_due(force=True)

    def close(self) -> None:
        self.followers.close()


@pytest.fixture
def opened(store: Store) -> Iterator[OpenedLog]:
    opened = OpenedLog(store)
    yield opened
    opened.close()
