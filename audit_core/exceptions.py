"""Errors raised by the ledger. ``api/`` maps them to HTTP statuses and exit codes.

LedgerError
├── InvalidEventError        input refused; names the event index and the field
├── DuplicateEventIdError    an id reused with different content (or twice in one batch)
├── EventNotFoundError       no record with that id or seq in the tenant's log
├── TenantNotFoundError      the tenant has no log yet
├── DamagedLogError          the stored log cannot be replayed (run vigil verify)
└── LedgerBusyError          concurrent writers kept winning; nothing was recorded
"""

from __future__ import annotations

from dataclasses import dataclass


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong with one event: where (index, dotted field path) and why."""

    index: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"event {self.index}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.message}"


class InvalidEventError(LedgerError):
    """One or more events of a batch are malformed; nothing of the batch was recorded."""

    def __init__(self, problems: list[FieldProblem]):
        self.problems = problems
        shown = "; ".join(str(problem) for problem in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(shown + more)


class DuplicateEventIdError(LedgerError):
    """An event id that is already recorded with other content, or repeated in a batch."""

    def __init__(self, tenant: str, event_id: str, index: int, reason: str):
        self.tenant = tenant
        self.event_id = event_id
        self.index = index
        super().__init__(f"event {index}, field 'id': id {event_id!r} {reason}")


class EventNotFoundError(LedgerError):
    def __init__(self, tenant: str, key: str):
        self.tenant = tenant
        self.key = key
        super().__init__(f"no event {key} in the log of tenant {tenant!r}")


class TenantNotFoundError(LedgerError):
    def __init__(self, tenant: str):
        self.tenant = tenant
        super().__init__(f"tenant {tenant!r} has no audit log")


class LedgerBusyError(LedgerError):
    def __init__(self, tenant: str, attempts: int):
        super().__init__(
            f"gave up appending to tenant {tenant!r} after {attempts} attempts lost to "
            "concurrent writers; nothing was recorded, retry the request"
        )


class DamagedLogError(LedgerError):
    """A tenant's stored log cannot be appended to or summarised: rows that replaying it
    needs are missing or altered. ``vigil verify`` says where."""

    def __init__(self, tenant: str, reason: str):
        self.tenant = tenant
        super().__init__(
            f"the stored log of tenant {tenant!r} is damaged: {reason}; nothing is "
            f"appended to it. Run `vigil verify --tenant {tenant}` to locate the damage"
        )
