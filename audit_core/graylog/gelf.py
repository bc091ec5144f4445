"""GELF 1.1 messages of audit records, for Graylog's security searches.

One message per record:

- ``short_message``: who did what to what, and the outcome, as a sentence;
- ``full_message``: the record's canonical bytes (RFC 8785 JSON, ``hash`` excluded),
  so SHA-256 of it is ``_hash`` and Graylog's copy can be checked against the ledger,
  unless sensitive values in it were replaced (then ``_hmac_paths`` lists them);
- ``timestamp`` from ``occurred_at``; ``level`` from ``outcome`` (syslog numbers, as
  graypy maps Python's levels: failure is an error, denied a warning, success info);
- ``_event_id``, ``_tenant``, ``_seq``, ``_hash`` and ``_prev_hash`` tie it to the
  ledger; ``_actor_*``, ``_action``, ``_target_*``, ``_outcome``, ``_source``,
  ``_occurred_at``, ``_received_at`` and ``_request_id`` are the record's fields;
- ``_meta_<path>``: the metadata flattened, one field per leaf (see :func:`meta_fields`).

Sensitive metadata (keys named in configuration) is replaced, in the fields and in
``full_message`` alike, by HMAC-SHA256 (hex) of the value under a secret key, so the
security team can still search for a value by equality (``vigil graylog hmac VALUE``
prints what to search for) and nobody reading Graylog learns it.

graypy builds the chunks (:mod:`audit_core.graylog.transports`) and gives the level
numbers; its JSON packer is not used: it walks every value to decode bytes (which a
record never holds) and serialises with ``json``, about ten times the time ``orjson``
takes (``bench/graylog.py`` prints both), and it would turn an unexpected value into
its ``repr`` instead of failing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from graypy.handler import SYSLOG_LEVELS

from audit_core.canonical import canonical_bytes
from audit_core.graylog.exceptions import GraylogConfigError

VERSION = "1.1"
LEVELS: dict[str, int] = {
    "success": SYSLOG_LEVELS[logging.INFO],
    "denied": SYSLOG_LEVELS[logging.WARNING],
    "failure": SYSLOG_LEVELS[logging.ERROR],
}
"""Syslog level of each outcome: denied and failure stand out from success."""
META_PREFIX = "_meta_"
OMITTED = "_meta_omitted"
"""How many metadata leaves a message has beyond ``max_meta_fields``."""
MAX_FIELD_NAME = 128
"""Longest additional field name sent; longer paths are shortened with a digest."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
"""What a ``_meta_`` path component may not hold: GELF allows ``[\\w.-]``, but ``\\w`` is
ASCII-only in Graylog (Java) and Graylog turns dots into underscores (Elasticsearch 2
refused them), so a dot would silently become a clash; both are spelled ``_`` here."""
_DIGEST_LENGTH = 8
_ACTOR = {key: f"_actor_{key}" for key in ("id", "type", "ip", "user_agent", "session_id")}
_TARGET = {key: f"_target_{key}" for key in ("type", "id", "name")}


