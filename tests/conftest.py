"""Fixtures shared by every test: an environment free of VIGIL_* settings, and the stores.

``store`` runs a test once on SQLite (a file under tmp_path) and once on the real
PostgreSQL, in a schema of its own; the contract tests are written once against it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from audit_core import Ledger
from tests.stores import PostgresStore, SQLiteStore, Store

# Shared CI runners have two slow cores: judge examples by count, never by time.
settings.register_profile("vigil", deadline=None)
settings.load_profile("vigil")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever uses PostgreSQL carries the ``postgres`` marker (select with -m postgres)."""
    for item in items:
        if "postgres_store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def _no_vigil_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's VIGIL_* variables must not leak into what a test configures."""
    for name in list(os.environ):
        if name.startswith("VIGIL_") and name != "VIGIL_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "ledger.db")
    yield store
    store.close()


@pytest.fixture
def postgres_store() -> Iterator[PostgresStore]:
    store = PostgresStore()
    yield store
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Store:
    backend: Store = request.getfixturevalue(f"{request.param}_store")
    return backend


@pytest.fixture
def ledger(store: Store) -> Ledger:
    return store.open_ledger()
