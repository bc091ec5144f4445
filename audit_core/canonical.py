"""Canonical bytes and hashes of audit records: the one definition every verifier uses.

Canonical bytes are RFC 8785 (JSON Canonicalization Scheme) of the stored record
without its ``hash``. orjson with sorted keys produces the same bytes as JCS for
strings, integers, booleans, null, objects and arrays, and is ~70x faster than a
pure-Python JCS encoder; it differs only on floats (ECMAScript number formatting) and
on object keys outside the Basic Multilingual Plane (JCS sorts by UTF-16 code units).
Values holding either go through the reference encoder, so the output is JCS always.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the record at seq 0."""

_SORTED = orjson.OPT_SORT_KEYS


def _orjson_is_jcs(value: Any) -> bool:
    """True when orjson's sorted output of ``value`` is byte-identical to JCS."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if not key.isascii() and any(ord(char) > 0xFFFF for char in key):
                return False
            if not _orjson_is_jcs(item):
                return False
        return True
    if kind is list:
        return all(_orjson_is_jcs(item) for item in value)
    return kind is not float


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value``."""
    if _orjson_is_jcs(value):
        return orjson.dumps(value, option=_SORTED)
    return bytes(rfc8785.dumps(value))


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (lowercase hex) of a record's canonical bytes, ``hash`` itself excluded."""
    if "hash" in record:
        record = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def content_digest(content: dict[str, Any]) -> bytes:
    """Digest of what a client sent, to tell an idempotent retry from a conflicting reuse."""
    return hashlib.sha256(canonical_bytes(content)).digest()
