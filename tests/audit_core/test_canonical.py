"""Canonical bytes are RFC 8785 (checked against the reference encoder) and hashes use them."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785
from hypothesis import example, given
from hypothesis import strategies as st

from audit_core.canonical import GENESIS_HASH, canonical_bytes, record_hash
from tests.events import expected_hash

SAFE = 2**53 - 1

# Any Unicode scalar value: lone surrogates are not text and no JSON encoder accepts them.
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
non_bmp_text = st.text(st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF), min_size=1)
keys = text | non_bmp_text | st.sampled_from(["", "a", "\uffff", "\ue000", "é", "\U0001f600"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE, max_value=SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=40,
)


@given(json_values)
@example({"\U0001f600": 1, "\uffff": 2, "\ue000": 3, "z": 4})
@example({"a": [1.0, -0.0, 1e21, 1e-7, 5e-324, 0.1, 2.5e-5]})
@example({"ctl": '\x00\x1f\x7f\u2028"\\/'})
@example([SAFE, -SAFE, 0, True, None])
def test_canonical_bytes_are_the_rfc_8785_encoding_of_any_json_value(value: Any) -> None:
    assert canonical_bytes(value) == bytes(rfc8785.dumps(value))


def test_object_keys_outside_the_bmp_sort_by_utf16_code_units() -> None:
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16: it sorts before U+E000 and U+FFFF,
    # although its code point is higher.
    value = {"\uffff": 1, "\U0001f600": 2, "\ue000": 3}
    assert canonical_bytes(value) == '{"\U0001f600":2,"\ue000":3,"\uffff":1}'.encode()


def test_floats_are_written_as_ecmascript_numbers() -> None:
    assert canonical_bytes({"a": 1.0, "b": 1e21, "c": -0.0, "d": 1e-7}) == (
        b'{"a":1,"b":1e+21,"c":0,"d":1e-7}'
    )


@given(st.dictionaries(keys, json_values, max_size=6))
def test_record_hash_is_sha256_of_the_canonical_record_without_its_hash(
    record: dict[str, Any],
) -> None:
    record = {**record, "hash": "f" * 64}
    assert record_hash(record) == expected_hash(record)


def test_record_hash_ignores_the_stored_hash_but_not_any_other_field() -> None:
    record = {"seq": 0, "prev_hash": GENESIS_HASH, "action": "auth.login"}
    with_hash = {**record, "hash": "0123" * 16}
    assert record_hash(with_hash) == record_hash(record)
    assert record_hash(with_hash) == hashlib.sha256(rfc8785.dumps(record)).hexdigest()
    assert record_hash({**record, "action": "auth.logout"}) != record_hash(record)
    assert with_hash["hash"] == "0123" * 16, "hashing must not change the record"


def test_equal_records_hash_equally_whatever_their_key_order() -> None:
    one = {"b": {"y": 1, "x": [1, 2]}, "a": "Zoë"}
    other = {"a": "Zoë", "b": {"x": [1, 2], "y": 1}}
    assert record_hash(one) == record_hash(other)
