"""What an audit event may hold, with its limits, and how it is normalised before hashing.

The fields follow PCI DSS 10.2.2: who (``actor``), what (``action``), on what
(``target``), when (``occurred_at``, and the server's ``received_at``), result
(``outcome``) and origin (``source``), plus bounded ``metadata`` and ``changes``.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from audit_core.exceptions import FieldProblem, InvalidEventError

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$"
ACTION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_TENANT = re.compile(TENANT_PATTERN)
MAX_SAFE_INTEGER = 2**53 - 1
"""Integers beyond this lose precision in JavaScript and are outside RFC 8785's domain."""

Outcome = Literal["success", "failure", "denied"]
Source = Literal["console", "app", "api", "system"]
ShortText = Annotated[str, Field(min_length=1, max_length=256)]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one event may hold. Configurable through ``VIGIL_*`` settings."""

    max_event_bytes: int = 32 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8
    max_batch_events: int = 1000
    max_future_skew: timedelta = timedelta(minutes=5)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Actor(_Strict):
    """Who acted: a user, a service account or the system itself."""

    id: ShortText
    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = "user"
    ip: str | None = Field(default=None, description="IPv4 or IPv6 address of the client.")
    user_agent: Annotated[str, Field(max_length=1024)] | None = None
    session_id: ShortText | None = None

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


class Target(_Strict):
    """What was acted on."""

    type: Annotated[str, Field(min_length=1, max_length=64)]
    id: ShortText
    name: Annotated[str, Field(max_length=512)] | None = None


class AuditEventIn(_Strict):
    """An audit event as a console or app sends it."""

    id: Annotated[str, Field(pattern=EVENT_ID_PATTERN)] | None = Field(
        default=None,
        description="Client-chosen id; sending the same id again with the same content "
        "returns the original record instead of recording twice.",
    )
    tenant: Annotated[str, Field(pattern=TENANT_PATTERN)] | None = None
    occurred_at: str = Field(description="RFC 3339 timestamp with offset, client clock.")
    actor: Actor
    action: Annotated[str, Field(max_length=128, pattern=ACTION_PATTERN)] = Field(
        description="Dotted verb, e.g. conversation.assign"
    )
    target: Target | None = None
    outcome: Outcome
    source: Source
    request_id: ShortText | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    changes: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("occurred_at")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        if not _RFC3339.match(value):
            raise ValueError(
                f"{value!r} is not an RFC 3339 timestamp with offset "
                "(e.g. 2026-11-23T10:15:00Z or 2026-11-23T11:15:00+01:00)"
            )
        # Python parses at most 6 fractional digits.
        trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value)
        try:
            parsed = datetime.fromisoformat(trimmed.replace("z", "Z"))
        except ValueError as error:
            raise ValueError(f"{value!r} is not a valid date and time: {error}") from None
        return format_timestamp(parsed)


def format_timestamp(moment: datetime) -> str:
    """UTC, microseconds, ``Z``: one spelling, so equal instants hash equally."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise InvalidEventError(
            [FieldProblem(0, "tenant", f"{tenant!r} must match {TENANT_PATTERN}")]
        )
    return tenant


def _json_problem(value: Any, depth: int, limits: Limits) -> str | None:
    """Why a metadata value is out of bounds, or None."""
    if depth > limits.max_metadata_depth:
        return f"nested deeper than {limits.max_metadata_depth} levels"
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_SAFE_INTEGER:
                return f"integer {value} is beyond ±(2**53 - 1); send it as a string"
        elif isinstance(value, float) and not math.isfinite(value):
            return "NaN and infinity are not JSON numbers"
        return None
    for item in items:
        problem = _json_problem(item, depth + 1, limits)
        if problem:
            return problem
    return None


def normalise(
    raw: Mapping[str, Any], index: int, tenant: str, now: datetime, limits: Limits
) -> dict[str, Any]:
    """Validate one incoming event; return its content as it will be hashed."""
    try:
        event = AuditEventIn.model_validate(raw)
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
    if event.tenant is not None and event.tenant != tenant:
        raise InvalidEventError(
            [FieldProblem(index, "tenant", f"{event.tenant!r} differs from {tenant!r}")]
        )
    if datetime.fromisoformat(event.occurred_at) > now + limits.max_future_skew:
        raise InvalidEventError(
            [
                FieldProblem(
                    index,
                    "occurred_at",
                    f"{event.occurred_at} is more than {limits.max_future_skew} "
                    "ahead of the server clock",
                )
            ]
        )
    content = event.model_dump(exclude={"tenant"})
    if content["id"] is None:
        content["id"] = str(uuid.uuid4())
    for field in ("metadata", "changes"):
        problem = _json_problem(content[field], 1, limits)
        if problem is None and len(orjson.dumps(content[field])) > limits.max_metadata_bytes:
            problem = f"larger than {limits.max_metadata_bytes} bytes as JSON"
        if problem:
            raise InvalidEventError([FieldProblem(index, field, problem)])
    if len(orjson.dumps(content)) > limits.max_event_bytes:
        raise InvalidEventError(
            [FieldProblem(index, "", f"event is larger than {limits.max_event_bytes} bytes")]
        )
    return content


def normalise_batch(
    events: Sequence[Mapping[str, Any]], tenant: str, now: datetime, limits: Limits
) -> list[dict[str, Any]]:
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
                    f"batch of {len(events)} events exceeds the limit of "
                    f"{limits.max_batch_events}",
                )
            ]
        )
    contents: list[dict[str, Any]] = []
    problems: list[FieldProblem] = []
    for index, raw in enumerate(events):
        if not isinstance(raw, Mapping):
            problems.append(FieldProblem(index, "", "an event must be a JSON object"))
            continue
        try:
            contents.append(normalise(raw, index, tenant, now, limits))
        except InvalidEventError as error:
            problems.extend(error.problems)
    if problems:
        raise InvalidEventError(problems)
    return contents
