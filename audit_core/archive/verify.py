"""Verify an archive from S3 alone, and compare it with a ledger when one is at hand.

For each tenant, the digests are read in seq order and each one is checked:

1. its signature, by a trusted key under the tenant's origin (the signed-note rules);
2. its link: it names the digest before it (key, version, SHA-256 of its bytes), the
   first one names none, and their seq ranges follow each other without overlap;
3. its segment, read at the exact version the digest names and hashed here (the store's
   checksum is never trusted): SHA-256 of the uncompressed body, one canonical record
   per line with the right tenant and seq, each ``prev_hash`` the SHA-256 of the line
   before (the previous segment's last hash for the first line);
4. its tree: the previous digest's frontier plus the segment's leaves gives the tree the
   digest states (size, root, frontier);
5. its checkpoint: signed by a trusted key under the tenant's origin, of a tree at
   least as large, and the consistency proof shows that this tree is a prefix of the
   checkpoint's, so every record of the segment is in the checkpoint's tree.

Findings are kept apart by kind: a *missing* segment (a digest names it, S3 does not have
it), an *invalid* segment (there, but not what its digest says), a *gap* (seqs that no
digest covers), a *missing* or *invalid* digest, a *replaced* object (a newer version
or a delete marker was put over the archived version, which is still there and is what
verify and restore read), and, with a ledger, records the ledger
holds that the archive lacks (``unarchived``: normal for the newest records, within a
segment interval; ``not_archived`` once the oldest of them was received longer ago than
the grace given) or that differ between the two (``mismatch``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audit_core.application import Ledger
from audit_core.archive.digests import Digest, Link, LogKeys, TreeState, sha256_hex
from audit_core.archive.exceptions import ArchiveFormatError
from audit_core.archive.s3 import ArchiveBucket, Version
from audit_core.archive.segments import (
    ObjectName,
    clean_prefix,
    decompress,
    parse_key,
    parse_line,
    split_lines,
    tenant_prefix,
)
from audit_core.canonical import GENESIS_HASH
from audit_core.schema import is_tenant_name
from audit_core.transparency.exceptions import TransparencyError
from audit_core.transparency.merkle import verify_consistency


class Kind(enum.StrEnum):
    MISSING_SEGMENT = "missing_segment"
    INVALID_SEGMENT = "invalid_segment"
    GAP = "gap"
    MISSING_DIGEST = "missing_digest"
    INVALID_DIGEST = "invalid_digest"
    REPLACED = "replaced"
    NOT_ARCHIVED = "not_archived"
    UNARCHIVED = "unarchived"
    MISMATCH = "mismatch"


WARNINGS = frozenset({Kind.UNARCHIVED})
"""Kinds that do not fail verification: the newest records wait for their segment."""


@dataclass(frozen=True)
class Finding:
    tenant: str
    kind: Kind
    first_seq: int | None
    last_seq: int | None
    key: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "kind": self.kind.value}

    def __str__(self) -> str:
        seqs = ""
        if self.first_seq is not None:
            seqs = f" seq {self.first_seq}" + (
                f"-{self.last_seq}" if self.last_seq not in (None, self.first_seq) else ""
            )
        where = f" ({self.key})" if self.key else ""
        return f"{self.kind.value}{seqs}{where}: {self.detail}"


@dataclass
class TenantArchiveReport:
    tenant: str
    segments: int = 0
    records: int = 0
    """Records in segments that verified."""
    next_seq: int = 0
    """The seq after the last one the digests cover."""
    checkpoint_size: int | None = None
    """Size of the newest checkpoint that a verified digest names."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(finding.kind in WARNINGS for finding in self.findings)

    def add(
        self, kind: Kind, first: int | None, last: int | None, key: str | None, detail: str
    ) -> None:
        self.findings.append(Finding(self.tenant, kind, first, last, key, detail))

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "segments": self.segments,
            "records": self.records,
            "next_seq": self.next_seq,
            "checkpoint_size": self.checkpoint_size,
            "findings": [finding.as_dict() for finding in self.findings],
        }


Progress = Callable[[int], None]

Consumer = Callable[[Digest, list[bytes]], None]
"""Given each segment that verified (its digest and record lines), in seq order."""


@dataclass
class _Walk:
    """What is known after the digests checked so far."""

    next_seq: int = 0
    link: Link | None = None
    tree: TreeState | None = field(default_factory=TreeState)
    """None once a digest before could not be read: the frontier is then unknown."""
    last_hash: str | None = GENESIS_HASH


