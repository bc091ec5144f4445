"""Incidents on each real backend (SQLite file, PostgreSQL schema) with a clock the test
moves, over a ledger on the same store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from audit_core import Ledger
from incident import Evidence, Incidents
from incident.escalation import ManualClock
from tests.events import audit_event
from tests.stores import Store

START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

OpenIncidents = Callable[..., Incidents]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def open_incidents(store: Store, clock: ManualClock) -> Iterator[OpenIncidents]:
    opened: list[Incidents] = []

    def open_(ledger: Ledger | None = None, **options: Any) -> Incidents:
        options.setdefault("clock", clock)
        app = Incidents(store.settings().ledger_env(), ledger or store.open_ledger(), **options)
        opened.append(app)
        return app

    yield open_
    for app in opened:
        app.close()


@pytest.fixture
def incidents(open_incidents: OpenIncidents) -> Incidents:
    return open_incidents()


def record_attack(ledger: Ledger, tenant: str = "acme", count: int = 3) -> list[Evidence]:
    """Failed logins recorded in the tenant's ledger, as evidence links."""
    records = ledger.record(
        tenant,
        [
            audit_event(f"login-{tenant}-{i}", action="auth.login", outcome="failure")
            for i in range(count)
        ],
    )
    return [Evidence.of_record(r) for r in records]


# The API fixtures (an app on the test's store, keys): shared with tests/api.
from tests.api.conftest import Api, OpenApi, api, open_api  # noqa: E402, F401
