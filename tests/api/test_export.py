"""Exports a spreadsheet cannot be tricked by, that say whether they are whole."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import orjson

from tests.api.conftest import Api
from tests.events import audit_event


def export(api: Api, fmt: str, **params: str) -> bytes:
    response = api.client.get(
        "/v1/events/export",
        params={"format": fmt, **params},
        headers=api.headers("acme", "auditor"),
    )
    assert response.status_code == 200, response.text
    return response.content


FORMULAS = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


def test_csv_cells_that_would_run_as_formulas_are_neutralised(api: Api) -> None:
    events = [
        audit_event(
            f"f-{n}",
            actor={"id": formula, "user_agent": formula, "session_id": formula},
            target={"type": "doc", "id": formula, "name": formula},
            request_id=formula,
        )
        for n, formula in enumerate(FORMULAS)
    ]
    api.client.post("/v1/events", json=events, headers=api.headers("acme", "ingest"))
    api.catch_up()
    *rows, _summary = csv.DictReader(
        io.StringIO(export(api, "csv", order="asc", source="console").decode())
    )
    assert len(rows) == len(FORMULAS)
    for row, formula in zip(rows, FORMULAS, strict=True):
        for column in ("actor_id", "actor_user_agent", "actor_session_id", "target_id",
                       "target_name", "request_id"):  # fmt: skip
            assert row[column] == "'" + formula, column
        assert row["id"].startswith("f-")
    # The exact values stay in the JSON Lines export, which is the one to verify.
    *lines, _ = export(api, "jsonl", order="asc", source="console").splitlines()
    assert [orjson.loads(line)["actor"]["id"] for line in lines] == FORMULAS


def test_a_complete_export_ends_with_its_summary(api: Api) -> None:
    events = [audit_event(f"s-{n}") for n in range(7)]
    api.client.post("/v1/events", json=events, headers=api.headers("acme", "ingest"))
    api.catch_up()
    body = export(api, "jsonl", action="conversation.assign")
    *lines, last = body.splitlines(keepends=True)
    records = [orjson.loads(line) for line in lines]
    summary = orjson.loads(last)["summary"]
    assert summary == {
        "complete": True,
        "records": 7,
        "last_seq": records[-1]["seq"],
        "last_hash": records[-1]["hash"],
        "sha256": hashlib.sha256(b"".join(lines)).hexdigest(),
    }
    text = export(api, "csv", action="conversation.assign").decode()
    head, tail = text[: text.rindex("#summary")], text[text.rindex("#summary") :]
    row = next(csv.reader(io.StringIO(tail)))
    assert row[:3] == ["#summary", "7", str(records[-1]["seq"])]
    assert row[3:] == [records[-1]["hash"], hashlib.sha256(head.encode()).hexdigest()]
    empty = export(api, "jsonl", actor_id="nobody")
    assert orjson.loads(empty)["summary"]["records"] == 0


def test_an_export_that_fails_midway_says_it_is_incomplete(api: Api) -> None:
    ingest = api.headers("acme", "ingest")
    for start in range(0, 1500, 500):
        batch = [audit_event(f"m-{n}") for n in range(start, start + 500)]
        assert api.client.post("/v1/events", json=batch, headers=ingest).status_code == 201
    api.catch_up()
    # The read model still lists seq 100; the ledger lost it: the second page fails.
    api.store.delete_seqs("acme", 100)
    *lines, last = export(api, "jsonl", source="console").splitlines()
    assert len(lines) == 1000
    ending: dict[str, Any] = orjson.loads(last)
    assert "summary" not in ending
    assert ending["error"]["complete"] is False
    assert ending["error"]["records"] == 1000
    assert "incomplete" in ending["error"]["detail"]
    rows = list(csv.reader(io.StringIO(export(api, "csv", source="console").decode())))
    assert len(rows) == 1 + 1000 + 1
    assert rows[-1][:2] == ["#error", "1000"]
    assert not any(row[0] == "#summary" for row in rows)