class ArchiveVerifier:
    def __init__(self, bucket: ArchiveBucket, keys: LogKeys, grace_seconds: float | None = None):
        """``grace_seconds``: how long a ledger record may wait to be archived before
        its absence fails verification (None: never, it is only noted)."""
        self.bucket = bucket
        self.keys = keys
        self.grace_seconds = grace_seconds
        self.prefix = bucket.settings.prefix
        self._consume: Consumer | None = None
        self._versions: dict[str, list[Version]] = {}

    def tenants(self) -> list[str]:
        """Every tenant with objects under the archive's prefix."""
        root = f"{clean_prefix(self.prefix)}/" if clean_prefix(self.prefix) else ""
        return sorted(name for name in self.bucket.folders(root) if is_tenant_name(name))

    def planned(self, tenants: list[str]) -> int:
        """How many records the digests of ``tenants`` cover, from their keys alone (a
        listing, no reads): the total for a progress bar."""
        total = 0
        for tenant in tenants:
            for key in self.bucket.keys(tenant_prefix(self.prefix, tenant)):
                name = parse_key(key)
                if name is not None and name.kind == "digest":
                    total += name.last_seq - name.first_seq + 1
        return total

    def verify(
        self,
        tenants: list[str] | None = None,
        ledger: Ledger | None = None,
        progress: Progress | None = None,
    ) -> list[TenantArchiveReport]:
        names = self.tenants() if tenants is None else tenants
        if ledger is not None and tenants is None:
            names = sorted(set(names) | set(ledger.tenants()))
        return [self.verify_tenant(name, ledger, progress) for name in names]

    def verify_tenant(
        self,
        tenant: str,
        ledger: Ledger | None = None,
        progress: Progress | None = None,
        consume: Consumer | None = None,
    ) -> TenantArchiveReport:
        report = TenantArchiveReport(tenant)
        self._consume = consume
        segments: dict[tuple[int, int], ObjectName] = {}
        digests: list[ObjectName] = []
        self._versions = {}
        for version in self.bucket.versions(tenant_prefix(self.prefix, tenant)):
            self._versions.setdefault(version.key, []).append(version)
        for key, versions in self._versions.items():
            name = parse_key(key)
            if name is None or name.tenant != tenant:
                continue
            if all(version.delete_marker for version in versions):
                continue
            if name.kind == "segment":
                segments[(name.first_seq, name.last_seq)] = name
            else:
                digests.append(name)
        digests.sort(key=lambda name: (name.first_seq, name.last_seq))
        digest_keys = {name.key for name in digests}
        walk = _Walk()
        attested: set[str] = set()
        for name in digests:
            if name.first_seq < walk.next_seq:
                report.add(
                    Kind.INVALID_DIGEST,
                    name.first_seq,
                    name.last_seq,
                    name.key,
                    f"overlaps seqs already covered (up to {walk.next_seq - 1})",
                )
                continue
            if name.first_seq > walk.next_seq:
                report.add(
                    Kind.GAP,
                    walk.next_seq,
                    name.first_seq - 1,
                    None,
                    "no digest covers these seqs",
                )
                walk.tree, walk.last_hash = None, None
            attested_key = self._check(report, name, walk, digest_keys, ledger, progress)
            if attested_key:
                attested.add(attested_key)
            walk.next_seq = name.last_seq + 1
        report.next_seq = walk.next_seq
        digest_ranges = {(name.first_seq, name.last_seq) for name in digests}
        for (first, last), name in sorted(segments.items()):
            # A segment whose digest is there but bad is reported with that digest.
            if name.key not in attested and (first, last) not in digest_ranges:
                report.add(
                    Kind.MISSING_DIGEST,
                    first,
                    last,
                    name.key,
                    "a segment without a digest: its records are not attested",
                )
        if ledger is not None:
            self._compare_size(report, ledger)
        return report

    def _check(
        self,
        report: TenantArchiveReport,
        name: ObjectName,
        walk: _Walk,
        digest_keys: set[str],
        ledger: Ledger | None,
        progress: Progress | None,
    ) -> str | None:
        """Check one digest and its segment; return the segment key it attests."""
        tenant, first, last = report.tenant, name.first_seq, name.last_seq
        opened = self._open_digest(report, name)
        if opened is None:
            walk.tree, walk.last_hash, walk.link = None, None, None
            return None
        digest, this_link = opened
        facts = digest.segment
        if (facts.first_seq, facts.last_seq, digest.tenant) != (first, last, tenant):
            report.add(
                Kind.INVALID_DIGEST,
                first,
                last,
                name.key,
                f"says it covers seq {facts.first_seq}-{facts.last_seq} of "
                f"{digest.tenant!r}, its key says otherwise",
            )
            walk.tree, walk.last_hash, walk.link = None, None, None
            return None
        self._check_link(report, name, digest, walk, digest_keys)
        walk.link = this_link
        segment_ok = self._check_segment(report, digest, walk, ledger, progress)
        self._check_checkpoint(report, name, digest)
        walk.tree, walk.last_hash = digest.tree, facts.last_hash
        if segment_ok:
            report.segments += 1
            report.records += facts.records
        return facts.key

    def _open_digest(
        self, report: TenantArchiveReport, name: ObjectName
    ) -> tuple[Digest, Link] | None:
        """The newest version of a digest that opens with a trusted signature (and a
        ``replaced`` finding if that is not the current one)."""
        tenant, first, last = report.tenant, name.first_seq, name.last_seq
        versions = [v for v in self._versions.get(name.key, []) if not v.delete_marker]
        problem: str | None = None
        for version in versions:
            data = self.bucket.get(name.key, version.version_id)
            if data is None:
                continue
            try:
                digest = Digest.from_text(self.keys.open(tenant, data.decode()), name.key)
            except (UnicodeDecodeError, TransparencyError, ArchiveFormatError) as error:
                problem = str(error)
                continue
            if self._versions[name.key][0] is not version:
                self._replaced(report, name.key, version.version_id, first, last)
            return digest, Link(name.key, version.version_id, sha256_hex(data))
        if problem is None:
            report.add(Kind.MISSING_DIGEST, first, last, name.key, "listed but cannot be read")
        else:
            report.add(Kind.INVALID_DIGEST, first, last, name.key, problem)
        return None

    def _replaced(
        self,
        report: TenantArchiveReport,
        key: str,
        version_id: str | None,
        first: int | None,
        last: int | None,
    ) -> None:
        current = self._versions.get(key, [None])[0]
        what = (
            "a delete marker"
            if current is not None and current.delete_marker
            else "another version"
        )
        report.add(
            Kind.REPLACED,
            first,
            last,
            key,
            f"{what} was put over the archived version {version_id}, which is intact "
            "and is what verify and restore read",
        )

    def _check_link(
        self,
        report: TenantArchiveReport,
        name: ObjectName,
        digest: Digest,
        walk: _Walk,
        digest_keys: set[str],
    ) -> None:
        previous, first, last = digest.previous, name.first_seq, name.last_seq
        if first == 0:
            if previous is not None:
                report.add(
                    Kind.INVALID_DIGEST,
                    first,
                    last,
                    name.key,
                    "the first digest names a previous one",
                )
            return
        if previous is None:
            report.add(
                Kind.INVALID_DIGEST,
                first,
                last,
                name.key,
                "names no previous digest, but is not the first",
            )
            return
        if previous.key not in digest_keys:
            report.add(
                Kind.MISSING_DIGEST,
                None,
                None,
                previous.key,
                f"named as the previous digest by {name.key}, but not in the archive",
            )
            return
        expected = walk.link
        if expected is None:
            return  # the digest before could not be read; reported already
        if previous.key != expected.key:
            report.add(
                Kind.INVALID_DIGEST,
                first,
                last,
                name.key,
                f"names {previous.key} as the previous digest, but that is {expected.key}",
            )
        elif previous.sha256 != expected.sha256 and previous.version_id in (
            None,
            expected.version_id,
        ):
            report.add(
                Kind.INVALID_DIGEST,
                None,
                None,
                previous.key,
                f"its bytes hash to {expected.sha256}, but {name.key} recorded "
                f"{previous.sha256}: it was replaced",
            )

    def _check_segment(
        self,
        report: TenantArchiveReport,
        digest: Digest,
        walk: _Walk,
        ledger: Ledger | None,
        progress: Progress | None,
    ) -> bool:
        facts = digest.segment
        first, last = facts.first_seq, facts.last_seq

        def invalid(detail: str) -> bool:
            report.add(Kind.INVALID_SEGMENT, first, last, facts.key, detail)
            return False

        data = self.bucket.get(facts.key, facts.version_id)
        if progress is not None:
            progress(facts.records)
        current = self._versions.get(facts.key, [None])[0]
        if (
            data is not None
            and facts.version_id is not None
            and current is not None
            and current.version_id != facts.version_id
        ):
            self._replaced(report, facts.key, facts.version_id, first, last)
        if data is None:
            version = f" version {facts.version_id}" if facts.version_id else ""
            report.add(
                Kind.MISSING_SEGMENT,
                first,
                last,
                facts.key,
                f"the digest names it{version}; S3 does not have it",
            )
            return False
        try:
            body = decompress(data, facts.key)
        except ArchiveFormatError as error:
            return invalid(str(error))
        computed = sha256_hex(body)
        if computed != facts.sha256:
            return invalid(
                f"its content hashes to {computed}, its digest says {facts.sha256}: it was "
                "edited or replaced"
            )
        try:
            lines = split_lines(body, facts.key)
        except ArchiveFormatError as error:
            return invalid(str(error))
        if len(lines) != last - first + 1 or len(lines) != facts.records:
            return invalid(f"{len(lines)} records, the digest says {facts.records}")
        if walk.last_hash is not None and facts.first_prev_hash != walk.last_hash:
            return invalid("its first prev_hash is not the last hash of the segment before")
        prev_hash = facts.first_prev_hash
        tree = walk.tree.copy() if walk.tree is not None else None
        hashes: list[str] = []
        for index, line in enumerate(lines):
            seq = first + index
            try:
                record = parse_line(line, facts.key, index)
            except ArchiveFormatError as error:
                return invalid(str(error))
            if record.get("seq") != seq or record.get("tenant") != report.tenant:
                return invalid(
                    f"line {index + 1} holds seq {record.get('seq')!r} of {record.get('tenant')!r}"
                )
            if record.get("prev_hash") != prev_hash:
                return invalid(f"seq {seq}: prev_hash is not the hash of seq {seq - 1}")
            prev_hash = sha256_hex(line)
            hashes.append(prev_hash)
            if tree is not None:
                tree.extend_leaves((line,))
        if prev_hash != facts.last_hash:
            return invalid("its last record's hash is not the one its digest states")
        if tree is not None and (tree.size, tree.hashes) != (digest.tree.size, digest.tree.hashes):
            report.add(
                Kind.INVALID_DIGEST,
                first,
                last,
                None,
                "the tree it states is not the previous digest's tree with this segment's records",
            )
        if ledger is not None:
            self._compare_records(report, ledger, first, hashes)
        if self._consume is not None and report.ok:
            self._consume(digest, lines)
        return True

    def _check_checkpoint(
        self, report: TenantArchiveReport, name: ObjectName, digest: Digest
    ) -> None:
        first, last = digest.segment.first_seq, digest.segment.last_seq
        try:
            checkpoint = self.keys.open_checkpoint(digest.checkpoint)
        except TransparencyError as error:
            report.add(Kind.INVALID_DIGEST, first, last, name.key, f"its checkpoint: {error}")
            return
        if checkpoint.origin != self.keys.origin(report.tenant):
            report.add(
                Kind.INVALID_DIGEST,
                first,
                last,
                name.key,
                f"its checkpoint is of {checkpoint.origin!r}, not of this tenant's log",
            )
            return
        tree = digest.tree
        try:
            verify_consistency(
                tree.size, checkpoint.size, tree.root(), checkpoint.root, digest.consistency
            )
        except TransparencyError as error:
            report.add(
                Kind.INVALID_DIGEST,
                first,
                last,
                name.key,
                f"the checkpoint (size {checkpoint.size}) does not cover the segment: {error}",
            )
            return
        report.checkpoint_size = max(report.checkpoint_size or 0, checkpoint.size)

    # -- against a ledger ---------------------------------------------------------------

    def _compare_records(
        self, report: TenantArchiveReport, ledger: Ledger, first: int, hashes: list[str]
    ) -> None:
        stored = _ledger_hashes(ledger, report.tenant, first, len(hashes))
        for index, archived in enumerate(hashes):
            seq = first + index
            if index >= len(stored):
                report.add(
                    Kind.MISMATCH,
                    seq,
                    first + len(hashes) - 1,
                    None,
                    "archived, but the ledger does not hold these records",
                )
                return
            if stored[index] != archived:
                report.add(
                    Kind.MISMATCH,
                    seq,
                    seq,
                    None,
                    f"the ledger's record hashes to {stored[index]}, the archive's to {archived}",
                )
                return

    def _compare_size(self, report: TenantArchiveReport, ledger: Ledger) -> None:
        size = ledger.size(report.tenant)
        if size <= report.next_seq:
            return
        first = ledger.read(report.tenant, from_seq=report.next_seq, limit=1)
        received = first[0]["received_at"] if first else None
        age = time.time() - _epoch(received) if received else 0.0
        if self.grace_seconds is not None and age > self.grace_seconds:
            report.add(
                Kind.NOT_ARCHIVED,
                report.next_seq,
                size - 1,
                None,
                f"in the ledger, not in the archive, the oldest received {age:.0f} s ago: "
                "the archiver is stopped or far behind, or archived objects were removed",
            )
            return
        report.add(
            Kind.UNARCHIVED,
            report.next_seq,
            size - 1,
            None,
            "in the ledger, not (yet) in the archive: the newest wait for their segment",
        )


def _epoch(received_at: str) -> float:
    return datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp()


def _ledger_hashes(ledger: Ledger, tenant: str, first: int, count: int) -> list[str]:
    hashes: list[str] = []
    for records in _pages(ledger, tenant, first, count):
        hashes += [record["hash"] for record in records]
    return hashes


def _pages(ledger: Ledger, tenant: str, first: int, count: int) -> Iterator[list[dict[str, Any]]]:
    seq, end = first, first + count
    while seq < end:
        records = ledger.read(tenant, from_seq=seq, limit=min(1000, end - seq))
        if not records:
            return
        yield records
        seq = records[-1]["seq"] + 1
