"""GET /v1/events and /v1/events/{id}, and the CSV / JSON Lines export."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest

from tests.api.conftest import Api
from tests.events import audit_event, expected_hash


def _seed(api: Api) -> list[dict[str, Any]]:
    events = [
        audit_event("e-0", action="auth.login", occurred_at="2024-05-01T08:00:00Z"),
        audit_event(
            "e-1",
            actor={"id": "u-2"},
            action="conversation.assign",
            occurred_at="2024-05-02T08:00:00Z",
        ),
        audit_event(
            "e-2",
            action="conversation.close",
            target={"type": "conversation", "id": "c-7"},
            outcome="failure",
            occurred_at="2024-05-03T08:00:00Z",
        ),
        audit_event(
            "e-3",
            action="user.delete",
            target={"type": "user", "id": "u-9"},
            source="app",
            metadata={"reason": "GDPR erasure request"},
            occurred_at="2024-05-04T08:00:00Z",
        ),
        audit_event("e-4", action="conversationx.odd", occurred_at="2024-05-05T08:00:00Z"),
    ]
    records = api.client.post(
        "/v1/events", json=events, headers=api.headers("acme", "ingest")
    ).json()["records"]
    api.catch_up()
    return list(records)


def _ids(api: Api, headers: dict[str, str], **params: Any) -> list[str]:
    response = api.client.get("/v1/events", params={"source": "console", **params}, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["e-4", "e-2", "e-1", "e-0"]),
        ({"actor_id": "u-2"}, ["e-1"]),
        ({"action": "conversation.assign"}, ["e-1"]),
        ({"action": "conversation.*"}, ["e-2", "e-1"]),
        ({"target_type": "conversation", "target_id": "c-7"}, ["e-2"]),
        ({"outcome": "failure"}, ["e-2"]),
        ({"since": "2024-05-02T08:00:00Z", "until": "2024-05-03T10:00:00+02:00"}, ["e-1"]),
        ({"order": "asc"}, ["e-0", "e-1", "e-2", "e-4"]),
    ],
)
def test_queries_filter_the_trail_newest_first(
    api: Api, params: dict[str, Any], expected: list[str]
) -> None:
    _seed(api)
    assert _ids(api, api.headers("acme", "analyst"), **params) == expected


def test_free_text_finds_words_in_metadata_whatever_their_case(api: Api) -> None:
    _seed(api)
    headers = api.headers("acme", "analyst")
    response = api.client.get("/v1/events", params={"q": "gdpr ERASURE"}, headers=headers)
    assert [i["id"] for i in response.json()["items"]] == ["e-3"]
    wildcard = api.client.get("/v1/events", params={"q": "%"}, headers=headers)
    assert wildcard.json()["items"] == []


def test_cursor_pagination_visits_every_record_once(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    api.client.post(
        "/v1/events",
        json=[audit_event(f"p-{i}") for i in range(23)],
        headers=headers,
    )
    api.catch_up()
    reader = api.headers("acme", "analyst")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5, "source": "console"}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/events", params=params, headers=reader).json()
        seen += [item["seq"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(22, -1, -1))
    assert pages == 5


def test_a_bad_cursor_or_filter_is_refused_naming_it(api: Api) -> None:
    headers = api.headers("acme", "analyst")
    for params, field in [
        ({"cursor": "garbage!"}, "cursor"),
        ({"since": "last week"}, "since"),
        ({"action": "Not An Action"}, "action"),
        ({"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"}, "until"),
    ]:
        response = api.client.get("/v1/events", params=params, headers=headers)
        assert response.status_code == 422
        assert response.json()["problems"][0]["field"] == field
    desc_cursor = None
    api.client.post(
        "/v1/events",
        json=[audit_event(f"x-{i}") for i in range(3)],
        headers=api.headers("acme", "ingest"),
    )
    api.catch_up()
    desc_cursor = api.client.get("/v1/events", params={"limit": 1}, headers=headers).json()[
        "next_cursor"
    ]
    mixed = api.client.get(
        "/v1/events", params={"order": "asc", "cursor": desc_cursor}, headers=headers
    )
    assert mixed.status_code == 422


def test_one_record_is_returned_by_id_with_its_chain_fields(api: Api) -> None:
    records = _seed(api)
    response = api.client.get("/v1/events/e-2", headers=api.headers("acme", "analyst"))
    assert response.status_code == 200
    record = response.json()
    assert record == records[2]
    assert (record["seq"], record["prev_hash"]) == (2, records[1]["hash"])
    assert record["hash"] == expected_hash(record)
    missing = api.client.get("/v1/events/nope", headers=api.headers("acme", "analyst"))
    assert missing.status_code == 404


def test_json_lines_export_holds_the_stored_records(api: Api) -> None:
    records = _seed(api)
    response = api.client.get(
        "/v1/events/export",
        params={"format": "jsonl", "source": "console", "order": "asc"},
        headers=api.headers("acme", "auditor"),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    *lines, summary = [orjson.loads(line) for line in response.content.splitlines()]
    assert lines == [r for r in records if r["source"] == "console"]
    assert summary["summary"]["records"] == len(lines)
    assert all(line["hash"] == expected_hash(line) for line in lines)


def test_csv_export_has_a_header_and_one_row_per_record(api: Api) -> None:
    _seed(api)
    response = api.client.get(
        "/v1/events/export",
        params={"format": "csv", "action": "conversation.*"},
        headers=api.headers("acme", "auditor"),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    *rows, summary = list(csv.DictReader(io.StringIO(response.text)))
    assert summary["tenant"] == "#summary"
    assert [row["id"] for row in rows] == ["e-2", "e-1"]
    assert rows[0]["target_id"] == "c-7"
    assert orjson.loads(rows[0]["metadata"]) == {"workspace": "support-emea"}
    assert len(rows[0]["hash"]) == 64


def test_an_export_larger_than_a_page_is_complete(api: Api) -> None:
    headers = api.headers("acme", "ingest")
    for start in range(0, 2500, 500):
        api.client.post(
            "/v1/events",
            json=[audit_event(f"big-{i}") for i in range(start, start + 500)],
            headers=headers,
        )
    api.catch_up()
    response = api.client.get(
        "/v1/events/export",
        params={"source": "console"},
        headers=api.headers("acme", "auditor"),
    )
    seqs = [orjson.loads(line)["seq"] for line in response.content.splitlines()[:-1]]
    assert seqs == list(range(2499, -1, -1))
