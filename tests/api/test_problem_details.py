"""Every error is an RFC 9457 problem, every status a route answers is in the OpenAPI
document, the docs pages render from Vigil's own assets, and every route refuses bodies
that are not JSON (415) and query parameters it does not take (422)."""

from __future__ import annotations

import re
from typing import Annotated

import orjson
import pytest
from fastapi import FastAPI, Query
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api import errors, strict
from api.strict import api_routes
from tests.api.conftest import Api
from tests.events import audit_event

PROBLEM = "application/problem+json"


def assert_problem(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == PROBLEM  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["type"] == "about:blank"
    return body


def test_every_kind_of_error_is_a_problem_document(api: Api) -> None:
    ingest = api.headers("acme", "ingest")
    analyst = api.headers("acme", "analyst")
    json_headers = {**ingest, "Content-Type": "application/json"}
    assert_problem(api.client.get("/v1/events"), 401)
    assert_problem(api.client.get("/v1/events", headers=ingest), 403)
    assert_problem(api.client.get("/v1/events/nope", headers=analyst), 404)
    assert_problem(api.client.get("/nowhere"), 404)
    assert_problem(api.client.put("/v1/events", headers=ingest), 405)
    assert_problem(api.client.post("/v1/events", content=b"{nope", headers=json_headers), 400)
    assert_problem(api.client.post("/v1/events", content=b"{}", headers=ingest), 415)
    assert_problem(api.client.post("/v1/events", json={"id": "x"}, headers=ingest), 422)
    assert_problem(api.client.get("/v1/events?limit=0", headers=analyst), 422)
    api.client.post("/v1/events", json=audit_event("e-1"), headers=ingest)
    conflict = api.client.post(
        "/v1/events", json=audit_event("e-1", outcome="denied"), headers=ingest
    )
    assert_problem(conflict, 409)
    small = api.services.settings.max_body_bytes
    too_big = api.client.post("/v1/events", content=b" " * (small + 1), headers=json_headers)
    assert_problem(too_big, 413)
    assert (
        api.client.get("/v1/events", headers={"Authorization": "Bearer x"}).headers[
            "www-authenticate"
        ]
        == "Bearer"
    )


def test_the_openapi_document_declares_every_error_as_a_problem(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert "ProblemDetails" in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"422", "500"} <= statuses, (method, path)
            if path.startswith("/v1/"):
                assert {"401", "403", "503"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= statuses, (method, path)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
    event = schema["components"]["schemas"]["AuditEventIn"]
    assert event["properties"]["metadata"]["additionalProperties"] == {
        "$ref": "#/components/schemas/JSONValue1"
    }
    assert "JSONValue8" in schema["components"]["schemas"]
    actor_id = schema["components"]["schemas"]["ActorIn"]["properties"]["id"]
    assert re.fullmatch(actor_id["pattern"], "u-1")
    assert not re.fullmatch(actor_id["pattern"], "\x00")


def test_every_route_refuses_a_query_parameter_it_does_not_take(api: Api) -> None:
    admin = api.headers("acme", "admin")
    filtered = api.client.get("/v1/events?actor=alice", headers=admin)
    body = assert_problem(filtered, 422)
    assert body["problems"] == [
        {"index": 0, "field": "actor", "message": body["problems"][0]["message"]}  # type: ignore[index]
    ]
    assert "actor_id" in filtered.text  # says which it takes
    tried = set()
    for route in api_routes(api.client.app.router.routes):  # type: ignore[attr-defined]
        for method in route.methods:
            url = re.sub(r"{[^}]+}", "x", route.path_format) + "?colour=blue"
            response = api.client.request(
                method, url, headers={**admin, "Content-Type": "application/json"}, content=b"{}"
            )
            assert_problem(response, 422)
            assert "colour" in response.text
            tried.add((method, route.path_format))
    assert ("POST", "/v1/events") in tried
    assert ("GET", "/healthz") in tried


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_every_route_with_a_body_refuses_other_media_types_with_415(
    api: Api, content_type: str | None
) -> None:
    admin = api.headers("acme", "admin")
    headers = {**admin, **({"Content-Type": content_type} if content_type else {})}
    bodies = {
        "/v1/events": orjson.dumps(audit_event("e")),
        "/v1/keys": b'{"tenant":"acme","roles":["ingest"]}',
    }
    routes = [
        r
        for r in api_routes(api.client.app.router.routes)  # type: ignore[attr-defined]
        if r.body_field is not None or "requestBody" in (r.openapi_extra or {})
    ]
    assert {r.path_format for r in routes} >= set(bodies)
    for route in routes:
        for method in route.methods:
            body = bodies.get(route.path_format, b"{}")
            response = api.client.request(method, route.path_format, content=body, headers=headers)
            assert_problem(response, 415)
    assert api.size("acme") == 0
    # Without a key, 401 still comes first.
    assert (
        api.client.post(
            "/v1/events", content=b"{}", headers={"Content-Type": "text/plain"}
        ).status_code
        == 401
    )


def test_nul_in_a_query_or_path_parameter_is_a_422_naming_it(api: Api) -> None:
    admin = api.headers("acme", "admin")
    for url, name in [
        ("/v1/events?actor_id=a%00b", "actor_id"),
        ("/v1/events?q=%00", "q"),
        ("/v1/events/export?target_id=%00", "target_id"),
        ("/v1/events/a%00b", "event_id"),
    ]:
        body = assert_problem(api.client.get(url, headers=admin), 422)
        assert body["problems"][0]["field"] == name  # type: ignore[index]
    body = assert_problem(api.client.delete("/v1/keys/%00", headers=admin), 422)
    assert body["problems"][0]["field"] == "key_id"  # type: ignore[index]


def test_an_event_id_holding_a_slash_is_read_back_raw_or_percent_encoded(api: Api) -> None:
    ingest = api.headers("acme", "ingest")
    recorded = api.client.post("/v1/events", json=audit_event("orders/42/refund"), headers=ingest)
    assert recorded.status_code == 201
    reader = api.headers("acme", "analyst")
    for url in ("/v1/events/orders/42/refund", "/v1/events/orders%2F42%2Frefund"):
        response = api.client.get(url, headers=reader)
        assert response.status_code == 200, (url, response.text)
        assert response.json() == recorded.json()


def test_the_docs_pages_load_every_asset_from_vigil_itself(api: Api) -> None:
    for page in ("/docs", "/redoc"):
        html = api.client.get(page)
        assert html.status_code == 200
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert assets, page
        assert not re.search(r"https?://", html.text.replace("http://www.w3.org", "")), page
        for asset in assets:
            loaded = api.client.get(asset)
            assert loaded.status_code == 200, asset
            assert len(loaded.content) > 1000, asset
    assert api.client.get("/openapi.json").status_code == 200


def test_no_route_is_left_out_of_the_rules(api: Api) -> None:
    routes = list(api_routes(api.client.app.router.routes))  # type: ignore[attr-defined]
    assert routes
    assert all(isinstance(r, APIRoute) and r._vigil_strict for r in routes)  # type: ignore[attr-defined]


def test_the_openapi_document_states_the_rules_the_server_enforces(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    stamp = re.compile(models["AuditEventIn"]["properties"]["occurred_at"]["pattern"])
    assert stamp.fullmatch("2024-05-01T12:00:00.5+01:00")
    for refused in ("2024-13-01T12:00:00Z", "0000-01-01T00:00:00Z", "2024-05-01T12:00:00"):
        assert not stamp.fullmatch(refused), refused
    [_single, batch] = schema["paths"]["/v1/events"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["oneOf"]
    assert (batch["minItems"], batch["maxItems"]) == (1, api.services.settings.max_batch_events)
    assert re.fullmatch(models["KeyCreate"]["properties"]["tenant"]["pattern"], "acme")
    parameters = {p["name"]: p for p in schema["paths"]["/v1/events"]["get"]["parameters"]}
    for name in ("since", "until"):
        assert parameters[name]["schema"]["pattern"] == stamp.pattern
    action = re.compile(parameters["action"]["schema"]["pattern"])
    assert action.fullmatch("conversation.*")
    assert action.fullmatch("auth.login")
    assert not action.fullmatch("Not An Action")


def test_a_single_valued_query_parameter_given_twice_is_refused(api: Api) -> None:
    analyst = api.headers("acme", "analyst")
    response = api.client.get("/v1/events?actor_id=alice&actor_id=bob", headers=analyst)
    body = assert_problem(response, 422)
    assert body["problems"][0]["field"] == "actor_id"  # type: ignore[index]
    assert "2 times" in body["detail"]  # type: ignore[operator]


def test_a_list_query_parameter_may_be_repeated() -> None:
    app = FastAPI()

    @app.get("/things")
    async def things(tag: Annotated[list[str] | None, Query()] = None) -> list[str]:
        return tag or []

    errors.install(app)
    strict.install(app)
    with TestClient(app) as client:
        assert client.get("/things?tag=a&tag=b").json() == ["a", "b"]
        assert client.get("/things?tag=a&colour=b").status_code == 422


def test_a_request_without_a_body_is_judged_by_the_route_not_refused_with_415(api: Api) -> None:
    ingest = api.headers("acme", "ingest")
    response = api.client.post("/v1/events", headers=ingest)
    assert_problem(response, 400)
    admin = api.headers("acme", "admin")
    missing = assert_problem(api.client.post("/v1/keys", headers=admin), 422)
    assert missing["problems"][0]["field"] == "body"  # type: ignore[index]
