"""Rebuild tenants' ledgers into an empty database from the archive, then prove that
what was written is what the archived checkpoints cover.

Each tenant's archive is verified first (as ``archive verify`` does); nothing is written
unless all of it verifies. The records are then written segment by segment, as the
ledger stores them (same seq, ``received_at``, ``prev_hash`` and ``hash``; the id index
rebuilt under this database's key), and checked again as they are read from S3. Last,
the restored log is read back from the database: every record must hash to its
``hash``, and the Merkle tree over it must have, at the end of each segment, the root
that segment's digest states, which is proven consistent with a signed checkpoint.

Records newer than the archive's last segment are not in S3 and are not restored.
Records holding floats come back with the canonical spelling of their numbers (``1.0``
as ``1``): the canonical bytes, and so every hash, are unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from audit_core.application import Ledger
from audit_core.archive.digests import Digest, LogKeys, TreeState, b64
from audit_core.archive.exceptions import RestoreError
from audit_core.archive.s3 import ArchiveBucket
from audit_core.archive.verify import ArchiveVerifier, Progress
from audit_core.canonical import canonical_bytes
from audit_core.domain import RECORD_JSON, TenantLog, tenant_log_id
from audit_core.persistence import IndexedId


@dataclass(frozen=True)
class RestoreReport:
    tenant: str
    records: int
    segments: int
    tree_size: int
    root: str
    """Base64 Merkle root of the restored log, recomputed from the database."""
    checkpoint_size: int | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Restorer:
    def __init__(self, bucket: ArchiveBucket, keys: LogKeys):
        self.verifier = ArchiveVerifier(bucket, keys)

    def restore(
        self,
        ledger: Ledger,
        tenants: list[str] | None = None,
        progress: Progress | None = None,
        verify_progress: Progress | None = None,
    ) -> list[RestoreReport]:
        existing = ledger.tenants()
        if existing:
            raise RestoreError(
                f"the database already holds the logs of {', '.join(existing[:5])}"
                + (" and others" if len(existing) > 5 else "")
                + "; restore into an empty database (a new SQLite file or PostgreSQL schema)"
            )
        names = self.verifier.tenants() if tenants is None else tenants
        if not names:
            raise RestoreError("the archive holds no tenant under this prefix")
        for name in names:
            report = self.verifier.verify_tenant(name, progress=verify_progress)
            if not report.ok:
                first = next(str(f) for f in report.findings)
                raise RestoreError(
                    f"the archive of tenant {name!r} does not verify ({first}); nothing was "
                    "restored: `vigil archive verify` lists every problem"
                )
            if report.segments == 0:
                raise RestoreError(f"the archive holds no segment of tenant {name!r}")
        return [self._restore_tenant(ledger, name, progress) for name in names]

    def _restore_tenant(
        self, ledger: Ledger, tenant: str, progress: Progress | None
    ) -> RestoreReport:
        writer = _LogWriter(ledger, tenant)
        boundaries: list[tuple[int, bytes]] = []

        def write(digest: Digest, lines: list[bytes]) -> None:
            writer.write(digest.segment.first_seq, lines)
            boundaries.append((digest.tree.size, digest.tree.root()))
            if progress is not None:
                progress(len(lines))

        report = self.verifier.verify_tenant(tenant, consume=write)
        if not report.ok:
            raise RestoreError(
                f"the archive of tenant {tenant!r} changed while it was restored "
                f"({report.findings[0]}); the database holds a partial log: drop it"
            )
        tree = _prove(ledger, tenant, boundaries)
        return RestoreReport(
            tenant,
            report.records,
            report.segments,
            tree.size,
            b64(tree.root()),
            report.checkpoint_size,
        )


class _LogWriter:
    """Stores archived records as the ledger stores records it appends itself."""

    def __init__(self, ledger: Ledger, tenant: str):
        self.ledger = ledger
        self.log = TenantLog(tenant)
        # The id index is keyed with this database's secret, which only the ledger holds.
        self.id_key: Callable[[str], bytes] = ledger._id_key

    def write(self, first_seq: int, lines: list[bytes]) -> None:
        log = self.log
        if first_seq != log.next_seq:
            raise RestoreError(f"segment at seq {first_seq} follows seq {log.next_seq - 1}")
        indexed: list[tuple[UUID, IndexedId]] = []
        recorded_type = TenantLog.Recorded
        last_hash, received = log.head_hash, None
        for offset, line in enumerate(lines):
            record = orjson.loads(line)
            seq = first_seq + offset
            last_hash = hashlib.sha256(line).hexdigest()
            received = datetime.fromisoformat(record["received_at"].replace("Z", "+00:00"))
            event = object.__new__(recorded_type)
            object.__setattr__(
                event,
                "__dict__",
                {
                    "originator_id": log.id,
                    "originator_version": seq + 1,
                    "timestamp": received,
                    "record": record,
                    "hash": last_hash,
                    RECORD_JSON: line,
                },
            )
            log.pending_events.append(event)
            indexed.append((log.id, IndexedId(self.id_key(record["id"]), seq)))
        log.version = first_seq + len(lines)
        log.head_hash = last_hash
        if received is not None:
            log.modified_on = received
        self.ledger.save(log, indexed_ids=indexed)


def _prove(ledger: Ledger, tenant: str, boundaries: list[tuple[int, bytes]]) -> TreeState:
    """Read the restored log back; its tree must have each digest's root."""
    tree = TreeState()
    expected = iter(boundaries)
    size, root = next(expected, (None, None))
    for versions, states in ledger.ledger_recorder.record_pages(tenant_log_id(tenant)):
        for version, state in zip(versions, states, strict=True):
            decoded = ledger.ledger_mapper.decode_recorded(state)
            line = canonical_bytes(decoded["record"])
            if version != tree.size + 1 or hashlib.sha256(line).hexdigest() != decoded["hash"]:
                raise RestoreError(
                    f"tenant {tenant!r}: the restored record at seq {version - 1} does not "
                    "read back as it was written"
                )
            tree.extend_leaves((line,))
            if tree.size == size:
                if tree.root() != root:
                    raise RestoreError(
                        f"tenant {tenant!r}: the restored tree of size {size} does not have "
                        "the root its digest states"
                    )
                size, root = next(expected, (None, None))
    if size is not None:
        raise RestoreError(
            f"tenant {tenant!r}: the restored log ends at seq {tree.size - 1}, the archive "
            f"at seq {boundaries[-1][0] - 1}"
        )
    return tree
