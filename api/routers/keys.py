"""``/v1/keys``: admin management of API keys; every change is recorded in the ledger."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from api.dependencies import (
    AdminKey,
    ServicesDep,
    TenantParam,
    audit_request,
    forbidden,
    tenant_of,
)
from api.keys import ApiKey
from api.schemas import ERRORS, ErrorBody, KeyCreate, KeyCreated, KeyOut
from api.services import Services

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERRORS)


async def _audit(
    services: Services, request: Request, admin: ApiKey, changed: ApiKey, action: str
) -> None:
    await audit_request(
        services,
        request,
        admin,
        changed.tenant,
        action,
        {"type": "api_key", "id": changed.key_id},
        changed.audit_metadata(),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses={422: {"model": ErrorBody}},
)
async def create_key(
    request: Request, spec: KeyCreate, admin: AdminKey, services: ServicesDep
) -> dict[str, Any]:
    """Create a key of the admin key's own tenant (an all-tenants key: of any tenant);
    its token is in this response and nowhere else."""
    tenant_of(admin, spec.tenant, services, creates=True)
    if spec.all_tenants and not admin.all_tenants:
        raise forbidden(services, admin, f"API key {admin.key_id} may not create all-tenants keys")
    key, token = await run_in_threadpool(
        lambda: services.keys.create(
            spec.tenant,
            [r.value for r in spec.roles],
            expires_at=spec.expires_at,
            networks=spec.networks,
            description=spec.description,
            all_tenants=spec.all_tenants,
        )
    )
    await _audit(services, request, admin, key, "api_key.create")
    return {"key": key.public(), "token": token}


@router.get("", response_model=list[KeyOut])
async def list_keys(
    admin: AdminKey, services: ServicesDep, tenant: TenantParam = None
) -> list[dict[str, Any]]:
    """Keys (never their tokens or hashes): of the key's own tenant, or of the tenant
    named; an all-tenants key naming none lists every tenant's."""
    if tenant is not None or not admin.all_tenants:
        tenant = tenant_of(admin, tenant, services)
    keys = await run_in_threadpool(services.keys.list, tenant)
    return [key.public() for key in keys]


@router.delete("/{key_id}", response_model=KeyOut, responses={404: {"model": ErrorBody}})
async def revoke_key(
    request: Request, key_id: str, admin: AdminKey, services: ServicesDep
) -> dict[str, Any]:
    """Revoke a key: it is refused from now on (other API processes: within
    VIGIL_KEY_CACHE_SECONDS)."""
    target = await run_in_threadpool(services.keys.get, key_id)
    tenant_of(admin, target.tenant, services, creates=True)
    if target.all_tenants and not admin.all_tenants:
        raise forbidden(services, admin, f"API key {admin.key_id} may not revoke {key_id}")
    key, revoked = await run_in_threadpool(services.keys.revoke, key_id)
    services.forget_key(key_id)
    if revoked:  # revoking a revoked key records nothing more
        await _audit(services, request, admin, key, "api_key.revoke")
    return key.public()
