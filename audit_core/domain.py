"""The tenant log: one aggregate per tenant whose event versions are the chain's positions.

The ``Opened`` event sits at version 0 and the record with ``seq`` n at version n + 1,
so the store's unique (originator id, version) key is what makes a fork impossible:
two writers that both append seq n collide on version n + 1 and one of them retries.
"""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

from audit_core.canonical import GENESIS_HASH, record_hash

_TENANT_NAMESPACE = uuid.UUID("6f1d8a4e-2b7c-5e0a-9c3d-7a1b2c3d4e5f")


def tenant_log_id(tenant: str) -> uuid.UUID:
    """Stable aggregate id of a tenant's log, so any process finds it without a lookup."""
    return uuid.uuid5(_TENANT_NAMESPACE, tenant)


SERVER_FIELDS = frozenset(("tenant", "seq", "received_at", "prev_hash", "hash"))
"""Fields the ledger adds to what a client sent."""


def client_content(record: dict[str, Any]) -> dict[str, Any]:
    """What the client sent, as normalised, of a stored record."""
    return {key: value for key, value in record.items() if key not in SERVER_FIELDS}


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

    def append(self, content: dict[str, Any], received_at: str) -> dict[str, Any]:
        """Chain ``content`` after the head; return the record with its ``hash``."""
        record = {
            **content,
            "tenant": self.tenant,
            "seq": self.next_seq,
            "received_at": received_at,
            "prev_hash": self.head_hash,
        }
        digest = record_hash(record)
        # trigger_event directly: the decorated method's argument coercion costs more
        # than the rest of an append.
        self.trigger_event(self.Recorded, record=record, hash=digest)
        return {**record, "hash": digest}

    @event(Recorded)
    def _recorded(self, record: dict[str, Any], hash: str) -> None:
        self.head_hash = hash
