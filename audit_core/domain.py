"""The tenant log: one aggregate per tenant whose event versions are the chain's positions.

The ``Opened`` event sits at version 0 and the record with ``seq`` n at version n + 1,
so the store's unique (originator id, version) key is what makes a fork impossible:
two writers that both append seq n collide on version n + 1 and one of them retries.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from audit_core.canonical import GENESIS_HASH, canonical_bytes
from audit_core.record import SERVER_FIELDS
from audit_core.schema import format_timestamp

_TENANT_NAMESPACE = uuid.UUID("6f1d8a4e-2b7c-5e0a-9c3d-7a1b2c3d4e5f")


def tenant_log_id(tenant: str) -> uuid.UUID:
    """Stable aggregate id of a tenant's log, so any process finds it without a lookup."""
    return uuid.uuid5(_TENANT_NAMESPACE, tenant)


def client_content(record: dict[str, Any]) -> dict[str, Any]:
    """What the client sent, as normalised, of a stored record."""
    return {key: value for key, value in record.items() if key not in SERVER_FIELDS}


RECORD_JSON = "record_json"
"""Key, in a ``Recorded`` event made by ``append``, of the JSON bytes to store its record
as: the canonical bytes, unless the record holds floats, which canonical JSON may spell
as integers (``1.0`` as ``1``), so that they would not read back as floats."""


def version_of(seq: int) -> int:
    return seq + 1


class TenantLog(Aggregate):
    """Append-only, hash-chained audit log of one tenant."""

    INITIAL_VERSION = 0

    class Opened(Aggregate.Created):
        tenant: str

    class Recorded(Aggregate.Event):
        record: dict[str, Any]
        hash: str

    @classmethod
    def create_id(cls, tenant: str) -> uuid.UUID:
        return tenant_log_id(tenant)

    @event(Opened)
    def __init__(self, tenant: str):
        self.tenant = tenant
        self.head_hash = GENESIS_HASH

    @property
    def next_seq(self) -> int:
        return self.version

    def append(
        self,
        contents: list[dict[str, Any]],
        received: datetime,
        with_floats: Collection[int] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Chain ``contents`` after the head; return their records with ``hash``.

        ``with_floats``: indexes of the contents holding a float, as validation found.
        """
        received_at = format_timestamp(received)
        tenant, log_id = self.tenant, self.id
        version, head_hash = self.version, self.head_hash
        recorded_type = self.Recorded
        records = []
        for index, content in enumerate(contents):
            record = {
                **content,
                "tenant": tenant,
                "seq": version,
                "received_at": received_at,
                "prev_hash": head_hash,
            }
            floats = index in with_floats
            canonical = canonical_bytes(record, may_hold_floats=floats)
            head_hash = hashlib.sha256(canonical).hexdigest()
            version += 1
            # What trigger_event() and mutate() do, less a clock read, keyword filtering
            # and checks per event that cost more than the hashing; the canonical bytes
            # ride along so that storing them needs no second encoding.
            recorded = object.__new__(recorded_type)
            object.__setattr__(
                recorded,
                "__dict__",
                {
                    "originator_id": log_id,
                    "originator_version": version,
                    "timestamp": received,
                    "record": record,
                    "hash": head_hash,
                    RECORD_JSON: None if floats else canonical,
                },
            )
            self.pending_events.append(recorded)
            records.append({**record, "hash": head_hash})
        self.version, self.modified_on, self.head_hash = version, received, head_hash
        return records

    @event(Recorded)
    def _recorded(self, record: dict[str, Any], hash: str) -> None:
        self.head_hash = hash
