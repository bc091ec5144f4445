"""Response and request bodies of the API, as they appear in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.keys import MAX_DESCRIPTION_CHARS, Role
from audit_core.schema import (
    STORABLE_TEXT_PATTERN,
    TENANT_PATTERN,
    ActorIn,
    Outcome,
    Source,
    TargetIn,
)


class AuditRecord(BaseModel):
    """A recorded audit event: what the client sent plus the ledger's fields."""

    model_config = ConfigDict(extra="allow")

    id: str
    tenant: str
    seq: int = Field(description="0-based position in the tenant's log, gap-free.")
    occurred_at: str
    received_at: str = Field(description="Server clock when the event was recorded.")
    actor: ActorIn
    action: str
    target: TargetIn | None = None
    outcome: Outcome
    source: Source
    request_id: str | None = None
    metadata: dict[str, Any]
    changes: dict[str, Any]
    prev_hash: str = Field(description="hash of the record at seq - 1 (64 zeros at seq 0).")
    hash: str = Field(description="SHA-256 of the RFC 8785 canonical JSON of the record.")


class RecordBatch(BaseModel):
    records: list[AuditRecord]


class RecordPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class Problem(BaseModel):
    index: int = Field(description="Index of the event in the batch (0 for a single event).")
    field: str = Field(description="Dotted path of the field at fault.")
    message: str


class ProblemDetails(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="about:blank: see title.")
    title: str = Field(description="The HTTP status's phrase.")
    status: int
    detail: str = Field(description="What is wrong and how to fix it.")
    problems: list[Problem] | None = Field(
        default=None, description="Every event (by index) and field at fault."
    )


ErrorBody = ProblemDetails
"""The name the routers' ``responses`` use."""


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_PATTERN)
    roles: list[Role] = Field(min_length=1)
    expires_at: datetime | None = None
    networks: list[str] = Field(default_factory=list, description="CIDR allowlist.")
    description: str = Field(
        default="",
        max_length=MAX_DESCRIPTION_CHARS,
        pattern=STORABLE_TEXT_PATTERN,
        description="What the key is for; no U+0000.",
    )
    all_tenants: bool = Field(
        default=False,
        description="An operator key: its roles apply to every tenant. Only an "
        "all-tenants admin key may create one.",
    )


class KeyOut(BaseModel):
    key_id: str
    tenant: str
    roles: list[Role]
    created_at: datetime
    expires_at: datetime | None
    networks: list[str]
    revoked_at: datetime | None
    description: str
    all_tenants: bool = False


class KeyCreated(BaseModel):
    key: KeyOut
    token: str = Field(description="The API key. It is shown only this once.")


class ChainReport(BaseModel):
    tenant: str
    ok: bool
    records: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str | None = None
    detail: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid API key."},
    403: {"model": ErrorBody, "description": "The key lacks the role, tenant or network."},
}
