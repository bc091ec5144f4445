"""POST /v1/events: single events, batches, refusals that record nothing, idempotency."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from tests.api.conftest import Api, OpenApi
from tests.events import GENESIS, audit_event, audit_events, expected_hash


def test_a_single_event_is_recorded_with_its_seq_and_hash(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    response = api.client.post("/v1/events", json=audit_event("evt-1"), headers=headers)
    assert response.status_code == 201
    record = response.json()
    assert (record["id"], record["tenant"], record["seq"]) == ("evt-1", "acme", 0)
    assert record["prev_hash"] == GENESIS
    assert record["hash"] == expected_hash(record)
    assert api.trail("acme") == [record]


def test_a_batch_is_recorded_in_order_and_chained(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    response = api.client.post("/v1/events", json=audit_events(5), headers=headers)
    assert response.status_code == 201
    records = response.json()["records"]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["id"] for r in records] == [f"evt-{i}" for i in range(5)]
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]


def test_the_answer_holds_what_was_stored_floats_included(api: Api) -> None:
    events = audit_events(3)
    events[1]["metadata"] = {"ratio": 1.0, "tags": ["a", "é"], "nested": {"z": 1, "a": None}}
    headers = api.headers("acme", "ingest")
    response = api.client.post("/v1/events", json=events, headers=headers)
    assert response.status_code == 201
    records = response.json()["records"]
    assert records == api.trail("acme")
    assert isinstance(records[1]["metadata"]["ratio"], float)
    assert all(record["hash"] == expected_hash(record) for record in records)


def test_a_retried_event_returns_the_original_record_and_records_nothing_new(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    first = api.client.post("/v1/events", json=audit_event("evt-1"), headers=headers)
    again = api.client.post("/v1/events", json=audit_event("evt-1"), headers=headers)
    assert again.status_code == 200
    assert again.json() == first.json()
    batch = api.client.post("/v1/events", json=audit_events(3), headers=headers)
    retried = api.client.post("/v1/events", json=audit_events(3), headers=headers)
    assert retried.status_code == 200
    assert retried.json() == batch.json()
    assert api.size("acme") == 1 + 2  # evt-0..2 of the batch; evt-1 was already there


def test_an_id_reused_with_other_content_is_refused_with_409(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    api.client.post("/v1/events", json=audit_event("evt-1"), headers=headers)
    response = api.client.post(
        "/v1/events", json=audit_event("evt-1", outcome="failure"), headers=headers
    )
    assert response.status_code == 409
    assert response.json()["problems"][0]["field"] == "id"
    assert api.size("acme") == 1


REFUSALS: list[tuple[str, Any, str]] = [
    ("a missing actor", {k: v for k, v in audit_event().items() if k != "actor"}, "actor"),
    ("a malformed action", audit_event(action="Assign"), "action"),
    ("an unknown outcome", audit_event(outcome="maybe"), "outcome"),
    ("an unknown field", audit_event(colour="blue"), "colour"),
    ("a bad timestamp", audit_event(occurred_at="yesterday"), "occurred_at"),
    ("a future timestamp", audit_event(occurred_at="2999-01-01T00:00:00Z"), "occurred_at"),
    ("metadata nested too deep", audit_event(metadata={"a": {"b": {"c": {"d": 1}}}}), "metadata"),
    ("an event too large", audit_event(metadata={"blob": "x" * 5000}), "event"),
    ("another tenant in the event", audit_event(tenant="globex"), "tenant"),
    ("a bad actor ip", audit_event(actor={"id": "u-1", "ip": "999.1.1.1"}), "actor.ip"),
]


@pytest.mark.parametrize(("case", "event", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refused_event_names_its_field_and_records_nothing(
    open_api: OpenApi, case: str, event: dict[str, Any], field: str
) -> None:
    api = open_api(max_metadata_depth=3, max_event_bytes=4096)
    headers = api.headers("acme", "ingest")
    for body in (event, [audit_event("ok-0"), event, audit_event("ok-2")]):
        response = api.client.post("/v1/events", json=body, headers=headers)
        assert response.status_code == 422, case
        problems = response.json()["problems"]
        assert field in [p["field"] for p in problems]
        if isinstance(body, list):
            assert [p["index"] for p in problems if p["field"] == field] == [1]
    assert api.size("acme") == 0


def test_a_batch_over_the_limit_is_refused_naming_the_body(open_api: OpenApi) -> None:
    api = open_api(max_batch_events=3)
    headers = api.headers("acme", "ingest")
    response = api.client.post("/v1/events", json=audit_events(4), headers=headers)
    assert response.status_code == 422
    assert response.json()["problems"][0]["field"] == "body"
    assert api.size("acme") == 0


def test_a_body_over_the_limit_is_refused_with_413_before_parsing(open_api: OpenApi) -> None:
    api = open_api(max_body_bytes=2048)
    headers = api.headers("acme", "ingest")
    body = orjson.dumps(audit_events(20))
    assert len(body) > 2048
    response = api.client.post(
        "/v1/events", content=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["problems"][0]["field"] == "body"

    def chunks() -> Any:  # no Content-Length: the limit is counted while streaming
        yield body[:1000]
        yield body[1000:]

    streamed = api.client.post(
        "/v1/events", content=chunks(), headers={**headers, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert api.size("acme") == 0


def test_a_body_that_is_not_json_or_not_events_is_refused(api: Api) -> None:
    headers = {**api.headers("acme", "ingest"), "Content-Type": "application/json"}
    broken = api.client.post("/v1/events", content=b"{nope", headers=headers)
    assert broken.status_code == 400
    assert "body" in broken.json()["detail"]
    scalar = api.client.post("/v1/events", json=42, headers=headers)
    assert scalar.status_code == 422
    assert scalar.json()["problems"][0]["field"] == "body"
    empty = api.client.post("/v1/events", json=[], headers=headers)
    assert empty.status_code == 422
    assert api.size("acme") == 0


@pytest.mark.parametrize(
    "number",
    [b"12345678901234567890123456789", b"9007199254740993", b"1e400", b"NaN", b"-Infinity"],
)
def test_a_number_json_cannot_carry_exactly_is_refused_alone_or_in_a_batch(
    api: Api, number: bytes
) -> None:
    headers = {**api.headers("acme", "ingest"), "Content-Type": "application/json"}
    event = orjson.dumps(audit_event("big", metadata={"amount": 0})).replace(b"0}", number + b"}")
    batch = b"[" + orjson.dumps(audit_event("ok")) + b"," + event + b"]"
    for body, index in ((event, 0), (batch, 1)):
        response = api.client.post("/v1/events", content=body, headers=headers)
        assert response.status_code == 422, response.text
        [problem] = response.json()["problems"]
        assert (problem["index"], problem["field"]) == (index, "metadata")
    assert api.size("acme") == 0


def test_a_body_may_start_with_whitespace(api: Api) -> None:
    headers = {**api.headers("acme", "ingest"), "Content-Type": "application/json"}
    batch = api.client.post(
        "/v1/events", content=b"\n  " + orjson.dumps(audit_events(2)), headers=headers
    )
    single = api.client.post(
        "/v1/events", content=b"\t" + orjson.dumps(audit_event("s-1")), headers=headers
    )
    assert (batch.status_code, single.status_code) == (201, 201)
    assert [r["id"] for r in api.trail("acme")] == ["evt-0", "evt-1", "s-1"]


def test_the_limits_are_documented_in_the_openapi_schema(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert "VIGIL_MAX_BODY_BYTES" in schema["info"]["description"]
    assert "AuditEventIn" in schema["components"]["schemas"]
    assert "/v1/events" in schema["paths"]