@dataclass(frozen=True)
class MessageOptions:
    """How messages are built; the same for every destination."""

    host: str
    """GELF ``host``: the machine's name unless configured."""
    hmac_key: bytes | None = None
    hmac_fields: tuple[str, ...] = ()
    """Metadata keys whose values are sent as HMAC-SHA256: a bare name matches that key
    at any depth, a dotted path (``customer.email``) that path from the top; case does
    not matter."""
    max_meta_fields: int = 100
    """Most ``_meta_`` fields per message (Elasticsearch caps an index's fields at 1000
    by default); the rest are in ``full_message`` only, counted in ``_meta_omitted``."""

    def __post_init__(self) -> None:
        if self.hmac_fields and not self.hmac_key:
            raise GraylogConfigError(
                "VIGIL_GRAYLOG_HMAC_FIELDS names sensitive metadata but "
                "VIGIL_GRAYLOG_HMAC_KEY is not set; set it to a long random secret "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if not self.host:
            raise GraylogConfigError("VIGIL_GRAYLOG_HOST is empty; unset it or name a host")


def hmac_value(key: bytes, value: Any) -> str:
    """The HMAC-SHA256 (hex) shipped instead of a sensitive value: of a string's UTF-8
    bytes, of anything else's canonical JSON."""
    data = value.encode() if isinstance(value, str) else canonical_bytes(value)
    return hmac.new(key, data, hashlib.sha256).hexdigest()


class MessageBuilder:
    """Builds and packs the GELF message of each record."""

    def __init__(self, options: MessageOptions):
        self.options = options
        self._key = options.hmac_key or b""
        names = {field.lower() for field in options.hmac_fields}
        self._sensitive_names = frozenset(name for name in names if "." not in name)
        self._sensitive_paths = frozenset(tuple(name.split(".")) for name in names if "." in name)

    def pack(self, record: dict[str, Any]) -> bytes:
        """The message as UTF-8 JSON, ready to frame."""
        return orjson.dumps(self.message(record))

    def message(self, record: dict[str, Any]) -> dict[str, Any]:
        """The message of a record as the ledger returns it (with ``hash``)."""
        redacted: list[str] = []
        body = dict(record)
        del body["hash"]
        if self._sensitive_names or self._sensitive_paths:
            for field in ("metadata", "changes"):
                if body.get(field):
                    body[field] = self._redact(body[field], (), field, redacted)
        actor = record["actor"]
        target = record.get("target")
        message: dict[str, Any] = {
            "version": VERSION,
            "host": self.options.host,
            "short_message": sentence(record),
            # Only metadata and changes may hold floats: walking just them is a fifth
            # of canonical_bytes' own walk of the whole record.
            "full_message": canonical_bytes(
                body,
                may_hold_floats=_holds_float(body.get("metadata") or {})
                or _holds_float(body.get("changes") or {}),
            ).decode(),
            "timestamp": _epoch(record["occurred_at"]),
            "level": LEVELS.get(record["outcome"], LEVELS["failure"]),
            "_event_id": record["id"],
            "_tenant": record["tenant"],
            "_seq": record["seq"],
            "_hash": record["hash"],
            "_prev_hash": record["prev_hash"],
            "_action": record["action"],
            "_outcome": record["outcome"],
            "_source": record["source"],
            "_occurred_at": record["occurred_at"],
            "_received_at": record["received_at"],
        }
        for key, value in actor.items():
            if value is not None:
                message[_ACTOR.get(key) or f"_actor_{key}"] = value
        if target:
            for key, value in target.items():
                if value is not None:
                    message[_TARGET.get(key) or f"_target_{key}"] = value
        if record.get("request_id") is not None:
            message["_request_id"] = record["request_id"]
        if redacted:
            message["_hmac_paths"] = ",".join(dict.fromkeys(redacted))  # once per path
        meta = body.get("metadata") or {}
        if meta:
            # No other field's name starts with _meta_: none can clash with these.
            fields, omitted = meta_fields(meta, (), self.options.max_meta_fields)
            message.update(fields)
            if omitted:
                message[OMITTED] = omitted
        return message

    def _redact(self, value: Any, path: tuple[str, ...], where: str, redacted: list[str]) -> Any:
        """``value`` with each sensitive key's value replaced by its HMAC."""
        if isinstance(value, list):
            return [self._redact(item, path, where, redacted) for item in value]
        if not isinstance(value, dict):
            return value
        result: dict[str, Any] = {}
        for key, item in value.items():
            inner = (*path, key.lower())
            if key.lower() in self._sensitive_names or inner in self._sensitive_paths:
                result[key] = hmac_value(self._key, item)
                redacted.append(".".join((where, *path, key)))
            else:
                result[key] = self._redact(item, inner, where, redacted)
        return result


def sentence(record: dict[str, Any]) -> str:
    """``user u-1001 did conversation.assign to conversation c-42 "Refund": denied``"""
    actor = record["actor"]
    target = record.get("target")
    text = f"{actor['type']} {actor['id']} did {record['action']}"
    if target:
        text += f" to {target['type']} {target['id']}"
        if target.get("name"):
            text += f' "{target["name"]}"'
    return f"{text}: {record['outcome']}"


def meta_fields(
    metadata: dict[str, Any], taken: Iterable[str], limit: int
) -> tuple[dict[str, Any], int]:
    """``_meta_<path>`` fields of the metadata's leaves, and how many were left out.

    Path components are joined with ``_``, and what GELF or Graylog would not keep
    becomes ``_``. Names depend only on the metadata, whatever its key order: leaves are
    taken in path order; a name already taken (``{"a_b": 1, "a": {"b": 2}}``) or longer
    than ``MAX_FIELD_NAME`` gets ``_`` and a digest of its path instead of its tail.
    Lists are one field holding their JSON; true and false become strings (GELF values
    are strings or numbers); nulls are left out. Never ``_id``: every name has a prefix.
    """
    used = {*taken, OMITTED}
    fields: dict[str, Any] = {}
    # Fast path, for nearly every event: the natural names, if none of them clashes,
    # none is too long and the budget holds them all (then order changes nothing).
    for name, value in _natural(metadata, META_PREFIX[:-1]):
        if name in used or len(name) > MAX_FIELD_NAME or len(fields) >= limit:
            break
        used.add(name)
        fields[name] = value
    else:
        return fields, 0
    used = {*taken, OMITTED}
    fields = {}
    leaves = sorted(_leaves(metadata, ()), key=lambda leaf: leaf[0])
    for path, value in leaves[:limit]:
        name = META_PREFIX + "_".join(_safe(part) for part in path)
        if len(name) > MAX_FIELD_NAME or name in used:
            digest = hashlib.sha256(orjson.dumps(path)).hexdigest()
            length = _DIGEST_LENGTH
            while True:
                stem = name[: MAX_FIELD_NAME - length - 1]
                candidate = f"{stem}_{digest[:length]}"
                if candidate not in used or length >= len(digest):
                    break
                length *= 2
            name = candidate
        used.add(name)
        fields[name] = value
    return fields, max(0, len(leaves) - limit)


_SAFE: dict[str, str] = {}
"""Path components as field names: metadata keys repeat from event to event."""


def _safe(key: str) -> str:
    safe = _SAFE.get(key)
    if safe is None:
        if len(_SAFE) > 10_000:
            _SAFE.clear()
        safe = _SAFE[key] = _UNSAFE.sub("_", key) or "_"
    return safe


def _natural(value: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    """(natural field name, value) of each leaf, in the metadata's own order."""
    for key, item in value.items():
        name = f"{prefix}_{_SAFE.get(key) or _safe(key)}"
        if type(item) is dict:
            yield from _natural(item, name)
        elif type(item) is list:
            yield name, canonical_bytes(item).decode()
        elif type(item) is bool:
            yield name, "true" if item else "false"
        elif item is not None:
            yield name, item


def _leaves(value: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, item in value.items():
        inner = (*path, key)
        if isinstance(item, dict):
            yield from _leaves(item, inner)
        elif isinstance(item, list):
            yield inner, canonical_bytes(item).decode()
        elif isinstance(item, bool):
            yield inner, "true" if item else "false"
        elif item is not None:
            yield inner, item


def _holds_float(value: Any) -> bool:
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _holds_float(item)):
            return True
    return False


def _epoch(timestamp: str) -> float:
    """GELF's seconds since the epoch (microseconds kept) of a stored RFC 3339 time
    (always UTC with ``Z``: the ledger normalises it)."""
    return datetime.fromisoformat(timestamp).timestamp()
