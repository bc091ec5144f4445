"""No request can read or write another tenant's events, whatever the endpoint."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.events import audit_event


def test_no_endpoint_reaches_across_tenants(api: Api) -> None:
    globex_events = [audit_event("g-1", metadata={"secret": "globex-only"})]
    api.client.post("/v1/events", json=globex_events, headers=api.headers("globex", "ingest"))
    api.client.post("/v1/events", json=[audit_event("a-1")], headers=api.headers("acme", "ingest"))
    api.catch_up()
    globex_before = api.trail("globex")
    roles = ("ingest", "analyst", "responder", "auditor", "admin")
    every_role = {r: api.headers("acme", r) for r in roles}
    covered: set[tuple[str, str]] = set()

    def call(method: str, route: str, url: str, headers: dict[str, str], **kw: object) -> int:
        covered.add((method, route))
        response = api.client.request(method, url, headers=headers, **kw)  # type: ignore[arg-type]
        assert "globex-only" not in response.text
        assert globex_before[0]["hash"] not in response.text
        return response.status_code

    for role, headers in every_role.items():
        # Naming the other tenant is refused outright.
        assert (
            call("POST", "/v1/events", "/v1/events?tenant=globex", headers, json=audit_event("x"))
            == 403
        ), role
        assert call("GET", "/v1/events", "/v1/events?tenant=globex", headers) == 403
        assert call("GET", "/v1/events/export", "/v1/events/export?tenant=globex", headers) == 403
        assert call("GET", "/v1/events/{event_id}", "/v1/events/g-1?tenant=globex", headers) == 403
        assert call("GET", "/v1/verify", "/v1/verify?tenant=globex", headers) == 403
        assert call("GET", "/v1/keys", "/v1/keys?tenant=globex", headers) == 403
        assert (
            call(
                "POST",
                "/v1/keys",
                "/v1/keys",
                headers,
                json={"tenant": "globex", "roles": ["admin"]},
            )
            == 403
        )
        globex_key = api.services.keys.list("globex")
        if globex_key:
            assert (
                call("DELETE", "/v1/keys/{key_id}", f"/v1/keys/{globex_key[0].key_id}", headers)
                == 403
            )
        # Within its own tenant, the other tenant's data is simply not there.
        call("GET", "/v1/events", "/v1/events", headers)
        call("GET", "/v1/events/export", "/v1/events/export", headers)
        assert call("GET", "/v1/events/{event_id}", "/v1/events/g-1", headers) in (403, 404)
        call("GET", "/v1/verify", "/v1/verify", headers)
        # A tenant named inside the event is refused, not obeyed.
        assert call(
            "POST", "/v1/events", "/v1/events", headers, json=audit_event("x", tenant="globex")
        ) in (403, 422)
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/redoc"):
        call("GET", path, path, {})
    # Every other route of the OpenAPI document, naming the other tenant (in the query,
    # and in the path where a route takes one): refused, or not there, never answered.
    paths = api.client.get("/openapi.json").json()["paths"]
    for route, operations in paths.items():
        for method, operation in operations.items():
            if (method.upper(), route) in covered:
                continue
            # The parameters a route requires, so that it gets as far as the tenant.
            required = "".join(
                f"&{parameter['name']}=1"
                for parameter in operation.get("parameters", [])
                if parameter["in"] == "query" and parameter.get("required")
            )
            url = route.format(
                log_tenant="globex", event_id="g-1", key_id="k", step_id="s",
                incident_id="00000000-0000-4000-8000-000000000001", tile_path="0/000",
            )  # fmt: skip
            for role, headers in every_role.items():
                body = {} if method in ("post", "patch") else None
                named = "" if "{log_tenant}" in route else "&tenant=globex"
                target = f"{url}?{named}{required}"
                status = call(method.upper(), route, target, headers, json=body)
                # A body route may refuse the empty body before it looks at the tenant.
                refusals = (403, 404, 422) if "requestBody" in operation else (403, 404)
                assert status in refusals, (method, route, role, status)

    routes = {(method.upper(), route) for route, ops in paths.items() for method in ops}
    assert routes <= covered, f"endpoints not tried across tenants: {routes - covered}"
    assert api.trail("globex") == globex_before
    assert all(r["tenant"] == "acme" for r in api.trail("acme"))


def test_an_all_tenants_key_may_name_any_tenant(api: Api) -> None:
    api.client.post(
        "/v1/events", json=[audit_event("g-1")], headers=api.headers("globex", "ingest")
    )
    api.catch_up()
    operator = api.headers("ops", "admin", all_tenants=True)
    response = api.client.get("/v1/events/g-1", params={"tenant": "globex"}, headers=operator)
    assert response.status_code == 200
    assert response.json()["tenant"] == "globex"


def test_a_malformed_tenant_is_refused_alike_by_every_route(api: Api) -> None:
    headers = api.headers("acme", "admin")
    answers = [
        api.client.post("/v1/events?tenant=Not%20Valid", json=audit_event("x"), headers=headers),
        api.client.get("/v1/events?tenant=Not%20Valid", headers=headers),
    ]
    # A trailing newline too, which Python's "$" would let through.
    newline = api.client.post("/v1/events?tenant=acme%0A", json=audit_event("x"), headers=headers)
    assert newline.status_code == 422
    for response in answers:
        assert response.status_code == 422
        assert "tenant" in response.text
    assert answers[0].json() == answers[1].json()
    assert api.trail("acme") == []
