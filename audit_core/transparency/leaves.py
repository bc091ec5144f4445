"""A stored record's leaf: its canonical bytes, the bytes its chain hash covers.

The ledger stores those bytes as they were hashed, so a record whose stored bytes still
hash to its stored hash is its own leaf, with no decoding. Anything else (a float, a
state written otherwise) is decoded and canonicalised; whether the result hashes to the
stored hash is then for the caller to judge.
"""

from __future__ import annotations

import msgspec

from audit_core.canonical import canonical_bytes
from audit_core.persistence import LedgerMapper, RecordHead


def stored_leaf(mapper: LedgerMapper, state: bytes) -> tuple[bytes, RecordHead, str]:
    """(leaf, where the record says it sits, its stored hash) of a stored ``Recorded``
    state. Raises if the state cannot be decrypted or decoded."""
    fast = mapper.canonical_record(state)
    if fast is not None:
        return fast.canonical, fast.head, fast.hash
    decoded = mapper.decode_recorded(state)
    record = decoded["record"]
    return canonical_bytes(record), msgspec.convert(record, RecordHead), decoded["hash"]
