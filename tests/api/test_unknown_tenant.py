"""Over HTTP, a tenant without a log is not found on every read, and reading it never
creates it: the attempt is recorded in the reading key's own tenant."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api
from tests.events import audit_event


def _value(schema: dict[str, Any]) -> str:
    """A value the schema accepts, so that only the tenant can make the request fail."""
    if schema.get("format") == "uuid":
        return "00000000-0000-4000-8000-000000000000"
    return "1" if schema.get("type") == "integer" else "x"


def _reads_naming_a_tenant(api: Api, tenant: str) -> list[str]:
    """A URL of every GET operation that names its tenant, as the OpenAPI document says."""
    spec = api.client.get("/openapi.json").json()
    urls = []
    for path, operations in spec["paths"].items():
        operation: dict[str, Any] | None = operations.get("get")
        if operation is None:
            continue
        parameters = {p["name"]: p for p in operation.get("parameters", [])}
        if "tenant" not in parameters and "log_tenant" not in parameters:
            continue
        url, query = path.replace("{log_tenant}", tenant), []
        for name, parameter in parameters.items():
            if parameter["in"] == "path":
                value = _value(parameter["schema"])
                url = url.replace(f"{{{name}}}", value).replace(f"{{{name}:path}}", value)
            elif name == "tenant":
                query.append(f"tenant={tenant}")
            elif parameter.get("required"):
                query.append(f"{name}={_value(parameter['schema'])}")
        urls.append(f"{url}?{'&'.join(query)}")
    return urls


def test_every_read_of_an_unknown_tenant_is_404_and_creates_nothing(api: Api) -> None:
    api.client.post("/v1/events", json=audit_event("a-1"), headers=api.headers("acme", "ingest"))
    api.client.post("/v1/events", json=audit_event("o-1"), headers=api.headers("ops", "ingest"))
    operator, headers = api.key("ops", "admin", "analyst", "responder", "auditor", all_tenants=True)
    urls = _reads_naming_a_tenant(api, "acme-typo")
    assert len(urls) >= 10, urls

    answers = {url: api.client.get(url, headers=headers) for url in urls}

    for url, response in answers.items():
        assert response.status_code == 404, (url, response.text)
        assert response.json()["detail"] == "tenant 'acme-typo' has no audit log", url
    assert not api.services.ledger.has_log("acme-typo")
    assert api.services.ledger.tenants() == ["acme", "ops"]
    recorded = [r for r in api.trail("ops") if r["action"] == "access.not_found"]
    assert len(recorded) == len(urls)
    assert {r["metadata"]["requested_tenant"] for r in recorded} == {"acme-typo"}
    assert {(r["actor"]["id"], r["outcome"]) for r in recorded} == {(operator.key_id, "failure")}


def test_a_known_tenant_is_read_as_before(api: Api) -> None:
    api.client.post("/v1/events", json=audit_event("a-1"), headers=api.headers("acme", "ingest"))
    headers = api.headers("ops", "admin", all_tenants=True)
    response = api.client.get("/v1/verify", params={"tenant": "acme"}, headers=headers)
    assert response.status_code == 200
    assert response.json()["records"] == 1


def test_a_write_naming_a_new_tenant_creates_it(api: Api) -> None:
    headers = api.headers("ops", "admin", all_tenants=True)
    response = api.client.post(
        "/v1/events", params={"tenant": "newco"}, json=audit_event("n-1"), headers=headers
    )
    assert response.status_code == 201
    assert response.json()["tenant"] == "newco"
