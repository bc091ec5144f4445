"""A stored record's leaf (its canonical bytes), read from the ledger's stored state.

The ledger stores a record as ``{"hash": ..., "timestamp": ..., "record": <JSON>}``,
where the record's JSON is its canonical bytes as they were hashed (unless it holds a
float, which canonical JSON may spell as an integer). So the record's bytes are taken
from the state as they are when they hash to the stored ``hash``: that is the leaf, and
it costs no decoding. Anything else (a float, a state written otherwise) is decoded and
canonicalised; whether the result hashes to the stored hash is then for the caller to
judge (the chain check reports it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from audit_core.canonical import canonical_bytes

_RECORD = b',"record":'
_HASH_AT = slice(9, 73)


class Head(msgspec.Struct):
    """The fields of a stored record that place it in a tree."""

    tenant: str
    seq: int
    prev_hash: str


class _State(msgspec.Struct):
    hash: str
    record: Head


_decode_state = msgspec.json.Decoder(_State).decode


def stored_leaf(mapper: Any, state: bytes) -> tuple[bytes, Head, str]:
    """(leaf, where the record sits, its stored hash) of a stored ``Recorded`` state.
    Raises if the state cannot be decrypted or decoded."""
    plain: bytes = mapper.recorded_json(state)
    decoded = _decode_state(plain)
    return _leaf(mapper, state, plain, decoded.hash), decoded.record, decoded.hash


def stored_leaf_only(mapper: Any, state: bytes) -> bytes:
    """The leaf of a stored state, without looking at where the record sits."""
    plain: bytes = mapper.recorded_json(state)
    return _leaf(mapper, state, plain, None)


def _leaf(mapper: Any, state: bytes, plain: bytes, stored_hash: str | None) -> bytes:
    at = plain.find(_RECORD, 80)
    if at > 0 and plain.startswith(b'{"hash":"') and plain.endswith(b"}"):
        candidate = plain[at + len(_RECORD) : -1]
        expected = plain[_HASH_AT] if stored_hash is None else stored_hash.encode()
        if hashlib.sha256(candidate).hexdigest().encode() == expected:
            return candidate
    return canonical_bytes(mapper.decode_recorded(state)["record"])
