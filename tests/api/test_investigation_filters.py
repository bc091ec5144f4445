"""Investigation filters: the actor's address (or a network it is in), the session and
the request, on queries and exports, each tenant seeing only its own."""

from __future__ import annotations

import ipaddress
from typing import Any

import orjson
import pytest

from audit_core import readmodel
from tests.api.conftest import Api
from tests.api.test_readmodel import assert_pages_through_matches, collide_tenant_keys
from tests.events import audit_event
from tests.followers import OpenedReadModel
from tests.stores import Store

ADDRESSES = [
    "203.0.113.7",
    "203.0.113.200",
    "203.0.114.1",
    "198.51.100.9",
    "2001:db8::1",
    "2001:db8:ffff::2",
    "2001:db9::1",
    None,
]


def investigated(n: int) -> dict[str, Any]:
    actor: dict[str, Any] = {"id": f"u-{n % 3}", "session_id": f"sess-{n % 4}"}
    if ADDRESSES[n % len(ADDRESSES)] is not None:
        actor["ip"] = ADDRESSES[n % len(ADDRESSES)]
    return audit_event(
        f"e-{n}",
        actor=actor,
        request_id=f"req-{n // 2}" if n % 5 else None,
        action="auth.login" if n % 2 else "conversation.assign",
    )


def _seed(api: Api) -> list[dict[str, Any]]:
    events = [investigated(n) for n in range(24)]
    ingest = api.headers("acme", "ingest")
    records: list[dict[str, Any]] = api.client.post(
        "/v1/events", json=events, headers=ingest
    ).json()["records"]
    # Another tenant with the same addresses, sessions and requests.
    api.client.post("/v1/events", json=events, headers=api.headers("globex", "ingest"))
    api.catch_up()
    return records


def _in(address: str | None, network: str) -> bool:
    if address is None:
        return False
    ip = ipaddress.ip_address(address)
    return ip in ipaddress.ip_network(network, strict=False)


@pytest.mark.parametrize(
    "params",
    [
        {"actor_ip": "203.0.113.7"},
        {"actor_ip": "203.0.113.0/24"},
        {"actor_ip": "203.0.112.0/22"},
        {"actor_ip": "0.0.0.0/0"},
        {"actor_ip": "2001:db8::/32"},
        {"actor_ip": "2001:DB8:0::1"},  # spelt otherwise, the same address
        {"actor_ip": "10.0.0.0/8"},
        {"session_id": "sess-2"},
        {"request_id": "req-3"},
        {"actor_ip": "203.0.113.0/24", "session_id": "sess-3", "action": "auth.*"},
    ],
)
def test_queries_find_the_records_of_an_address_network_session_or_request(
    api: Api, params: dict[str, str]
) -> None:
    records = _seed(api)

    def matches(record: dict[str, Any]) -> bool:
        actor = record["actor"]
        if "actor_ip" in params and not _in(actor["ip"], params["actor_ip"]):
            return False
        if "session_id" in params and actor["session_id"] != params["session_id"]:
            return False
        if "request_id" in params and record["request_id"] != params["request_id"]:
            return False
        return "action" not in params or record["action"].startswith("auth.")

    expected = [r["id"] for r in reversed(records) if matches(r)]
    response = api.client.get(
        "/v1/events", params={**params, "limit": 100}, headers=api.headers("acme", "analyst")
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["id"] for item in items] == expected
    assert {item["tenant"] for item in items} <= {"acme"}


def test_an_export_takes_the_same_filters(api: Api) -> None:
    records = _seed(api)
    response = api.client.get(
        "/v1/events/export",
        params={"actor_ip": "2001:db8::/32", "order": "asc"},
        headers=api.headers("acme", "auditor"),
    )
    assert response.status_code == 200
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    exported = [line["id"] for line in lines if "id" in line]  # not the closing summary
    assert exported == [r["id"] for r in records if _in(r["actor"]["ip"], "2001:db8::/32")]


@pytest.mark.parametrize("bad", ["203.0.113.0/33", "not-an-address", "203.0.113", "2001:db8::/129"])
def test_a_bad_address_or_network_is_refused_naming_actor_ip(api: Api, bad: str) -> None:
    response = api.client.get(
        "/v1/events", params={"actor_ip": bad}, headers=api.headers("acme", "analyst")
    )
    assert response.status_code == 422
    [problem] = response.json()["problems"]
    assert problem["field"] == "actor_ip"
    assert "not an IPv4 or IPv6 address or network" in problem["message"]


def test_the_query_records_the_investigation_filters_it_was_given(api: Api) -> None:
    _seed(api)
    params = {"actor_ip": "203.0.113.9/24", "session_id": "sess-1", "request_id": "req-2"}
    api.client.get("/v1/events", params=params, headers=api.headers("acme", "analyst"))
    [query] = [r for r in api.trail("acme") if r["action"] == "audit.query"]
    filters = query["metadata"]["filters"]
    assert (filters["actor_ip"], filters["session_id"], filters["request_id"]) == (
        "203.0.113.0/24",
        "sess-1",
        "req-2",
    )


@pytest.mark.parametrize("merged_up_to", [256, 1])
@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize(
    "filters",
    [
        {"actor_ip": "203.0.113.0/24"},
        {"actor_ip": "0.0.0.0/0"},
        {"actor_ip": "2001:db8::/32"},
        {"actor_ip": "198.51.100.9"},
        {"session_id": "sess-1"},
        {"request_id": "req-5"},
        {"actor_ip": "203.0.113.0/24", "outcome": "failure"},
        {"session_id": "sess-2", "text": "emea"},
    ],
)
def test_investigation_filters_page_through_every_match_in_order(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    order: str,
    filters: dict[str, str],
    merged_up_to: int,
) -> None:
    # A network is read address by address up to ``merged_up_to`` addresses, and by
    # the database's own plan beyond: both give every match once, in order.
    monkeypatch.setattr(readmodel.TrailView, "network_addresses_merged", merged_up_to)
    collide_tenant_keys(monkeypatch)  # tenants collide
    events = []
    for n in range(60):
        event = investigated(n)
        event["outcome"] = "failure" if n % 3 else "success"
        event["metadata"] = {"team": "emea" if n % 2 else "apac"}
        events.append(event)
    ledger = store.open_ledger()
    records = ledger.record("acme", events)
    ledger.record("globex", events)
    opened = OpenedReadModel(store.settings().ledger_env())
    opened.runner(ledger).run_once()

    def matches(record: dict[str, Any]) -> bool:
        for name, value in filters.items():
            if name == "actor_ip":
                if not _in(record["actor"]["ip"], value):
                    return False
            elif name == "session_id":
                if record["actor"]["session_id"] != value:
                    return False
            elif name == "text":
                if record["metadata"]["team"] != value:
                    return False
            elif record[name] != value:
                return False
        return True

    assert_pages_through_matches(opened.view, records, matches, order, filters, page_size=4)
    opened.close()


def test_on_postgresql_the_address_is_stored_as_an_inet(postgres_store: Store) -> None:
    ledger = postgres_store.open_ledger()
    ledger.record("acme", [investigated(4)])  # 2001:db8::1
    opened = OpenedReadModel(postgres_store.settings().ledger_env())
    opened.runner(ledger).run_once()
    table = postgres_store.trail_index_table
    [(kind, inside)] = postgres_store._run(
        f"SELECT pg_typeof(actor_ip)::text, actor_ip <<= '2001:db8::/32' FROM {table}"
    )
    assert (kind, inside) == ("inet", True)
    opened.close()
