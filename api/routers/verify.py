"""``/v1/verify``: recompute a tenant's hash chain from storage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.dependencies import ServicesDep, TenantParam, VerifyKey, audit_request, tenant_of
from api.schemas import ERRORS, ChainReport
from audit_core import verify_tenant

router = APIRouter(prefix="/v1/verify", tags=["verify"], responses=ERRORS)


@router.get("", response_model=ChainReport)
async def verify_chain(
    request: Request, key: VerifyKey, services: ServicesDep, tenant: TenantParam = None
) -> dict[str, Any]:
    """Check every record's hash and link; report the first bad seq, if any.

    Recorded as ``audit.verify`` after the check, so the check never covers itself.
    """
    tenant = tenant_of(key, tenant, services)
    report = await run_in_threadpool(verify_tenant, services.ledger, tenant)
    body = report.as_dict()
    await audit_request(
        services,
        request,
        key,
        tenant,
        "audit.verify",
        target={"type": "audit_trail", "id": tenant},
        metadata={"ok": report.ok, "records": report.records},
    )
    return body
