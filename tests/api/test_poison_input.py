"""Input that must never be recorded or reach storage: text PostgreSQL cannot store,
nesting beyond every parser's limit, keys given twice, bodies that are not JSON,
parameters a route does not take. Each is refused with a 4xx naming what is wrong,
nothing is recorded, and what follows is recorded and queried as usual."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.api.conftest import Api
from tests.api.test_cli import Vigil, jsonl
from tests.events import audit_event, audit_events
from tests.stores import SQLiteStore

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def cli(sqlite_store: SQLiteStore, tmp_path: Path) -> Vigil:
    return Vigil(sqlite_store, tmp_path)


NUL_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"actor": {"id": "u-\x00"}}, "actor.id"),
    ({"target": {"type": "conversation", "id": "c\x00"}}, "target.id"),
    ({"request_id": "\x00"}, "request_id"),
    ({"metadata": {"note": "a\x00b"}}, "metadata.note"),
    ({"changes": {"to": ["u-1", "\x00"]}}, "changes.to.1"),
    ({"metadata": {"k\x00": 1}}, "metadata.k\\x00"),
]


@pytest.mark.parametrize(("fields", "field"), NUL_FIELDS, ids=[f for _, f in NUL_FIELDS])
def test_a_nul_anywhere_in_an_event_is_refused_naming_the_field(
    api: Api, fields: dict[str, Any], field: str
) -> None:
    headers = api.headers("acme", "ingest")
    poisoned = audit_event("poisoned", **fields)
    for body, index in ((poisoned, 0), ([audit_event("ok-0"), poisoned], 1)):
        response = api.client.post("/v1/events", json=body, headers=headers)
        assert response.status_code == 422, response.text
        [problem] = response.json()["problems"]
        assert (problem["index"], problem["field"]) == (index, field)
        assert "U+0000" in problem["message"]
    assert api.size("acme") == 0


def test_after_a_refused_nul_the_trail_is_recorded_and_queried_as_usual(api: Api) -> None:
    ingest = api.headers("acme", "ingest")
    refused = api.client.post(
        "/v1/events", json=audit_event("bad", metadata={"x": "\x00"}), headers=ingest
    )
    assert refused.status_code == 422
    assert api.client.post("/v1/events", json=audit_events(3), headers=ingest).status_code == 201
    api.catch_up()
    page = api.client.get("/v1/events", headers=api.headers("acme", "analyst")).json()
    assert [item["id"] for item in page["items"]] == ["evt-2", "evt-1", "evt-0"]


def deeply_nested(levels: int) -> bytes:
    return orjson.dumps(audit_event("deep"))[:-1] + (
        b',"changes":{"a":' + b"[" * levels + b"]" * levels + b"}}"
    )


@pytest.mark.parametrize("levels", [9, 300, 10_000])
def test_nesting_beyond_the_limit_is_a_4xx_alone_or_in_a_batch(api: Api, levels: int) -> None:
    headers = {**api.headers("acme", "ingest"), **JSON}
    event = deeply_nested(levels)
    for body in (event, b"[" + orjson.dumps(audit_event("ok")) + b"," + event + b"]"):
        response = api.client.post("/v1/events", content=body, headers=headers)
        assert response.status_code in (400, 422), response.text
        assert "nest" in response.text or "recursion" in response.text
    assert api.size("acme") == 0


def test_a_key_given_twice_is_refused_and_nothing_is_recorded(api: Api) -> None:
    headers = {**api.headers("acme", "ingest"), **JSON}
    single = orjson.dumps(audit_event("twice")).replace(
        b'"outcome":"success"', b'"outcome":"success","outcome":"failure"'
    )
    nested = orjson.dumps(audit_event("nested", metadata={"role": "viewer"})).replace(
        b'"role":"viewer"', b'"role":"viewer","role":"owner"'
    )
    for body in (single, b"[" + nested + b"]"):
        response = api.client.post("/v1/events", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert "duplicate key" in response.json()["detail"]
    assert api.size("acme") == 0


def test_vigil_record_refuses_a_nul_naming_line_and_field(cli: Vigil) -> None:
    events = [*audit_events(2), audit_event("bad", metadata={"note": "a\x00b"})]
    result = cli("record", "--tenant", "default", path := cli.file(jsonl(events)))
    assert result.exit_code == 2
    assert f"{path}: line 3, field 'metadata.note'" in result.stderr
    assert "U+0000" in result.stderr
    assert cli.ledger().tenants() == []


def test_vigil_record_refuses_a_key_given_twice(cli: Vigil) -> None:
    text = '{"id": "e", "outcome": "success",\n "outcome": "failure"}\n'
    result = cli("record", "--tenant", "default", cli.file(text, "pretty.json"))
    assert result.exit_code == 2
    assert "duplicate key" in result.stderr
    assert cli.ledger().tenants() == []


def test_a_key_description_holding_nul_is_refused_over_http_and_on_the_cli(
    api: Api, cli: Vigil
) -> None:
    admin = api.headers("acme", "admin")
    response = api.client.post(
        "/v1/keys",
        json={"tenant": "acme", "roles": ["ingest"], "description": "ci\x00bot"},
        headers=admin,
    )
    assert response.status_code == 422, response.text
    assert response.json()["problems"][0]["field"] == "description"
    result = cli(
        "keys", "create", "--tenant", "acme", "--role", "ingest", "--description", "ci\x00bot"
    )
    assert result.exit_code == 2
    assert "description" in result.stderr


def test_every_json_body_is_read_as_i_json_with_storable_text(api: Api) -> None:
    admin = {**api.headers("acme", "admin"), **JSON}
    twice = b'{"tenant": "acme", "roles": ["ingest"], "roles": ["admin"]}'
    response = api.client.post("/v1/keys", content=twice, headers=admin)
    assert response.status_code == 400, response.text
    assert "duplicate key" in response.json()["detail"]
    deep = (
        b'{"tenant": "acme", "roles": ["ingest"], "networks": '
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}"
    )
    response = api.client.post("/v1/keys", content=deep, headers=admin)
    assert response.status_code == 400, response.text
    nul = {"tenant": "acme", "roles": ["ingest"], "networks": ["10.0.0.0/8\x00"]}
    response = api.client.post("/v1/keys", json=nul, headers=admin)
    assert response.status_code == 422, response.text
    assert response.json()["problems"][0]["field"] == "networks.0"
    assert [key.roles for key in api.services.keys.list("acme")] == [("admin",)]


def test_a_lone_surrogate_in_a_body_is_refused_as_not_i_json(api: Api, cli: Vigil) -> None:
    body = orjson.dumps(audit_event("lone")).replace(b"u-1001", b"\\ud800")
    headers = {**api.headers("acme", "ingest"), **JSON}
    response = api.client.post("/v1/events", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "not valid I-JSON" in response.json()["detail"]
    result = cli("record", "--tenant", "default", stdin=body.decode() + "\n")
    assert result.exit_code == 2
    assert "line 1: not valid JSON" in result.stderr
    assert api.size("acme") == 0
