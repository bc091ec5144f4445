"""What an audit event may hold, with its limits, and how it is normalised before hashing.

The fields follow PCI DSS 10.2.2: who (``actor``), what (``action``), on what
(``target``), when (``occurred_at``, and the server's ``received_at``), result
(``outcome``) and origin (``source``), plus bounded ``metadata`` and ``changes``.
"""

from __future__ import annotations

import math
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple, NotRequired

import jiter
import msgspec
import orjson
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from audit_core.exceptions import FieldProblem, InvalidEventError
from audit_core.record import client_content

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$"
ACTION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
ACTOR_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
RFC3339_PATTERN = (
    r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"  # year 0001 to 9999
    r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""An RFC 3339 timestamp with offset, its fields in range (the OpenAPI document states
it; a day the month lacks, such as 02-30, is refused as well)."""
_RFC3339 = re.compile(RFC3339_PATTERN)
_TENANT = re.compile(TENANT_PATTERN)
STORABLE_TEXT_PATTERN = r"^[^\x00]*$"
"""What every string of an event matches (stated in the OpenAPI document): PostgreSQL's
text and JSON types cannot hold U+0000, so a NUL is refused on the way in rather than
recorded and then stopping every consumer that stores it."""
MAX_SAFE_INTEGER = 2**53 - 1
"""Integers beyond this lose precision in JavaScript and are outside RFC 8785's domain."""

Outcome = Literal["success", "failure", "denied"]
Source = Literal["console", "app", "api", "system"]
_STORABLE = Field(json_schema_extra={"pattern": STORABLE_TEXT_PATTERN})
"""States the rule in the schema; ``_checked`` enforces it, naming the field."""
ShortText = Annotated[str, Field(min_length=1, max_length=256), _STORABLE]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one event may hold. Configurable through ``VIGIL_*`` settings."""

    max_event_bytes: int = 32 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8
    max_batch_events: int = 1000
    max_future_skew: timedelta = timedelta(minutes=5)


def _canonical_ip(value: str | None) -> str | None:
    if value is None:
        return None
    # inet_pton/inet_ntop both check and canonicalise (RFC 5952 for IPv6) in C,
    # an order of magnitude faster than the ipaddress module.
    family = socket.AF_INET6 if ":" in value else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, value))
    except (OSError, ValueError):
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


def _rfc3339(value: str) -> str:
    if not _RFC3339.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an RFC 3339 timestamp with offset "
            "(e.g. 2026-11-23T10:15:00Z or 2026-11-23T11:15:00+01:00)"
        )
    return value


# The input schema is TypedDicts rather than models: pydantic validates them into
# plain dicts three times faster than building and dumping model instances, and the
# ledger wants dicts. Optional fields are filled in by normalise().
_FORBID_EXTRA = ConfigDict(extra="forbid")


_IpText = Annotated[
    str, Field(json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
]


class ActorIn(TypedDict):
    """Who acted: a user, a service account or the system itself."""

    __pydantic_config__ = _FORBID_EXTRA  # type: ignore[misc]
    id: ShortText
    type: NotRequired[Annotated[str, Field(pattern=ACTOR_TYPE_PATTERN)]]
    ip: NotRequired[
        Annotated[
            _IpText | None,
            AfterValidator(_canonical_ip),
            Field(description="IPv4 or IPv6 address of the client."),
        ]
    ]
    user_agent: NotRequired[Annotated[str, Field(max_length=1024), _STORABLE] | None]
    session_id: NotRequired[ShortText | None]


class TargetIn(TypedDict):
    """What was acted on."""

    __pydantic_config__ = _FORBID_EXTRA  # type: ignore[misc]
    type: Annotated[str, Field(min_length=1, max_length=64), _STORABLE]
    id: ShortText
    name: NotRequired[Annotated[str, Field(max_length=512), _STORABLE] | None]


class AuditEventIn(TypedDict):
    """An audit event as a console or app sends it."""

    __pydantic_config__ = _FORBID_EXTRA  # type: ignore[misc]
    id: NotRequired[
        Annotated[
            str | None,
            Field(
                pattern=EVENT_ID_PATTERN,
                description="Client-chosen id; sending the same id again with the same "
                "content returns the original record instead of recording twice.",
            ),
        ]
    ]
    tenant: NotRequired[Annotated[str, Field(pattern=TENANT_PATTERN)] | None]
    occurred_at: Annotated[
        str,
        AfterValidator(_rfc3339),
        Field(
            description="RFC 3339 timestamp with offset, client clock; a real date, at "
            "most VIGIL_MAX_FUTURE_SKEW_SECONDS ahead of the server clock.",
            json_schema_extra={"pattern": RFC3339_PATTERN},
        ),
    ]
    actor: ActorIn
    action: Annotated[
        str,
        Field(
            max_length=128,
            pattern=ACTION_PATTERN,
            description="Dotted verb, e.g. conversation.assign",
        ),
    ]
    target: NotRequired[TargetIn | None]
    outcome: Outcome
    source: Source
    request_id: NotRequired[ShortText | None]
    # JSON-ness and bounds of these two are checked by _holds_float: pydantic's
    # recursive JsonValue would double the cost of validating an event.
    metadata: NotRequired[
        Annotated[
            dict[str, Any],
            Field(description="Free-form JSON object, bounded in size and depth."),
        ]
    ]
    changes: NotRequired[
        Annotated[
            dict[str, Any],
            Field(
                description='What changed, e.g. {"assignee": {"from": null, "to": "u-7"}}; '
                "bounded like metadata."
            ),
        ]
    ]


EVENT_ADAPTER: TypeAdapter[AuditEventIn] = TypeAdapter(AuditEventIn)


def parse_json(data: bytes | str) -> Any:
    """JSON read as the schema reads it: integers of any size kept exact and NaN and
    infinities parsed, so that the bounds checks refuse them by name. (orjson rounds
    an integer beyond 64 bits to a float, which would then be accepted.)

    Raises ``ValueError`` saying where the text is not I-JSON (RFC 7493): malformed,
    nested beyond the parser's limit, a lone surrogate, or an object holding a key
    twice, where parsers disagree on which value counts (and the hash would cover
    only the one this parser kept).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return jiter.from_json(data, catch_duplicate_keys=True)


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp already checked against its pattern."""
    return datetime.fromisoformat(value.upper())


def format_timestamp(moment: datetime) -> str:
    """UTC, microseconds, ``Z``: one spelling, so equal instants hash equally."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def is_tenant_name(name: object) -> bool:
    """Whether ``name`` is a tenant name: the whole of it matches ``TENANT_PATTERN``."""
    return isinstance(name, str) and _TENANT.fullmatch(name) is not None


def check_tenant(tenant: str) -> str:
    if not is_tenant_name(tenant):
        raise InvalidEventError(
            [FieldProblem(0, "tenant", f"{tenant!r} must match {TENANT_PATTERN}")]
        )
    return tenant


_CONTAINERS = (dict, list)


class _NotBoundedJsonError(ValueError):
    pass


def _holds_float(value: Any, depth: int, limits: Limits) -> bool:
    """Whether a metadata value holds a float; raises ``_NotBoundedJsonError`` saying why
    it is not bounded JSON. One walk does both, so hashing need not walk it again."""
    if depth > limits.max_metadata_depth:
        raise _NotBoundedJsonError(f"nested deeper than {limits.max_metadata_depth} levels")
    floats = False
    # Non-string keys need no check here: orjson refuses them when sizing the event.
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is str:
            if not item.isascii() and _has_lone_surrogate(item):
                raise _NotBoundedJsonError(
                    "string holds a lone UTF-16 surrogate, which is not valid Unicode"
                )
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise _NotBoundedJsonError(
                    f"integer {item} is beyond ±(2**53 - 1); send it as a string"
                )
        elif kind in _CONTAINERS:
            floats = _holds_float(item, depth + 1, limits) or floats
        elif kind is float:
            if not math.isfinite(item):
                raise _NotBoundedJsonError("NaN and infinity are not JSON numbers")
            floats = True
        elif item is not None and kind is not bool:
            raise _NotBoundedJsonError(f"{kind.__name__} is not a JSON value")
    return floats


def _has_lone_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def _storage_problem(text: str) -> str | None:
    """Why PostgreSQL could not store ``text``, or None."""
    if "\x00" in text:
        return "holds U+0000 (NUL), which cannot be stored; remove it or escape it"
    if not text.isascii() and _has_lone_surrogate(text):
        return "holds a lone UTF-16 surrogate, which is not valid Unicode"
    return None


def _printable(key: str) -> str:
    return key.encode("unicode_escape").decode("ascii") if not key.isprintable() else key


def unstorable_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """The dotted path of the first string or object key in ``value`` that PostgreSQL
    cannot store, and why; None if there is none."""
    if type(value) is str:
        problem = _storage_problem(value)
        return None if problem is None else (path, problem)
    if type(value) is dict:
        for key, item in value.items():
            where = f"{path}.{_printable(str(key))}" if path else _printable(str(key))
            problem = _storage_problem(key) if type(key) is str else None
            found = (where, f"key {problem}") if problem else unstorable_text(item, where)
            if found is not None:
                return found
    elif type(value) is list:
        for number, item in enumerate(value):
            found = unstorable_text(item, f"{path}.{number}" if path else str(number))
            if found is not None:
                return found
    return None


def _is_stored_spelling(stamp: str) -> bool:
    """Already UTC with microseconds and ``Z``, as most clients send it."""
    return len(stamp) == 27 and stamp[26] == "Z" and stamp[10] == "T" and stamp[19] == "."


def normalise(
    raw: Mapping[str, Any], index: int, tenant: str, now: datetime, limits: Limits
) -> tuple[dict[str, Any], bool]:
    """Validate one incoming event; return its content as it will be hashed, and
    whether that holds a float (which canonical JSON spells its own way)."""
    try:
        event = EVENT_ADAPTER.validate_python(raw)
    except ValidationError as error:
        raise InvalidEventError(
            [
                FieldProblem(
                    index,
                    ".".join(str(part) for part in issue["loc"]),
                    issue["msg"].removeprefix("Value error, "),
                )
                for issue in error.errors(include_url=False)
            ]
        ) from None
    actor = event["actor"]
    target = event.get("target")
    content = client_content(
        event.get("id") or str(uuid.uuid4()),
        event["occurred_at"],
        (
            actor["id"],
            actor.get("type", "user"),
            actor.get("ip"),
            actor.get("user_agent"),
            actor.get("session_id"),
        ),
        event["action"],
        None if target is None else (target["type"], target["id"], target.get("name")),
        event["outcome"],
        event["source"],
        event.get("request_id"),
        event.get("metadata", {}),
        event.get("changes", {}),
    )
    return content, _checked(content, event.get("tenant"), index, tenant, now, limits)


def _checked(
    content: dict[str, Any],
    claimed_tenant: str | None,
    index: int,
    tenant: str,
    now: datetime,
    limits: Limits,
    *,
    may_hold_nul: bool = True,
) -> bool:
    """The checks beyond the schema, of an event's content (whose ``occurred_at`` it
    normalises); returns whether the content holds a float. ``may_hold_nul=False``
    skips the search for NUL, for content decoded from JSON without a backslash."""
    if claimed_tenant is not None and claimed_tenant != tenant:
        raise InvalidEventError(
            [FieldProblem(index, "tenant", f"{claimed_tenant!r} differs from {tenant!r}")]
        )
    stamp = content["occurred_at"]
    try:
        occurred_at = parse_timestamp(stamp)
        if not _is_stored_spelling(stamp):
            content["occurred_at"] = format_timestamp(occurred_at)
    except (ValueError, OverflowError) as error:
        raise InvalidEventError(
            [FieldProblem(index, "occurred_at", f"{stamp!r} is not a valid date: {error}")]
        ) from None
    if occurred_at > now + limits.max_future_skew:
        raise InvalidEventError(
            [
                FieldProblem(
                    index,
                    "occurred_at",
                    f"{stamp} is more than {limits.max_future_skew} ahead of the server clock",
                )
            ]
        )
    floats = False
    for field in ("metadata", "changes"):
        try:
            floats = _holds_float(content[field], 1, limits) or floats
        except _NotBoundedJsonError as problem:
            raise InvalidEventError([FieldProblem(index, field, str(problem))]) from None
    try:
        encoded = orjson.dumps(content)
    except orjson.JSONEncodeError as error:
        # A lone surrogate in a str made in Python (a JSON body cannot carry one).
        found = unstorable_text(content)
        raise InvalidEventError(
            [
                FieldProblem(index, *found)
                if found
                else FieldProblem(index, "", f"not JSON: {error}")
            ]
        ) from None
    # orjson spells NUL only as \u0000; a match may also be an escaped backslash
    # followed by "u0000", which the walk then finds to be harmless.
    if may_hold_nul and b"\\u0000" in encoded and (found := unstorable_text(content)) is not None:
        raise InvalidEventError([FieldProblem(index, *found)])
    size = len(encoded)
    if size > limits.max_event_bytes:
        raise InvalidEventError(
            [FieldProblem(index, "", f"event is larger than {limits.max_event_bytes} bytes")]
        )
    # Only an event larger than the metadata bound can hold metadata beyond it.
    if size > limits.max_metadata_bytes:
        for field in ("metadata", "changes"):
            if len(orjson.dumps(content[field])) > limits.max_metadata_bytes:
                raise InvalidEventError(
                    [
                        FieldProblem(
                            index, field, f"larger than {limits.max_metadata_bytes} bytes as JSON"
                        )
                    ]
                )
    return floats


class NormalisedBatch(NamedTuple):
    contents: list[dict[str, Any]]
    with_floats: frozenset[int]
    """Indexes of the contents holding a float."""


def normalise_events(
    events: Sequence[Mapping[str, Any]],
    tenant: str,
    now: datetime,
    limits: Limits,
) -> NormalisedBatch:
    """Validate a whole batch, collecting every event's problem before refusing it."""
    check_tenant(tenant)
    if not events:
        raise InvalidEventError([FieldProblem(0, "", "the batch holds no events")])
    if len(events) > limits.max_batch_events:
        raise InvalidEventError(
            [
                FieldProblem(
                    0,
                    "",
                    f"batch of {len(events)} events exceeds the limit of {limits.max_batch_events}",
                )
            ]
        )
    contents: list[dict[str, Any]] = []
    with_floats: set[int] = set()
    problems: list[FieldProblem] = []
    for index, raw in enumerate(events):
        if not isinstance(raw, Mapping):
            problems.append(FieldProblem(index, "", "an event must be a JSON object"))
            continue
        try:
            content, floats = normalise(raw, index, tenant, now, limits)
        except InvalidEventError as error:
            problems.extend(error.problems)
            continue
        if floats:
            with_floats.add(index)
        contents.append(content)
    if problems:
        raise InvalidEventError(problems)
    return NormalisedBatch(contents, frozenset(with_floats))


def normalise_batch(
    events: Sequence[Mapping[str, Any]], tenant: str, now: datetime, limits: Limits
) -> list[dict[str, Any]]:
    """The contents of a valid batch, as ``normalise_events`` makes them."""
    return normalise_events(events, tenant, now, limits).contents


# -- the same schema, decoded by msgspec ---------------------------------------------------
# The TypedDicts above are the schema of record (the OpenAPI document, and the messages
# that name every problem). These Structs, with the pattern checks of
# _content_of_decoded, decode and check a valid body in a third less time than pydantic.
# Anything they refuse goes to the pydantic path, which says why, so they need only
# accept nothing that path refuses and decode to the same values; the tests hold them
# to that.

_Short = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# Optional fields default to UNSET, which msgspec leaves out when it encodes, so that
# _holds_no_duplicate_keys can compare the body with what was decoded from it.
_Unset = msgspec.UnsetType
_UNSET = msgspec.UNSET


class _Actor(msgspec.Struct, forbid_unknown_fields=True):
    id: _Short
    type: str | _Unset = _UNSET
    ip: str | _Unset | None = _UNSET
    user_agent: Annotated[str, msgspec.Meta(max_length=1024)] | _Unset | None = _UNSET
    session_id: _Short | _Unset | None = _UNSET


class _Target(msgspec.Struct, forbid_unknown_fields=True):
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    id: _Short
    name: Annotated[str, msgspec.Meta(max_length=512)] | _Unset | None = _UNSET


class _Event(msgspec.Struct, forbid_unknown_fields=True):
    occurred_at: str
    actor: _Actor
    action: Annotated[str, msgspec.Meta(max_length=128)]
    outcome: Outcome
    source: Source
    id: str | _Unset | None = _UNSET
    tenant: str | _Unset | None = _UNSET
    target: _Target | _Unset | None = _UNSET
    request_id: _Short | _Unset | None = _UNSET
    metadata: dict[str, Any] | _Unset = _UNSET
    changes: dict[str, Any] | _Unset = _UNSET


# Checked here rather than by msgspec.Meta(pattern=...), which cost twice as much.
# fullmatch: re.match with "$" would accept a trailing newline.
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_ACTION = re.compile(ACTION_PATTERN)
_ACTOR_TYPE = re.compile(ACTOR_TYPE_PATTERN)
_EVENT_DECODER = msgspec.json.Decoder(_Event)
_BATCH_DECODER = msgspec.json.Decoder(list[_Event])
_ENCODER = msgspec.json.Encoder()


def _holds_no_duplicate_keys(body: bytes, decoded: object, escapes: bool) -> bool:
    """Whether no object of ``body`` holds a key twice, proven without parsing it again.

    msgspec keeps the last of two equal keys. Every key and string of the body is
    between two quotes, and a quote inside a string is written ``\\"``, as msgspec
    writes it again; so unless the body spells a quote ``\\u0022``, re-encoding what
    was decoded gives as many quotes as the body holds only if no member was dropped.
    A pass of jiter that refuses duplicates cost three times as much.
    """
    if escapes and b"\\u0022" in body:
        return False
    return body.count(b'"') == _ENCODER.encode(decoded).count(b'"')


def _content_of_decoded(event: _Event) -> dict[str, Any]:
    # UNSET (an absent field) is tested inline: a helper function per field cost more.
    actor, target = event.actor, event.target
    actor_type = "user" if actor.type is _UNSET else actor.type
    event_id, claimed = event.id, event.tenant
    if not (
        _RFC3339.fullmatch(event.occurred_at)
        and _ACTION.fullmatch(event.action)
        and _ACTOR_TYPE.fullmatch(actor_type)
        and (event_id is None or event_id is _UNSET or _EVENT_ID.fullmatch(event_id))
        and (claimed is None or claimed is _UNSET or _TENANT.fullmatch(claimed))
    ):
        raise ValueError("a field does not match its pattern")
    user_agent, session_id, request_id = actor.user_agent, actor.session_id, event.request_id
    return client_content(
        event_id or str(uuid.uuid4()),  # UNSET is false
        event.occurred_at,
        (
            actor.id,
            actor_type,
            None if actor.ip is _UNSET else _canonical_ip(actor.ip),
            None if user_agent is _UNSET else user_agent,
            None if session_id is _UNSET else session_id,
        ),
        event.action,
        None
        if target is None or target is _UNSET
        else (target.type, target.id, None if target.name is _UNSET else target.name),
        event.outcome,
        event.source,
        None if request_id is _UNSET else request_id,
        {} if event.metadata is _UNSET else event.metadata,
        {} if event.changes is _UNSET else event.changes,
    )


def normalise_json(
    body: bytes, *, batch: bool, tenant: str, now: datetime, limits: Limits
) -> NormalisedBatch | None:
    """A JSON event (``batch=False``) or array of events, parsed, checked and normalised
    in one pass; None if any of it is not valid.

    None is the cue to parse the body the usual way and validate it with
    :func:`normalise_events`, which names every problem of every event.
    """
    try:
        events = _BATCH_DECODER.decode(body) if batch else [_EVENT_DECODER.decode(body)]
        # Without a backslash the body has no escape, so no NUL and no \u0022 (a memchr).
        escapes = b"\\" in body
        if (
            not events
            or len(events) > limits.max_batch_events
            or not is_tenant_name(tenant)
            or not _holds_no_duplicate_keys(body, events if batch else events[0], escapes)
        ):
            return None
        contents: list[dict[str, Any]] = []
        with_floats: set[int] = set()
        for index, event in enumerate(events):
            content = _content_of_decoded(event)
            claimed = None if event.tenant is _UNSET else event.tenant
            if _checked(content, claimed, index, tenant, now, limits, may_hold_nul=escapes):
                with_floats.add(index)
            contents.append(content)
    except (msgspec.DecodeError, ValueError, InvalidEventError, RecursionError):
        # msgspec.ValidationError is a DecodeError; ValueError includes a body that is
        # not UTF-8 and an actor ip that is not an address; RecursionError a body nested
        # deeper than msgspec goes (the other path's parser refuses it by name).
        return None
    return NormalisedBatch(contents, frozenset(with_floats))
