"""Audit events as a console or app sends them, and an independent check of a chain."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

PAST = "2024-05-01T12:00:00Z"
"""An instant safely behind any server clock, so no test depends on the date it runs."""

GENESIS = "0" * 64


def audit_event(event_id: str | None = "evt-1", **fields: Any) -> dict[str, Any]:
    """A valid event; ``fields`` replace top-level fields (``None`` id: let the server pick)."""
    event: dict[str, Any] = {
        "occurred_at": PAST,
        "actor": {"id": "u-1001", "type": "user", "ip": "203.0.113.10"},
        "action": "conversation.assign",
        "target": {"type": "conversation", "id": "c-42", "name": "Refund request"},
        "outcome": "success",
        "source": "console",
        "metadata": {"workspace": "support-emea"},
    }
    if event_id is not None:
        event["id"] = event_id
    event.update(fields)
    return event


def audit_events(count: int, prefix: str = "evt", **fields: Any) -> list[dict[str, Any]]:
    return [audit_event(f"{prefix}-{index}", **fields) for index in range(count)]


def expected_hash(record: dict[str, Any]) -> str:
    """The record's hash computed here from RFC 8785, not with the code under test."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def assert_valid_chain(records: list[dict[str, Any]], tenant: str) -> None:
    """Seqs 0.. without gaps, each prev_hash the hash before it, each hash recomputable."""
    assert [record["seq"] for record in records] == list(range(len(records)))
    prev_hash = GENESIS
    for record in records:
        assert record["tenant"] == tenant
        assert record["prev_hash"] == prev_hash, f"seq {record['seq']} does not link"
        assert record["hash"] == expected_hash(record), f"seq {record['seq']} hash differs"
        prev_hash = record["hash"]
