"""What an event may hold: every refusal names the event's index and the field at fault."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from audit_core import FieldProblem, InvalidEventError, Limits
from audit_core.schema import normalise_batch
from tests.events import audit_event

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
"""The server clock of these tests; passed in, so nothing depends on today's date."""


def normalise(*events: Any, tenant: str = "acme", limits: Limits | None = None) -> list[Any]:
    return normalise_batch(list(events), tenant, NOW, limits or Limits())


def problems_of(*events: Any, tenant: str = "acme", limits: Limits | None = None) -> list[Any]:
    with pytest.raises(InvalidEventError) as refused:
        normalise(*events, tenant=tenant, limits=limits)
    return refused.value.problems


def only_problem(*events: Any, **kwargs: Any) -> FieldProblem:
    problems = problems_of(*events, **kwargs)
    assert len(problems) == 1, problems
    problem: FieldProblem = problems[0]
    return problem


def nested(levels: int) -> dict[str, Any]:
    """An object ``levels`` objects deep, counting itself."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"inner": value}
    return value


# -- shape ----------------------------------------------------------------------------


def test_a_minimal_event_is_stored_with_every_optional_field_present_as_null() -> None:
    minimal = {
        "id": "evt-1",
        "occurred_at": "2024-05-01T12:00:00Z",
        "actor": {"id": "u-1"},
        "action": "auth.login",
        "outcome": "success",
        "source": "app",
    }
    [content] = normalise(minimal)
    assert content == {
        "id": "evt-1",
        "occurred_at": "2024-05-01T12:00:00.000000Z",
        "actor": {"id": "u-1", "type": "user", "ip": None, "user_agent": None, "session_id": None},
        "action": "auth.login",
        "target": None,
        "outcome": "success",
        "source": "app",
        "request_id": None,
        "metadata": {},
        "changes": {},
    }


def test_an_event_without_an_id_is_given_a_fresh_uuid() -> None:
    first, second = normalise(audit_event(None), audit_event(None))
    assert uuid.UUID(first["id"]) != uuid.UUID(second["id"])


@pytest.mark.parametrize("field", ["colour", "seq", "hash", "prev_hash", "received_at"])
def test_unknown_top_level_fields_are_refused(field: str) -> None:
    problem = only_problem(audit_event(**{field: "x"}))
    assert (problem.index, problem.field) == (0, field)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (audit_event(actor={"id": "u-1", "role": "admin"}), "actor.role"),
        (audit_event(target={"type": "conversation", "id": "c-1", "owner": "u-2"}), "target.owner"),
    ],
)
def test_unknown_nested_fields_are_refused_by_their_dotted_path(
    event: dict[str, Any], field: str
) -> None:
    assert only_problem(event).field == field


def test_each_missing_required_field_is_named() -> None:
    fields = {problem.field for problem in problems_of({"id": "evt-1"})}
    assert fields == {"occurred_at", "actor", "action", "outcome", "source"}


@pytest.mark.parametrize(("field", "value"), [("outcome", "maybe"), ("source", "fax")])
def test_outcome_and_source_take_only_their_listed_values(field: str, value: str) -> None:
    assert only_problem(audit_event(**{field: value})).field == field


# -- occurred_at ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01T07:30:00-04:30", "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01t12:00:00.5z", "2024-05-01T12:00:00.500000Z"),
        ("2024-05-01T12:00:00.123456789Z", "2024-05-01T12:00:00.123456Z"),
    ],
)
def test_occurred_at_is_stored_as_utc_with_microseconds(sent: str, stored: str) -> None:
    [content] = normalise(audit_event(occurred_at=sent))
    assert content["occurred_at"] == stored


@pytest.mark.parametrize(
    "sent",
    [
        "2024-05-01T12:00:00",
        "2024-05-01",
        "2024-05-01 12:00:00Z",
        "2024-05-01T12:00Z",
        "1714564800",
        "2024-05-01T12:00:00+0200",
    ],
)
def test_occurred_at_must_be_rfc_3339_with_an_offset(sent: str) -> None:
    problem = only_problem(audit_event(occurred_at=sent))
    assert (problem.index, problem.field) == (0, "occurred_at")
    assert "RFC 3339" in problem.message


def test_an_impossible_calendar_date_is_refused() -> None:
    problem = only_problem(audit_event(occurred_at="2024-02-30T12:00:00Z"))
    assert problem.field == "occurred_at"


def test_a_timestamp_that_falls_before_year_one_in_utc_is_refused() -> None:
    problem = only_problem(audit_event(occurred_at="0001-01-01T00:30:00+01:00"))
    assert problem.field == "occurred_at"


def test_occurred_at_further_ahead_than_the_allowed_skew_is_refused() -> None:
    ahead = (NOW + timedelta(minutes=6)).isoformat()
    problem = only_problem(audit_event(occurred_at=ahead))
    assert problem.field == "occurred_at"
    assert "ahead of the server clock" in problem.message


def test_occurred_at_slightly_ahead_within_the_skew_is_accepted() -> None:
    ahead = NOW + timedelta(minutes=4)
    [content] = normalise(audit_event(occurred_at=ahead.isoformat()))
    assert content["occurred_at"] == "2026-11-23T10:04:00.000000Z"


def test_the_future_skew_limit_is_configurable() -> None:
    strict = Limits(max_future_skew=timedelta(0))
    one_second_ahead = (NOW + timedelta(seconds=1)).isoformat()
    assert only_problem(audit_event(occurred_at=one_second_ahead), limits=strict).field == (
        "occurred_at"
    )
    assert normalise(audit_event(occurred_at=NOW.isoformat()), limits=strict)


# -- actor, action, ids, tenants --------------------------------------------------------


@pytest.mark.parametrize("ip", ["999.1.1.1", "1.2.3", "example.com", "2001:db8::g", "", "1.2.3.4 "])
def test_an_actor_ip_that_is_not_an_address_is_refused(ip: str) -> None:
    problem = only_problem(audit_event(actor={"id": "u-1", "ip": ip}))
    assert (problem.index, problem.field) == (0, "actor.ip")


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("203.0.113.10", "203.0.113.10")],
)
def test_actor_ips_are_stored_in_canonical_form(sent: str, stored: str) -> None:
    [content] = normalise(audit_event(actor={"id": "u-1", "ip": sent}))
    assert content["actor"]["ip"] == stored


@pytest.mark.parametrize(
    "action", ["login", "Auth.login", "auth..login", "auth.login.", "1auth.login", "auth-x.y"]
)
def test_an_action_must_be_a_lowercase_dotted_verb(action: str) -> None:
    assert only_problem(audit_event(action=action)).field == "action"


@pytest.mark.parametrize("action", ["auth.login", "conversation.assign_agent.v2"])
def test_dotted_lowercase_actions_are_accepted(action: str) -> None:
    [content] = normalise(audit_event(action=action))
    assert content["action"] == action


@pytest.mark.parametrize("event_id", ["-starts-with-dash", "has space", "x" * 129, "é"])
def test_event_ids_outside_the_id_pattern_are_refused(event_id: str) -> None:
    assert only_problem(audit_event(event_id)).field == "id"


@pytest.mark.parametrize("tenant", ["Acme", "-acme", "a" * 64, "ac me", "", "acme\n"])
def test_a_tenant_name_outside_the_pattern_is_refused(tenant: str) -> None:
    problem = only_problem(audit_event(), tenant=tenant)
    assert problem.field == "tenant"
    assert repr(tenant) in problem.message


def test_an_event_naming_another_tenant_is_refused() -> None:
    problem = only_problem(audit_event(tenant="globex"), tenant="acme")
    assert problem.field == "tenant"
    assert "'globex'" in problem.message


def test_an_event_naming_its_own_tenant_is_accepted_and_the_name_is_not_stored_twice() -> None:
    [content] = normalise(audit_event(tenant="acme"), tenant="acme")
    assert "tenant" not in content


# -- metadata and changes ---------------------------------------------------------------


@pytest.mark.parametrize("field", ["metadata", "changes"])
def test_metadata_as_deep_as_the_limit_is_accepted_and_one_level_deeper_is_refused(
    field: str,
) -> None:
    limits = Limits(max_metadata_depth=3)
    [content] = normalise(audit_event(**{field: nested(3)}), limits=limits)
    assert content[field] == nested(3)
    problem = only_problem(audit_event(**{field: nested(4)}), limits=limits)
    assert problem.field == field
    assert "deeper than 3 levels" in problem.message


def test_lists_count_as_levels_of_nesting() -> None:
    limits = Limits(max_metadata_depth=2)
    assert normalise(audit_event(metadata={"tags": ["a", "b"]}), limits=limits)
    problem = only_problem(audit_event(metadata={"tags": [["a"]]}), limits=limits)
    assert problem.field == "metadata"


@pytest.mark.parametrize("field", ["metadata", "changes"])
def test_metadata_larger_than_its_byte_limit_is_refused(field: str) -> None:
    problem = only_problem(audit_event(**{field: {"blob": "x" * (16 * 1024)}}))
    assert (problem.index, problem.field) == (0, field)
    assert "16384 bytes" in problem.message


def test_an_event_larger_than_the_event_limit_is_refused_as_a_whole() -> None:
    limits = Limits(max_event_bytes=2048, max_metadata_bytes=1500)
    big = audit_event(metadata={"a": "x" * 1000}, changes={"b": "y" * 1000})
    problem = only_problem(big, limits=limits)
    assert (problem.index, problem.field) == (0, "")
    assert "2048 bytes" in problem.message


@pytest.mark.parametrize(
    "value", [2**53, -(2**53), [1, {"n": 2**64}], 10**30], ids=["2^53", "-2^53", "nested", "1e30"]
)
def test_integers_beyond_the_javascript_safe_range_are_refused(value: Any) -> None:
    problem = only_problem(audit_event(metadata={"n": value}))
    assert problem.field == "metadata"
    assert "2**53" in problem.message


def test_the_largest_safe_integers_are_accepted() -> None:
    [content] = normalise(audit_event(changes={"max": 2**53 - 1, "min": -(2**53 - 1)}))
    assert content["changes"] == {"max": 2**53 - 1, "min": -(2**53 - 1)}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_refused(value: float) -> None:
    assert only_problem(audit_event(metadata={"x": [value]})).field == "metadata"


@pytest.mark.parametrize(
    "value", [(1, 2), {1, 2}, b"bytes", object()], ids=["tuple", "set", "bytes", "object"]
)
def test_python_values_that_are_not_json_are_refused(value: Any) -> None:
    assert only_problem(audit_event(metadata={"x": value})).field == "metadata"


def test_a_lone_surrogate_in_a_metadata_string_is_refused() -> None:
    assert only_problem(audit_event(metadata={"x": "a\ud800b"})).field == "metadata"


@pytest.mark.parametrize(
    "metadata",
    [{"\ud800": 1}, {"a": {"b\udc00": 1}}, {"a": {1: "x"}}],
    ids=["surrogate-key", "nested-surrogate-key", "integer-key"],
)
def test_metadata_keys_that_are_not_json_strings_are_refused(metadata: dict[Any, Any]) -> None:
    # The problem is reported against the event as a whole (field ""), not a crash.
    problem = only_problem(audit_event(metadata=metadata))
    assert problem.index == 0


def test_unicode_beyond_the_bmp_is_accepted_in_keys_and_values() -> None:
    metadata = {"\U0001f600 mood": "\U0001f680", "name": "Zoë"}
    [content] = normalise(audit_event(metadata=metadata))
    assert content["metadata"] == metadata


# -- batches -----------------------------------------------------------------------------


def test_problems_of_every_event_in_a_batch_are_reported_with_their_index() -> None:
    problems = problems_of(
        audit_event("e-0", action="nope"),
        audit_event("e-1"),
        audit_event("e-2", actor={"id": "u-1", "ip": "300.0.0.1"}),
    )
    assert [(p.index, p.field) for p in problems] == [(0, "action"), (2, "actor.ip")]


def test_problems_read_as_index_and_field_in_the_error_message() -> None:
    with pytest.raises(InvalidEventError, match=r"event 1, field 'actor\.ip'"):
        normalise(audit_event("e-0"), audit_event("e-1", actor={"id": "u", "ip": "nope"}))


def test_a_batch_element_that_is_not_an_object_is_refused_by_index() -> None:
    problems = problems_of(audit_event("e-0"), ["not", "an", "object"])
    assert [(p.index, p.message) for p in problems] == [(1, "an event must be a JSON object")]


def test_an_empty_batch_is_refused() -> None:
    assert "no events" in only_problem().message


def test_a_batch_over_the_limit_is_refused() -> None:
    problem = only_problem(
        *[audit_event(f"e-{i}") for i in range(3)], limits=Limits(max_batch_events=2)
    )
    assert "exceeds the limit of 2" in problem.message


def test_the_same_instant_spelled_two_ways_normalises_to_the_same_content() -> None:
    utc, paris = normalise(
        audit_event(occurred_at="2024-05-01T12:00:00Z"),
        audit_event(occurred_at="2024-05-01T14:00:00.000+02:00"),
    )
    assert utc == paris


# -- text PostgreSQL cannot store --------------------------------------------------------

UNSTORABLE_PLACES: list[tuple[dict[str, Any], str]] = [
    ({"actor": {"id": "u-\x00"}}, "actor.id"),
    ({"actor": {"id": "u", "user_agent": "curl\x00"}}, "actor.user_agent"),
    ({"actor": {"id": "u", "session_id": "\x00"}}, "actor.session_id"),
    ({"target": {"type": "t\x00", "id": "c"}}, "target.type"),
    ({"target": {"type": "t", "id": "c\x00"}}, "target.id"),
    ({"target": {"type": "t", "id": "c", "name": "\x00name"}}, "target.name"),
    ({"request_id": "r\x00"}, "request_id"),
    ({"metadata": {"note": "a\x00b"}}, "metadata.note"),
    ({"metadata": {"tags": ["ok", "\x00"]}}, "metadata.tags.1"),
    ({"changes": {"assignee": {"from": None, "to": "u\x00"}}}, "changes.assignee.to"),
    ({"metadata": {"k\x00ey": 1}}, "metadata.k\\x00ey"),
    ({"metadata": {"note": "lone \ud800 surrogate"}}, "metadata"),
    ({"actor": {"id": "lone \udc00"}}, "actor.id"),
    ({"metadata": {"lone \ud800 key": 1}}, "metadata.lone \\ud800 key"),
]


@pytest.mark.parametrize(("fields", "field"), UNSTORABLE_PLACES)
def test_text_postgresql_cannot_store_is_refused_naming_its_field(
    fields: dict[str, Any], field: str
) -> None:
    problem = only_problem(audit_event(**fields))
    assert (problem.index, problem.field) == (0, field)
    assert any(word in problem.message for word in ("U+0000", "surrogate", "unicode string"))


def test_a_backslash_before_u0000_is_plain_text_and_kept() -> None:
    [content] = normalise(audit_event(metadata={"path": "C:\\u0000\\x"}))
    assert content["metadata"] == {"path": "C:\\u0000\\x"}
