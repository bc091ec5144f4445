"""C2SP signed notes with Ed25519, and keys in the formats of Go's ``sumdb/note``.

A signed note is text ending in a newline, a blank line, and signature lines
``— <key name> base64(key id ‖ signature)``. For Ed25519 (signature type 0x01):

- key id = first 4 bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key);
- verifier key (``vkey``): ``<name>+<key id, 8 hex digits>+base64(0x01 ‖ public key)``;
- signer key (``skey``): ``PRIVATE+KEY+<name>+<key id>+base64(0x01 ‖ 32-byte seed)``.

One Ed25519 key can sign under several names (each tenant's log has its own origin, and
the key's name is the origin): :meth:`Signer.named` and :meth:`Verifier.named` give the
same key under another name, whose key id then differs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit_core.transparency.exceptions import NoteError

ED25519 = 0x01
"""The signed-note signature type of Ed25519."""
MAX_SIGNATURES = 100
"""More signature lines than this and a note is refused (the spec asks for at least 16)."""
_SIG_PREFIX = "— "
_NAME = re.compile(r"[^\s+]+")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def check_key_name(name: str) -> str:
    """A key name: non-empty, without spaces or ``+``."""
    if not _NAME.fullmatch(name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id of an Ed25519 key under ``name``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None


@dataclass(frozen=True)
class Verifier:
    """A public key under a name: checks signatures made by that name and key."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != 32:
            raise NoteError(f"an Ed25519 public key is 32 bytes, not {len(self.public_key)}")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """The verifier key in signed-note ``vkey`` format."""
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<hex key id>+<base64(0x01 ‖ key)>``, checking the key id."""
        vkey = vkey.strip()
        name, plus, rest = vkey.partition("+")
        hash_hex, plus2, encoded = rest.partition("+")
        if not plus or not plus2 or not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
            raise NoteError(f"verifier key {vkey[:80]!r} is not <name>+<8 hex digits>+<base64 key>")
        check_key_name(name)
        raw = _b64decode(encoded, "the verifier key's key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError(
                f"verifier key of {name!r} is not an Ed25519 key (type byte 0x01 and 32 bytes)"
            )
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hash_hex:
            raise NoteError(
                f"verifier key of {name!r}: key id {hash_hex} does not match its name and key "
                f"({verifier.key_id.hex()})"
            )
        return verifier

    def named(self, name: str) -> Verifier:
        """This key under another name."""
        return Verifier(name, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 private key under a name: signs notes as that name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey):
        self.name = check_key_name(name)
        self._key = private_key
        public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, key id {self.verifier.key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>``."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key reads PRIVATE+KEY+<name>+<key id>+<base64 key>")
        name, hash_hex, encoded = parts[2], parts[3], parts[4]
        raw = _b64decode(encoded, "the signer key's key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError(
                f"signer key of {name!r} is not an Ed25519 key (0x01 and a 32-byte seed)"
            )
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.key_id.hex() != hash_hex:
            raise NoteError(f"signer key of {name!r}: key id {hash_hex} does not match its key")
        return signer

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        """Read a signer key file written by :meth:`write` (``vigil keys signing-generate``)."""
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            raise NoteError(f"cannot read the signing key file {path}: {error}") from None
        try:
            return cls.from_skey(text)
        except NoteError as error:
            raise NoteError(f"signing key file {path}: {error}") from None

    @property
    def skey(self) -> str:
        """The signer key in Go's ``note`` format. A secret: never log it."""
        seed = self._key.private_bytes_raw()
        encoded = base64.b64encode(bytes([ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{encoded}"

    def write(self, path: str | Path) -> None:
        """Write the signer key to a new file only its owner can read; never overwrite."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(self.skey + "\n")

    def named(self, name: str) -> Signer:
        """The same key, signing under another name."""
        return Signer(name, self._key)

    def signature_line(self, text: str) -> str:
        signature = self._key.sign(text.encode())
        encoded = base64.b64encode(self.verifier.key_id + signature).decode()
        return f"{_SIG_PREFIX}{self.name} {encoded}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text must end with a newline")
    if _CONTROL.search(text):
        raise NoteError("a note must not hold control characters other than newline")


def sign_note(text: str, *signers: Signer) -> str:
    """``text`` signed by each of ``signers``, as a signed note."""
    _check_text(text)
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    return text + "\n" + "".join(signer.signature_line(text) for signer in signers)


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[NoteSignature, ...]


def parse_note(note: str) -> Note:
    """Split a signed note into its text and signatures (none of them checked)."""
    if len(note) > 1_000_000:
        raise NoteError("a signed note of more than 1 MB is refused")
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a signed note needs a blank line between its text and signatures")
    text, lines = note[: split + 1], note[split + 2 :].splitlines()
    if not lines:
        raise NoteError("the signed note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the signed note has more than {MAX_SIGNATURES} signatures")
    signatures: list[NoteSignature] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"signature line {number} does not start with '— '")
        name, space, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        if not space or not _NAME.fullmatch(name):
            raise NoteError(f"signature line {number} is not '— <key name> <base64>'")
        raw = _b64decode(encoded, f"signature line {number}")
        if len(raw) < 5:
            raise NoteError(f"signature line {number} is too short to hold a key id")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return Note(text, tuple(signatures))


@dataclass(frozen=True)
class VerifiedNote:
    text: str
    verified_by: tuple[Verifier, ...]
    """The known keys whose signatures verified."""


def verify_note(note: str, verifiers: Iterable[Verifier]) -> VerifiedNote:
    """Check a signed note against trusted keys (C2SP signed-note rules): signatures by
    unknown keys are ignored, any failing signature of a known key refuses the note,
    and at least one known key's signature must verify."""
    parsed = parse_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    good: list[Verifier] = []
    message = parsed.text.encode()
    for signature in parsed.signatures:
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, signature.signature):
            raise NoteError(
                f"the signature of {signature.name} (key id {signature.key_id.hex()}) "
                "does not verify: the note was altered or signed by another key"
            )
        if verifier not in good:
            good.append(verifier)
    if not good:
        names = sorted({f"{s.name}+{s.key_id.hex()}" for s in parsed.signatures})
        trusted = sorted(f"{v.name}+{v.key_id.hex()}" for v in known.values())
        raise NoteError(
            f"no signature by a trusted key: the note is signed by {', '.join(names)}; "
            f"trusted: {', '.join(trusted) or 'none'}"
        )
    return VerifiedNote(parsed.text, tuple(good))


def parse_vkeys(text: str | Sequence[str]) -> list[Verifier]:
    """Verifier keys from a list, or from text with one per line or comma-separated
    (``#`` starts a comment line)."""
    items = text if not isinstance(text, str) else re.split(r"[,\n]", text)
    return [
        Verifier.from_vkey(item)
        for item in (entry.strip() for entry in items)
        if item and not item.startswith("#")
    ]
