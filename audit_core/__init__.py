"""Vigil's ledger: tenants' append-only, hash-chained audit logs on eventsourcing."""

from audit_core.application import Ledger, PreparedBatch, Record
from audit_core.canonical import GENESIS_HASH, canonical_bytes, record_hash
from audit_core.exceptions import (
    DamagedLogError,
    DuplicateEventIdError,
    EventNotFoundError,
    FieldProblem,
    InvalidEventError,
    LedgerBusyError,
    LedgerError,
    TenantNotFoundError,
)
from audit_core.schema import AuditEventIn, Limits
from audit_core.verify import ChainBreak, Reason, TenantReport, verify, verify_tenant

__all__ = [
    "GENESIS_HASH",
    "AuditEventIn",
    "ChainBreak",
    "DamagedLogError",
    "DuplicateEventIdError",
    "EventNotFoundError",
    "FieldProblem",
    "InvalidEventError",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "Limits",
    "PreparedBatch",
    "Reason",
    "Record",
    "TenantNotFoundError",
    "TenantReport",
    "canonical_bytes",
    "record_hash",
    "verify",
    "verify_tenant",
]
