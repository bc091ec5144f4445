"""C2SP tlog-checkpoint: a tree head as note text, signed as a signed note.

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n[extension lines\\n]

Each tenant's log has its own origin, ``<VIGIL_LOG_ORIGIN>/<tenant>``, and its
checkpoints are signed under a key whose name is that origin (the spec's
recommendation); one Ed25519 key may serve every tenant under their names.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

from audit_core.transparency.exceptions import CheckpointError, NoteError
from audit_core.transparency.merkle import HASH_SIZE
from audit_core.transparency.note import (
    Signer,
    Verifier,
    check_key_name,
    parse_note,
    sign_note,
    verify_note,
)

_SIZE = re.compile(r"0|[1-9][0-9]*")


def tenant_origin(log_origin: str, tenant: str) -> str:
    """The origin (and key name) of a tenant's log."""
    return check_key_name(f"{log_origin.rstrip('/')}/{tenant}")


def tenant_of_origin(log_origin: str, origin: str) -> str | None:
    """The tenant whose origin ``origin`` is under ``log_origin``, or None."""
    prefix = log_origin.rstrip("/") + "/"
    if origin.startswith(prefix) and "/" not in origin[len(prefix) :]:
        return origin[len(prefix) :] or None
    return None


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("a checkpoint's origin must be one non-empty line")
        if self.size < 0:
            raise CheckpointError(f"tree size {self.size} is negative")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"a root hash is {HASH_SIZE} bytes, not {len(self.root)}")
        for line in self.extensions:
            if not line or "\n" in line:
                raise CheckpointError("extension lines must be non-empty single lines")

    @property
    def root_b64(self) -> str:
        return base64.b64encode(self.root).decode()

    def text(self) -> str:
        """The note text (what gets signed)."""
        lines = [self.origin, str(self.size), self.root_b64, *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a note's text (signatures, if present, are not checked)."""
        if "\n\n" in text:
            text = parse_note(text).text
        if not text.endswith("\n"):
            raise CheckpointError("a checkpoint ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(
                "a checkpoint has at least three lines: origin, tree size, root hash"
            )
        origin, size, root = lines[:3]
        if not origin:
            raise CheckpointError("the checkpoint's origin line is empty")
        if not _SIZE.fullmatch(size):
            raise CheckpointError(
                f"tree size {size[:40]!r} is not a decimal number without leading zeros"
            )
        try:
            root_hash = base64.b64decode(root, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError(f"root hash {root[:60]!r} is not base64") from None
        return cls(origin, int(size), root_hash, tuple(lines[3:]))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    """The checkpoint as a signed note, signed by ``signer``'s key under the origin's name."""
    return sign_note(checkpoint.text(), signer.named(checkpoint.origin))


def open_checkpoint(note: str, keys: Iterable[Verifier]) -> Checkpoint:
    """The checkpoint of a signed note, if a signature by one of ``keys``, under the
    checkpoint's origin as key name, verifies. Keys are taken under that name whatever
    name they carry, so the same key files check every tenant's log."""
    try:
        checkpoint = Checkpoint.parse(parse_note(note).text)
    except NoteError as error:
        raise CheckpointError(f"not a signed checkpoint: {error}") from None
    verify_note(note, [key.named(checkpoint.origin) for key in keys])
    return checkpoint
