"""Every spelling of the audit record's fields agrees with the one definition in
``audit_core.record``: a field added there and forgotten elsewhere fails here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_type_hints

import msgspec

from api.routers.events import CSV_COLUMNS
from api.schemas import AuditRecord
from audit_core import Limits, schema
from audit_core.readmodel import rows as readmodel_rows
from audit_core.record import (
    ACTOR_PARTS,
    CLIENT_FIELDS,
    RECORD_FIELDS,
    SERVER_FIELDS,
    TARGET_PARTS,
    flat_columns,
    flat_values,
)
from tests.events import audit_event

NAMES = [field.name for field in RECORD_FIELDS]


def _struct_fields(struct: type[msgspec.Struct]) -> set[str]:
    return set(struct.__struct_fields__)


def test_the_input_schema_has_the_client_fields_and_nothing_else() -> None:
    # "tenant" may be repeated by a client, who may not name another.
    assert set(get_type_hints(schema.AuditEventIn)) == {*CLIENT_FIELDS, "tenant"}
    assert set(get_type_hints(schema.ActorIn)) == set(ACTOR_PARTS)
    assert set(get_type_hints(schema.TargetIn)) == set(TARGET_PARTS)


def test_the_fast_decoder_has_the_same_fields_as_the_input_schema() -> None:
    assert _struct_fields(schema._Event) == set(get_type_hints(schema.AuditEventIn))
    assert _struct_fields(schema._Actor) == set(ACTOR_PARTS)
    assert _struct_fields(schema._Target) == set(TARGET_PARTS)


def test_the_api_record_has_every_field() -> None:
    assert list(AuditRecord.model_fields) == [
        "id", "tenant", "seq", "occurred_at", "received_at", "actor", "action", "target",
        "outcome", "source", "request_id", "metadata", "changes", "prev_hash", "hash",
    ]  # fmt: skip
    assert set(AuditRecord.model_fields) == set(NAMES)


def test_the_read_model_decodes_only_fields_a_record_has() -> None:
    assert _struct_fields(readmodel_rows._Indexed) <= set(NAMES)
    assert _struct_fields(readmodel_rows._Actor) <= set(ACTOR_PARTS)
    assert _struct_fields(readmodel_rows._Target) <= set(TARGET_PARTS)


def test_the_csv_columns_are_the_record_flattened() -> None:
    assert flat_columns() == CSV_COLUMNS
    assert CSV_COLUMNS[:6] == ("tenant", "seq", "id", "occurred_at", "received_at", "actor_id")


def test_both_decoding_paths_build_the_same_content_with_every_client_field() -> None:
    now = datetime.now(UTC)
    event: dict[str, Any] = audit_event("e-1", target=None, request_id="r-1")
    slow = schema.normalise_events([event], "acme", now, Limits()).contents[0]
    fast = schema.normalise_json(
        msgspec.json.encode(event), batch=False, tenant="acme", now=now, limits=Limits()
    )
    assert fast is not None
    assert fast.contents[0] == slow
    assert list(slow) == list(CLIENT_FIELDS)
    assert list(slow["actor"]) == list(ACTOR_PARTS)
    assert SERVER_FIELDS.isdisjoint(slow)
    record = {**slow, "tenant": "acme", "seq": 0, "received_at": "x", "prev_hash": "p", "hash": "h"}
    assert len(flat_values(record)) == len(flat_columns())
