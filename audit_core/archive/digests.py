"""Digests: one signed statement per segment, chained per tenant.

In the spirit of CloudTrail's digest files, but signed as a C2SP ``signed-note`` with
the log's Ed25519 key (the key whose name is the tenant log's origin), so the same
verifier key and any signed-note tooling check it. The note's text is one line of
canonical JSON (RFC 8785) followed by a newline::

    {"checkpoint": "<signed tlog-checkpoint note covering the segment>",
     "consistency": ["<base64 hash>", ...],   # tree (size) → checkpoint's tree
     "format": "vigil-archive-digest/1",
     "origin": "<VIGIL_LOG_ORIGIN>/<tenant>",
     "previous": {"key": ..., "sha256": ..., "version_id": ...} | null,
     "segment": {"key", "version_id", "sha256" (of the uncompressed JSON Lines),
                 "gzip_sha256", "bytes", "records", "first_seq", "last_seq",
                 "first_received_at", "last_received_at", "first_prev_hash", "last_hash"},
     "tenant": "<tenant>",
     "tree": {"size": last_seq + 1, "root": "<base64>", "frontier": ["<base64>", ...]}}

``tree`` is the tenant's RFC 6962 tree after the segment's last record; ``frontier`` is
the roots of its complete subtrees along the right edge (largest first), from which the
next segment's tree follows without reading any earlier segment. ``consistency`` is the
RFC 9162 proof that the checkpoint's tree extends this one (empty when their sizes are
equal), so the segment's records are proven to be in the checkpoint's tree. ``previous``
names the digest before it (its key, exact S3 version and SHA-256 of its bytes): the
digests of a tenant form a hash chain, the first one with ``previous`` null.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from audit_core.archive.exceptions import ArchiveConfigError, ArchiveFormatError
from audit_core.canonical import canonical_bytes
from audit_core.transparency.checkpoint import (
    Checkpoint,
    open_checkpoint,
    sign_checkpoint,
    tenant_origin,
)
from audit_core.transparency.merkle import Frontier
from audit_core.transparency.note import Signer, Verifier, sign_note, verify_note

FORMAT = "vigil-archive-digest/1"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def unb64(value: Any, what: str) -> bytes:
    try:
        decoded = base64.b64decode(str(value), validate=True)
    except ValueError:
        raise ArchiveFormatError(f"{what} is not base64") from None
    if len(decoded) != 32:
        raise ArchiveFormatError(f"{what} is {len(decoded)} bytes, not a SHA-256 hash")
    return decoded


class TreeState(Frontier):
    """The tenant's Merkle tree as its right edge, as a digest states it: written into
    each digest and read back, which is what lets the archiver resume, and a verifier
    check one segment, without reading the segments before it."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()):
        if len(hashes) != size.bit_count():
            raise ArchiveFormatError(
                f"a tree of {size} leaves has {size.bit_count()} frontier hashes, not {len(hashes)}"
            )
        super().__init__(size, hashes)

    def copy(self) -> TreeState:
        return TreeState(self.size, self.hashes)

    def as_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": b64(self.root()),
            "frontier": [b64(value) for value in self.hashes],
        }

    @classmethod
    def from_json(cls, value: Any) -> TreeState:
        try:
            size = int(value["size"])
            hashes = [unb64(h, "a frontier hash") for h in value["frontier"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ArchiveFormatError(f"the digest's tree is malformed ({error})") from None
        state = cls(size, hashes)
        if unb64(value.get("root"), "the tree root") != state.root():
            raise ArchiveFormatError("the digest's tree root is not the root of its frontier")
        return state


@dataclass(frozen=True)
class Attestation:
    """A signed checkpoint of the tenant's log and the proof that it covers a tree."""

    checkpoint: str
    """The signed note, exactly as signed."""
    consistency: list[bytes] = field(default_factory=list)


class Attestor(Protocol):
    def attest(self, tenant: str, size: int, root: bytes) -> Attestation | None:
        """A signed checkpoint whose tree extends the tree of ``size`` leaves with
        ``root``, with the consistency proof; None while none covers it yet."""


@dataclass(frozen=True)
class Link:
    """Where a digest is and what its bytes hash to: what the next digest names."""

    key: str
    version_id: str | None
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "version_id": self.version_id, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value: Any) -> Link | None:
        if value is None:
            return None
        try:
            return cls(str(value["key"]), value.get("version_id"), str(value["sha256"]))
        except (KeyError, TypeError, AttributeError) as error:
            raise ArchiveFormatError(f"the digest's previous link is malformed ({error})") from None


@dataclass(frozen=True)
class SegmentFacts:
    """What a digest states about its segment."""

    key: str
    version_id: str | None
    sha256: str
    gzip_sha256: str
    bytes: int
    records: int
    first_seq: int
    last_seq: int
    first_received_at: str
    last_received_at: str
    first_prev_hash: str
    last_hash: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, value: Any) -> SegmentFacts:
        try:
            return cls(**{name: value[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as error:
            raise ArchiveFormatError(f"malformed segment facts in the digest ({error})") from None


@dataclass(frozen=True)
class Digest:
    tenant: str
    origin: str
    segment: SegmentFacts
    tree: TreeState
    checkpoint: str
    consistency: list[bytes]
    previous: Link | None

    def text(self) -> str:
        """The note text that is signed: canonical JSON and a newline."""
        body = {
            "format": FORMAT,
            "tenant": self.tenant,
            "origin": self.origin,
            "segment": self.segment.as_json(),
            "tree": self.tree.as_json(),
            "checkpoint": self.checkpoint,
            "consistency": [b64(value) for value in self.consistency],
            "previous": self.previous.as_json() if self.previous else None,
        }
        return canonical_bytes(body).decode() + "\n"

    @classmethod
    def from_text(cls, text: str, key: str) -> Digest:
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            raise ArchiveFormatError(f"{key}: the digest is not JSON ({error})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ArchiveFormatError(f"{key}: not a {FORMAT} digest")
        try:
            return cls(
                tenant=str(body["tenant"]),
                origin=str(body["origin"]),
                segment=SegmentFacts.from_json(body["segment"]),
                tree=TreeState.from_json(body["tree"]),
                checkpoint=str(body["checkpoint"]),
                consistency=[unb64(h, "a consistency hash") for h in body["consistency"]],
                previous=Link.from_json(body["previous"]),
            )
        except ArchiveFormatError as error:
            raise ArchiveFormatError(f"{key}: {error}") from None
        except (KeyError, TypeError) as error:
            raise ArchiveFormatError(f"{key}: the digest lacks {error}") from None


class LogKeys:
    """The log's Ed25519 signing key and the verifier keys trusted for it, used under
    each tenant's origin as key name (as checkpoints are)."""

    def __init__(
        self, log_origin: str, signer: Signer | None = None, verifiers: Sequence[Verifier] = ()
    ):
        self.log_origin = log_origin
        self.signer = signer
        trusted = list(verifiers)
        if signer is not None and signer.verifier not in trusted:
            trusted.append(signer.verifier)
        self.verifiers = tuple(trusted)

    def origin(self, tenant: str) -> str:
        return tenant_origin(self.log_origin, tenant)

    def sign(self, tenant: str, text: str) -> str:
        """``text`` as a signed note under the tenant's origin."""
        if self.signer is None:
            raise ArchiveConfigError(
                "the archive signs its digests with the log's signing key: set "
                "VIGIL_SIGNING_KEY_FILE (`vigil keys signing-generate` writes one)"
            )
        return sign_note(text, self.signer.named(self.origin(tenant)))

    def open(self, tenant: str, note: str) -> str:
        """The text of a note signed under the tenant's origin by a trusted key."""
        origin = self.origin(tenant)
        return verify_note(note, [key.named(origin) for key in self.verifiers]).text

    def sign_checkpoint(self, tenant: str, size: int, root: bytes) -> str:
        if self.signer is None:
            raise ArchiveConfigError("no signing key to sign a checkpoint with")
        return sign_checkpoint(Checkpoint(self.origin(tenant), size, root), self.signer)

    def open_checkpoint(self, note: str) -> Checkpoint:
        return open_checkpoint(note, self.verifiers)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
