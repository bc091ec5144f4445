"""The one-pass decoder of request bodies (msgspec) against the schema of record
(pydantic): whatever the fast path accepts, the schema accepts, with the same content."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from audit_core import InvalidEventError, Limits
from audit_core.schema import NormalisedBatch, normalise_events, normalise_json, parse_json
from tests.events import audit_event

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LIMITS = Limits(max_metadata_depth=4, max_event_bytes=4096, max_metadata_bytes=2048)
TENANT = "acme"


def fast(body: bytes, *, batch: bool) -> NormalisedBatch | None:
    return normalise_json(body, batch=batch, tenant=TENANT, now=NOW, limits=LIMITS)


def slow(body: bytes, *, batch: bool) -> NormalisedBatch | None:
    """What the API does when the fast path declines: parse, then the pydantic schema."""
    try:
        payload = parse_json(body)
        return normalise_events(payload if batch else [payload], TENANT, NOW, LIMITS)
    except (ValueError, InvalidEventError, TypeError):
        return None


def comparable(batch: NormalisedBatch, events: list[Any]) -> bytes:
    """The contents as JSON bytes (so that 1.0 and 1 differ), with the ids the server
    made up for events that sent none replaced by a placeholder."""
    contents = []
    for content, event in zip(batch.contents, events, strict=True):
        if isinstance(event, dict) and event.get("id") is None:
            content = {**content, "id": "made-up"}
        contents.append(content)
    return orjson.dumps([contents, sorted(batch.with_floats)])


def assert_fast_agrees(events: list[Any], *, batch: bool = True) -> None:
    # The standard library's encoder: orjson's refuses integers beyond 64 bits.
    body = json.dumps(events if batch else events[0]).encode()
    decoded = fast(body, batch=batch)
    if decoded is None:
        return  # the API then takes the slow path itself
    validated = slow(body, batch=batch)
    assert validated is not None, f"the fast path accepted what the schema refuses: {body!r}"
    assert comparable(decoded, events) == comparable(validated, events)


tricky_text = st.one_of(
    st.sampled_from(
        [
            "",
            "a",
            "acme",
            "acme\n",
            "\nacme",
            "ACME",
            "auth.login",
            "auth.login\n",
            "auth",
            "auth.Login",
            "user",
            "user\n",
            "evt-1",
            "evt-1\n",
            "evt 1",
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00Z\n",
            "2024-05-01t12:00:00.5+01:00",
            "2024-05-01T12:00:00",
            "2024-02-30T12:00:00Z",
            "٢٠٢٤-05-01T12:00:00Z",
            "203.0.113.7",
            "2001:DB8::1",
            "203.0.113.7\n",
            "x" * 64,
            "x" * 65,
            "x" * 256,
            "x" * 257,
            "\U0001f600",
        ]
    ),
    st.text(max_size=12),
)
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=8,
)
paths = st.sampled_from(
    [
        ("id",),
        ("tenant",),
        ("occurred_at",),
        ("action",),
        ("outcome",),
        ("source",),
        ("request_id",),
        ("metadata",),
        ("changes",),
        ("target",),
        ("actor",),
        ("extra",),
        ("actor", "id"),
        ("actor", "type"),
        ("actor", "ip"),
        ("actor", "user_agent"),
        ("actor", "session_id"),
        ("actor", "extra"),
        ("target", "type"),
        ("target", "id"),
        ("target", "name"),
        ("target", "extra"),
        ("metadata", "note"),
    ]
)
_DELETE = object()


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with a few fields set to odd values, or removed."""
    event = audit_event(draw(st.sampled_from(["evt-1", None])))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        path = draw(paths)
        value = draw(st.just(_DELETE) | json_value)
        parent: Any = event
        for part in path[:-1]:
            if not isinstance(parent.get(part), dict):
                parent[part] = {}
            parent = parent[part]
        if value is _DELETE:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    return event


@given(st.lists(mutated_events(), min_size=1, max_size=3))
@example([audit_event(tenant="acme\n")])
@example([audit_event(action="auth.login\n")])
@example([audit_event("evt-1\n")])
@example([audit_event(occurred_at="2024-05-01T12:00:00Z\n")])
@example([audit_event(actor={"id": "u-1", "type": "user\n"})])
@example([audit_event(tenant="other")])
@example([audit_event(metadata={"n": 2**53})])
@example([audit_event(metadata={"n": 1.0, "deep": {"a": {"b": {"c": {"d": 1}}}}})])
@example([audit_event(metadata={"s": "x" * 3000})])
def test_what_the_fast_path_accepts_the_schema_accepts_with_the_same_content(
    events: list[dict[str, Any]],
) -> None:
    assert_fast_agrees(events)
    assert_fast_agrees(events[:1], batch=False)


