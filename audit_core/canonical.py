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


def _holds_float(value: Any) -> bool:
    """True if any number inside ``value`` is a float."""
    items = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if kind is float:
            return True
        if (kind is dict or kind is list) and _holds_float(item):
            return True
    return False


def _holds_astral_key(value: Any) -> bool:
    """True if an object key inside ``value`` has a character beyond U+FFFF."""
    if type(value) is dict:
        for key, item in value.items():
            if any(ord(char) > 0xFFFF for char in key) or _holds_astral_key(item):
                return True
    elif type(value) is list:
        return any(_holds_astral_key(item) for item in value)
    return False


def canonical_bytes(value: Any, *, may_hold_floats: bool = True) -> bytes:
    """RFC 8785 canonical JSON of ``value``.

    ``may_hold_floats=False`` is for callers that have just walked ``value`` and know
    it holds no float: it skips the walk, which costs as much as the encoding.
    """
    if may_hold_floats and (
        type(value) is float or (type(value) in (dict, list) and _holds_float(value))
    ):
        return bytes(rfc8785.dumps(value))
    encoded = orjson.dumps(value, option=_SORTED)
    # An all-ASCII encoding has only ASCII keys, so no key can sort differently.
    if not encoded.isascii() and _holds_astral_key(value):
        return bytes(rfc8785.dumps(value))
    return encoded


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (lowercase hex) of a record's canonical bytes, ``hash`` itself excluded."""
    if "hash" in record:
        record = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical_bytes(record)).hexdigest()
