"""Keyed hashes that stand in the read model for what it indexes, when the ledger is
encrypted (a blind index).

With ``VIGIL_ENCRYPTION_KEY`` set, the records are encrypted in the ledger, and the read
model must not hold their content in clear beside them. Identifiers (actor, target,
session, request, address) are then indexed as a keyed BLAKE2b of the value, and the
metadata's words each as a keyed BLAKE2b of the word: equality and whole-word search
still find them, a substring of a word cannot. The key is derived from the encryption
key with a context of its own, so a digest here reveals nothing about the key that
encrypts the records; the tenant and the field are hashed in with the value, so the same
actor in two tenants, or one value in two fields, gives unrelated digests.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from typing import Final

_WORD: Final = re.compile(r"\w+")
_VALUE_SEPARATOR: Final = " . "
"""Between the words of two metadata values: not a word, so a phrase never spans two."""


def words(text: str) -> list[str]:
    """The whole words (letters, digits, underscore) of ``text``, lowercased."""
    return _WORD.findall(text.lower())


class BlindIndex:
    """The keyed hashes of one encryption key."""

    def __init__(self, encryption_key: str):
        try:
            secret = base64.b64decode(encryption_key, validate=True)
        except (binascii.Error, ValueError):
            secret = encryption_key.encode()

        def derive(context: bytes) -> bytes:
            return hashlib.blake2b(
                context, key=secret[:64], digest_size=32, person=b"vigil-readmodel"
            ).digest()

        key = derive(b"blind index v2")
        # Keyed hashers set up once and copied for each value: the key's block is
        # compressed once, not per value.
        self._values = hashlib.blake2b(key=key, digest_size=12)
        self._words = hashlib.blake2b(key=key, digest_size=8, person=b"word")
        self.key_id = derive(b"blind index key id v2")[:8].hex()
        """Names the key without revealing it: a read model built under another key (or
        in clear) is rebuilt (``TrailView.shape``)."""
        # Values repeat from event to event (the same actors, sessions, words): hashing
        # each once per process is most of what blinding costs the follower.
        self.value = functools.lru_cache(maxsize=65_536)(self._value)
        self.word = functools.lru_cache(maxsize=65_536)(self._word)
        self.search = functools.lru_cache(maxsize=16_384)(self._search)

    def _value(self, tenant: str, field: str, value: str) -> str:
        """The digest of an identifier: 96 bits, in hex (24 characters)."""
        hasher = self._values.copy()
        hasher.update(f"{field}\x1f{tenant}\x1f{value}".encode())
        return hasher.hexdigest()

    def _word(self, tenant: str, word: str) -> str:
        """The digest of a word: 64 bits in lowercase base32 (13 letters and digits), so
        that the trigram index and ``LIKE`` see each digest as one word, and its
        trigrams are many (hex would give only 4,096, found in every block)."""
        hasher = self._words.copy()
        hasher.update(f"{tenant}\x1f{word}".encode())
        return base64.b32encode(hasher.digest()).decode()[:13].lower()

    def _search(self, tenant: str, text: str) -> str:
        """The searchable form of a row's metadata text (values one per line): each
        value's words as digests, values apart, with a space at each end."""
        values = [words(line) for line in text.split("\n")]
        phrases = [" ".join(self.word(tenant, w) for w in found) for found in values if found]
        return f" {_VALUE_SEPARATOR.join(phrases)} " if phrases else ""

    def phrase(self, tenant: str, text: str) -> str | None:
        """What ``search`` holds where a row's metadata holds the words of ``text`` in a
        row, or ``None`` when ``text`` has no word."""
        found = words(text)
        if not found:
            return None
        return " " + " ".join(self.word(tenant, w) for w in found) + " "