@pytest.mark.parametrize(
    "event",
    [
        audit_event(),
        audit_event(None),
        audit_event(tenant=TENANT, target=None, metadata={"ratio": 0.5, "n": [1, None, True]}),
        audit_event(occurred_at="2024-05-01T13:00:00.5+01:00", actor={"id": "u", "ip": "::1"}),
    ],
)
def test_valid_events_take_the_fast_path(event: dict[str, Any]) -> None:
    body = orjson.dumps([event])
    assert fast(body, batch=True) is not None
    assert_fast_agrees([event])


@pytest.mark.parametrize(
    "body",
    [
        b'[{"id": "e", "metadata": {"n": 1e400}}]',
        b"[" + orjson.dumps(audit_event())[:-1] + b', "metadata": {"n": 1e400}}]',
        b"[" + orjson.dumps(audit_event()) + b"] trailing",
        b"[" + orjson.dumps(audit_event()).replace(b"u-1001", b"u-\xff") + b"]",
        b"[" + orjson.dumps(audit_event()).replace(b"u-1001", b"\\ud800") + b"]",
        b"[]",
        b"[" + b",".join([orjson.dumps(audit_event(f"e-{n}")) for n in range(1001)]) + b"]",
    ],
)
def test_bodies_the_schema_refuses_are_left_to_it(body: bytes) -> None:
    assert fast(body, batch=True) is None
    assert slow(body, batch=True) is None


def with_duplicate(body: bytes, key: bytes, value: bytes, spelled: bytes | None = None) -> bytes:
    """``body`` with a member ``"key": value`` (the key spelled ``spelled``) added just
    before the first member named ``key``, so to the same object."""
    at = body.index(b'"' + key + b'":')
    return body[:at] + b'"' + (spelled or key) + b'":' + value + b"," + body[at:]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"action", b'"auth.login"'),
        (b"outcome", b'"failure"'),
        (b"id", b'"u-1001"'),  # actor.id: the first object holding "id" is the event's
        (b"workspace", b'"other"'),
        (b"workspace", b"1"),
        (b"metadata", b"{}"),
        (b"target", b"null"),
        (b"ip", b"null"),
    ],
)
def test_a_key_given_twice_in_any_object_is_refused_by_both_paths(key: bytes, value: bytes) -> None:
    event = audit_event("evt-1", metadata={"workspace": "support-emea"})
    for body, batch in (
        (orjson.dumps(event), False),
        (orjson.dumps([audit_event("e0"), event]), True),
    ):
        doubled = with_duplicate(body, key, value)
        assert fast(doubled, batch=batch) is None
        assert slow(doubled, batch=batch) is None
        with pytest.raises(ValueError, match="duplicate key"):
            parse_json(doubled)


@st.composite
def bodies_with_a_duplicate(draw: st.DrawFn) -> bytes:
    """A valid batch's JSON with one member of one of its objects written twice; the
    repeated key may be spelled with escapes and the value may hold escaped quotes."""
    events = draw(st.lists(mutated_events(), min_size=1, max_size=3))
    body = json.dumps(events, ensure_ascii=draw(st.booleans())).encode()
    keys = [k.encode() for k in ("action", "outcome", "id", "actor", "metadata", "note", "type")]
    present = [k for k in keys if b'"' + k + b'":' in body]
    key = draw(st.sampled_from(present)) if present else b"occurred_at"
    spelled = draw(st.sampled_from([key, key.replace(b"t", b"\\u0074", 1)]))
    value = draw(st.sampled_from([b"null", b'"x"', b'"say \\"hi\\""', b'"\\u0022"', b"{}"]))
    return with_duplicate(body, key, value, spelled)


@given(bodies_with_a_duplicate())
def test_the_fast_path_never_accepts_a_body_holding_a_key_twice(body: bytes) -> None:
    assert slow(body, batch=True) is None
    assert fast(body, batch=True) is None


@pytest.mark.parametrize(
    "body",
    [
        b"[" + orjson.dumps(audit_event(metadata={"note": "\x00"})) + b"]",
        b"[" + orjson.dumps(audit_event(actor={"id": "u\x00"})) + b"]",
        b"["
        + orjson.dumps(audit_event())[:-1]
        + b', "changes": {"a": '
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}}]",
    ],
)
def test_nul_and_deep_nesting_are_left_to_the_schema_which_refuses_them(body: bytes) -> None:
    assert fast(body, batch=True) is None
    assert slow(body, batch=True) is None
