"""An API on each real backend, driven through FastAPI's TestClient (the real HTTP stack
in process), with helpers to mint keys and wait for the read model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import ApiKey
from api.services import Services
from tests.stores import Store


class Api:
    def __init__(self, client: TestClient, store: Store):
        self.client = client
        self.store = store

    @property
    def services(self) -> Services:
        services: Services = self.client.app.state.services  # type: ignore[attr-defined]
        return services

    def key(self, tenant: str, *roles: str, **options: Any) -> tuple[ApiKey, dict[str, str]]:
        key, token = self.services.keys.create(tenant, roles, **options)
        return key, {"Authorization": f"Bearer {token}"}

    def headers(self, tenant: str, *roles: str, **options: Any) -> dict[str, str]:
        return self.key(tenant, *roles, **options)[1]

    def catch_up(self) -> None:
        self.services.catch_up(timeout=30)

    def size(self, tenant: str) -> int:
        return self.services.ledger.size(tenant)

    def trail(self, tenant: str) -> list[dict[str, Any]]:
        return self.services.ledger.read(tenant, limit=100_000)


OpenApi = Callable[..., Api]


@pytest.fixture
def open_api(store: Store) -> Iterator[OpenApi]:
    """Open an API on the test's store; ``settings`` are Settings fields."""
    clients: list[TestClient] = []

    def open_(client: tuple[str, int] = ("testclient", 50000), **settings: Any) -> Api:
        settings.setdefault("key_cache_seconds", 0)
        settings.setdefault("readmodel_poll_seconds", 0.05)
        app = create_app(store.settings(**settings))
        test_client = TestClient(app, client=client)
        test_client.__enter__()
        clients.append(test_client)
        return Api(test_client, store)

    yield open_
    for test_client in reversed(clients):
        test_client.__exit__(None, None, None)


@pytest.fixture
def api(open_api: OpenApi) -> Api:
    return open_api()
