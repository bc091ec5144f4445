"""Writing a tenant's archive: segments and their digests, after the chain head that
S3 holds.

S3 is the archive's only state: the head of a tenant's chain (last seq, last hash, tree
frontier, last digest) is read back from its newest digest, so any process can take
over, a crash loses nothing but what was not yet written, and records already archived
are recognised by their seq and never written twice.

A segment is written before its digest. A crash between the two leaves a segment with
no digest; the next writer finds it (a segment key starting at the head's next seq),
ends its own segment at the same seq, sees the same bytes (same checksum) and writes
only the digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from audit_core.archive.checkpoints import SelfAttestor
from audit_core.archive.digests import (
    Attestor,
    Digest,
    Link,
    LogKeys,
    SegmentFacts,
    TreeState,
    b64,
    sha256_hex,
)
from audit_core.archive.exceptions import ArchiveFormatError
from audit_core.archive.s3 import ArchiveBucket, Stored
from audit_core.archive.segments import (
    DIGEST_SUFFIX,
    ObjectName,
    Segment,
    compress,
    parse_key,
    segment_start_prefix,
    tenant_prefix,
)
from audit_core.canonical import GENESIS_HASH
from audit_core.transparency.exceptions import TransparencyError

SEGMENT_TYPE = "application/x-ndjson"
DIGEST_TYPE = "text/plain; charset=utf-8"


@dataclass
class ChainHead:
    """Where a tenant's archive ends."""

    tenant: str
    next_seq: int = 0
    last_hash: str = GENESIS_HASH
    tree: TreeState = field(default_factory=TreeState)
    link: Link | None = None
    """The newest digest."""
    unchecked: bool = True
    """Read from S3 and not yet checked for a segment written without its digest."""


class ArchiveWriter:
    """Writes segments and digests of every tenant to one bucket and prefix."""

    def __init__(
        self,
        bucket: ArchiveBucket,
        keys: LogKeys,
        attestor: Attestor | None = None,
    ):
        """``attestor`` finds the signed checkpoint that covers a segment; by default the
        archive signs one itself (:class:`SelfAttestor`)."""
        self.bucket = bucket
        self.prefix = bucket.settings.prefix
        self.keys = keys
        self.attestor: Attestor = attestor or SelfAttestor(keys)

    # -- the head -----------------------------------------------------------------------

    def load_head(self, tenant: str, near: str | None = None) -> ChainHead:
        """The head of the tenant's chain as S3 holds it. ``near`` (the ``received_at``
        of a record about to be archived) lets the newest digests be found by listing
        the last few days instead of the whole archive."""
        newest = None
        if near is not None:
            day = datetime.fromisoformat(near.replace("Z", "+00:00")) - timedelta(days=2)
            newest = self._newest_digest(tenant, start_after=self._day_key(tenant, day))
        if newest is None:
            newest = self._newest_digest(tenant, start_after="")
        if newest is None:
            return ChainHead(tenant)
        fetched = self.bucket.fetch(newest.key)
        if fetched is None:  # listed, then gone: S3 is inconsistent or being tampered with
            raise ArchiveFormatError(f"{newest.key}: listed but cannot be read")
        data, version_id = fetched
        digest = self.open_digest(tenant, newest.key, data)
        return ChainHead(
            tenant,
            next_seq=digest.segment.last_seq + 1,
            last_hash=digest.segment.last_hash,
            tree=digest.tree,
            link=Link(newest.key, version_id, sha256_hex(data)),
        )

    def _day_key(self, tenant: str, day: datetime) -> str:
        return f"{tenant_prefix(self.prefix, tenant)}{day:%Y/%m/%d}/"

    def _newest_digest(self, tenant: str, start_after: str) -> ObjectName | None:
        newest: ObjectName | None = None
        for key in self.bucket.keys(tenant_prefix(self.prefix, tenant), start_after):
            if not key.endswith(DIGEST_SUFFIX):
                continue
            name = parse_key(key)
            if name is not None and (newest is None or name.last_seq > newest.last_seq):
                newest = name
        return newest

    def open_digest(self, tenant: str, key: str, data: bytes) -> Digest:
        """A digest whose signature by the tenant's key checks out."""
        try:
            text = self.keys.open(tenant, data.decode())
        except UnicodeDecodeError:
            raise ArchiveFormatError(f"{key}: the digest is not UTF-8") from None
        except TransparencyError as error:
            raise ArchiveFormatError(f"{key}: {error}") from None
        return Digest.from_text(text, key)

    def written_end(self, head: ChainHead, first_received_at: str) -> int | None:
        """The last seq of a segment that starts at the head but has no digest (a crash
        came between the two puts), or None."""
        if not head.unchecked:
            return None
        prefix = segment_start_prefix(self.prefix, head.tenant, head.next_seq, first_received_at)
        ends = [
            name.last_seq
            for name in map(parse_key, self.bucket.keys(prefix))
            if name is not None and name.kind == "segment"
        ]
        return max(ends) if ends else None

    # -- writing ------------------------------------------------------------------------

    def write(self, head: ChainHead, segment: Segment) -> ChainHead | None:
        """Write the segment and its digest; return the new head, or None (and write
        nothing) while no signed checkpoint covers the segment yet."""
        if segment.first_seq != head.next_seq:
            raise ValueError(
                f"segment of {segment.tenant} starts at seq {segment.first_seq}, the "
                f"archive at {head.next_seq}"
            )
        tree = head.tree.copy()
        tree.extend_leaves(segment.lines)
        attestation = self.attestor.attest(segment.tenant, tree.size, tree.root())
        if attestation is None:
            return None
        body = segment.body()
        data = compress(body)
        key = segment.key(self.prefix)
        stored = self._put_once(key, data, SEGMENT_TYPE, head.unchecked)
        last_hash = sha256_hex(segment.lines[-1])
        digest = Digest(
            tenant=segment.tenant,
            origin=self.keys.origin(segment.tenant),
            segment=SegmentFacts(
                key=key,
                version_id=stored.version_id,
                sha256=sha256_hex(body),
                gzip_sha256=sha256_hex(data),
                bytes=len(body),
                records=len(segment.lines),
                first_seq=segment.first_seq,
                last_seq=segment.last_seq,
                first_received_at=segment.first_received_at,
                last_received_at=segment.last_received_at,
                first_prev_hash=head.last_hash,
                last_hash=last_hash,
            ),
            tree=tree,
            checkpoint=attestation.checkpoint,
            consistency=attestation.consistency,
            previous=head.link,
        )
        note = self.keys.sign(segment.tenant, digest.text()).encode()
        digest_key = segment.key(self.prefix, "digest")
        written = self.bucket.put(digest_key, note, DIGEST_TYPE)
        return ChainHead(
            segment.tenant,
            next_seq=segment.last_seq + 1,
            last_hash=last_hash,
            tree=tree,
            link=Link(digest_key, written.version_id, sha256_hex(note)),
            unchecked=False,
        )

    def _put_once(self, key: str, data: bytes, content_type: str, check: bool) -> Stored:
        """Put, unless ``check`` finds the same bytes already there (a crash's leftover)."""
        if check:
            there = self.bucket.head(key)
            checksum = b64(hashlib.sha256(data).digest())
            if there is not None and there.checksum_sha256 == checksum:
                return there
        return self.bucket.put(key, data, content_type)
