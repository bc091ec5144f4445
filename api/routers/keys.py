"""``/v1/keys``: admin management of API keys; every change is recorded in the ledger."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from api.dependencies import AdminKey, ServicesDep, TenantParam, audit_request
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
    """Create a key; its token is in this response and nowhere else."""
    key, token = await run_in_threadpool(
        lambda: services.keys.create(
            spec.tenant,
            [r.value for r in spec.roles],
            expires_at=spec.expires_at,
            networks=spec.networks,
            description=spec.description,
        )
    )
    await _audit(services, request, admin, key, "api_key.create")
    return {"key": key.public(), "token": token}


@router.get("", response_model=list[KeyOut])
async def list_keys(
    admin: AdminKey, services: ServicesDep, tenant: TenantParam = None
) -> list[dict[str, Any]]:
    """Keys (never their tokens or hashes), of one tenant or all."""
    keys = await run_in_threadpool(services.keys.list, tenant)
    return [key.public() for key in keys]


@router.delete("/{key_id}", response_model=KeyOut, responses={404: {"model": ErrorBody}})
async def revoke_key(
    request: Request, key_id: str, admin: AdminKey, services: ServicesDep
) -> dict[str, Any]:
    """Revoke a key: it is refused from now on (other API processes: within
    VIGIL_KEY_CACHE_SECONDS)."""
    key = await run_in_threadpool(services.keys.revoke, key_id)
    services.forget_key(key_id)
    await _audit(services, request, admin, key, "api_key.revoke")
    return key.public()
