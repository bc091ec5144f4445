"""The GELF message of an audit record: what a security analyst sees in Graylog."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core.graylog import GraylogConfigError, MessageBuilder, MessageOptions
from audit_core.graylog.gelf import MAX_FIELD_NAME, meta_fields
from tests.events import audit_event
from tests.stores import SQLiteStore

FIELD_NAME = re.compile(r"^[\w.-]+$")
KEY = b"k" * 32


def record_of(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    store = SQLiteStore(tmp_path / "gelf.db")
    try:
        return store.open_ledger().record("acme", [audit_event("evt-1", **fields)])[0]
    finally:
        store.close()


def test_a_message_carries_the_record_and_ties_it_to_the_ledger(tmp_path: Path) -> None:
    record = record_of(
        tmp_path,
        occurred_at="2024-05-01T12:00:00.250000Z",
        request_id="req-9",
        metadata={"workspace": "support-emea", "ticket": {"priority": 2, "vip": True}},
    )
    message = MessageBuilder(MessageOptions(host="vigil-1")).message(record)

    assert message["version"] == "1.1"
    assert message["host"] == "vigil-1"
    assert message["short_message"] == (
        'user u-1001 did conversation.assign to conversation c-42 "Refund request": success'
    )
    expected_time = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert message["timestamp"] == expected_time
    assert message["level"] == 6
    # The full message is the canonical record: its SHA-256 is the ledger's hash.
    assert hashlib.sha256(message["full_message"].encode()).hexdigest() == record["hash"]
    assert orjson.loads(message["full_message"]) == {k: v for k, v in record.items() if k != "hash"}
    assert {key: message[key] for key in message if key.startswith("_")} == {
        "_event_id": "evt-1",
        "_tenant": "acme",
        "_seq": 0,
        "_hash": record["hash"],
        "_prev_hash": "0" * 64,
        "_actor_id": "u-1001",
        "_actor_type": "user",
        "_actor_ip": "203.0.113.10",
        "_action": "conversation.assign",
        "_target_type": "conversation",
        "_target_id": "c-42",
        "_target_name": "Refund request",
        "_outcome": "success",
        "_source": "console",
        "_occurred_at": "2024-05-01T12:00:00.250000Z",
        "_received_at": record["received_at"],
        "_request_id": "req-9",
        "_meta_workspace": "support-emea",
        "_meta_ticket_priority": 2,
        "_meta_ticket_vip": "true",
    }


@pytest.mark.parametrize(("outcome", "level"), [("success", 6), ("denied", 4), ("failure", 3)])
def test_denied_and_failed_actions_are_louder_than_successes(
    tmp_path: Path, outcome: str, level: int
) -> None:
    record = record_of(tmp_path, outcome=outcome, target=None)
    message = MessageBuilder(MessageOptions(host="h")).message(record)
    assert message["level"] == level
    assert message["short_message"] == f"user u-1001 did conversation.assign: {outcome}"
    assert not any(key.startswith("_target") for key in message)


def test_every_field_name_is_one_graylog_keeps_and_never_id() -> None:
    metadata = {
        "id": 1,
        "user id": "a",
        "ünïcode": "b",
        "dotted.key": "c",
        "": "empty key",
        "x" * 300: "long",
        "deep": {"er": {"est": [1, {"in": "list"}]}},
        "nothing": None,
    }
    fields, omitted = meta_fields(metadata, set(), 100)
    assert omitted == 0
    for name in fields:
        assert FIELD_NAME.fullmatch(name), name
        assert name.isascii(), name
        assert "." not in name  # Graylog would turn it into "_" behind our back
        assert len(name) <= MAX_FIELD_NAME
        assert name != "_id"
    assert fields["_meta_id"] == 1
    assert fields["_meta_user_id"] == "a"
    assert fields["_meta_deep_er_est"] == '[1,{"in":"list"}]'
    assert "empty key" in fields.values()
    assert "long" in fields.values()
    assert None not in fields.values()


def test_clashing_names_are_told_apart_the_same_way_whatever_the_key_order() -> None:
    one = {"a_b": 1, "a": {"b": 2}, "a b": 3}
    other = {"a b": 3, "a": {"b": 2}, "a_b": 1}
    fields, _ = meta_fields(one, set(), 100)
    assert fields == meta_fields(other, set(), 100)[0]
    assert len(fields) == 3
    assert sorted(fields.values()) == [1, 2, 3]
    # The first path in order keeps the plain name; the others get a digest of theirs.
    assert fields["_meta_a_b"] == 2
    assert all(
        re.fullmatch(r"_meta_a_b_[0-9a-f]{8}", name) for name in fields if name != "_meta_a_b"
    )


def test_over_long_names_are_shortened_with_a_digest_that_keeps_them_apart() -> None:
    stem = "k" * 200
    fields, _ = meta_fields({stem + "1": "one", stem + "2": "two"}, set(), 100)
    assert len(fields) == 2
    assert all(len(name) == MAX_FIELD_NAME for name in fields)
    assert sorted(fields.values()) == ["one", "two"]


def test_metadata_beyond_the_field_budget_stays_in_the_full_message(tmp_path: Path) -> None:
    record = record_of(tmp_path, metadata={f"k{index:03}": index for index in range(30)})
    message = MessageBuilder(MessageOptions(host="h", max_meta_fields=10)).message(record)
    assert sorted(key for key in message if key.startswith("_meta_k")) == [
        f"_meta_k{index:03}" for index in range(10)
    ]
    assert message["_meta_omitted"] == 20
    assert orjson.loads(message["full_message"])["metadata"]["k029"] == 29


def test_sensitive_metadata_is_sent_as_its_hmac_and_never_in_clear(tmp_path: Path) -> None:
    record = record_of(
        tmp_path,
        metadata={
            "Email": "alice@example.org",
            "customer": {"email": "bob@example.org", "phone": "+33 6 12 34 56 78"},
            "team": [{"email": "carol@example.org"}, {"email": "carl@example.org"}],
            "workspace": "support-emea",
        },
        changes={"email": {"from": "dan@example.org", "to": "erin@example.org"}},
    )
    options = MessageOptions(host="h", hmac_key=KEY, hmac_fields=("email", "customer.phone"))
    packed = MessageBuilder(options).pack(record)
    for secret in ("alice@", "bob@", "+33 6", "carol@", "carl@", "dan@", "erin@"):
        assert secret.encode() not in packed
    message = orjson.loads(packed)

    def mac(value: str) -> str:
        return hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()

    # The security team finds a value by equality with its HMAC.
    assert message["_meta_Email"] == mac("alice@example.org")
    assert message["_meta_customer_email"] == mac("bob@example.org")
    assert message["_meta_customer_phone"] == mac("+33 6 12 34 56 78")
    assert message["_meta_workspace"] == "support-emea"
    assert mac("carol@example.org") in message["_meta_team"]
    assert message["_hmac_paths"] == (
        "metadata.Email,metadata.customer.email,metadata.customer.phone,"
        "metadata.team.email,changes.email"
    )
    # The full message says so: it no longer hashes to the record's hash.
    assert hashlib.sha256(message["full_message"].encode()).hexdigest() != record["hash"]


def test_sensitive_fields_without_a_key_are_a_configuration_error() -> None:
    with pytest.raises(GraylogConfigError, match="VIGIL_GRAYLOG_HMAC_KEY is not set"):
        MessageOptions(host="h", hmac_fields=("email",))


def test_the_full_message_is_canonical_even_with_floats(tmp_path: Path) -> None:
    # RFC 8785 spells 1.0 as 1 and 1e21 as 1e+21; the hash is over that spelling.
    record = record_of(
        tmp_path,
        metadata={"ratio": 1.0, "big": 1e21, "nested": [{"small": 0.000001}]},
        changes={"score": {"from": 0.5, "to": 2.0}},
    )
    message = MessageBuilder(MessageOptions(host="h")).message(record)
    assert hashlib.sha256(message["full_message"].encode()).hexdigest() == record["hash"]
    assert '"big":1e+21,' in message["full_message"]
    assert '"ratio":1}' in message["full_message"]
    assert message["_meta_ratio"] == 1.0
