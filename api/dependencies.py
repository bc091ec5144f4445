"""``Annotated`` dependencies: settings, services, and the calling API key (401/403)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from api.auth_audit import SYSTEM_TENANT, failed_auth_event
from api.keys import ApiKey, Permission
from api.services import Services
from audit_core.schema import TENANT_PATTERN, is_tenant_name


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    # hand-off on every request for what is an attribute lookup.
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]

BEARER_SCHEME = {
    "HTTPBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made with `vigil keys create`.",
    }
}
"""The OpenAPI security scheme of every route that ``requires`` a permission."""
KEYED_PREFIX = "/v1/"
"""Every route under it takes a key (a test holds each one to it)."""


def client_ip(request: Request) -> str | None:
    """The peer's address, or None when it is not an IP address (a test client, a socket)."""
    return _address(request.client.host) if request.client else None


@functools.lru_cache(maxsize=4096)
def _address(host: str) -> str | None:
    # Cached: parsing with ``ipaddress`` on every request cost more than the lookup.
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


async def audit_request(
    services: Services,
    request: Request,
    key: ApiKey,
    tenant: str,
    action: str,
    target: dict[str, Any],
    metadata: dict[str, Any],
    *,
    outcome: str = "success",
) -> None:
    """Record what ``request`` did (or tried), with its key as actor and the client's
    address, user agent and request id taken from the request."""
    await services.audit(
        key,
        tenant,
        action,
        target=target,
        metadata=metadata,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        request_id=getattr(request.state, "request_id", None),
        outcome=outcome,
    )


def _unauthorized(services: Services, detail: str) -> HTTPException:
    services.metrics.auth_failures.labels("401").inc()
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


class AccessDenied(HTTPException):
    """403 for a valid key used beyond its network, roles or tenant. It is recorded, in
    the key's own tenant, as ``access.denied`` (``api.errors``): a key tried where it
    may not go is what an auditor most wants to see."""

    action = "access.denied"
    outcome = "denied"

    def __init__(
        self,
        key: ApiKey,
        detail: str,
        tenant: str | None = None,
        status_code: int = status.HTTP_403_FORBIDDEN,
    ):
        super().__init__(status_code, detail)
        self.key = key
        self.tenant = tenant


class UnknownTenant(AccessDenied):
    """404 for a tenant that has no log, named by a key that may reach other tenants.

    Recorded as ``access.not_found`` in the key's own tenant, with the name in
    ``metadata.requested_tenant``: recording it in the tenant named would create it,
    and reading never creates a tenant."""

    action = "access.not_found"
    outcome = "failure"

    def __init__(self, key: ApiKey, tenant: str):
        super().__init__(
            key, f"tenant {tenant!r} has no audit log", tenant, status.HTTP_404_NOT_FOUND
        )


def forbidden(
    services: Services, key: ApiKey, detail: str, tenant: str | None = None
) -> AccessDenied:
    services.metrics.auth_failures.labels("403").inc()
    return AccessDenied(key, detail, tenant)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def current_key(request: Request) -> ApiKey:
    """The valid key the request carries: 401 without one, 403 from a network it excludes.

    A plain function of the request, not a tree of dependencies (services, a security
    scheme): FastAPI's solving of those was a quarter of a single-event request's cost.
    ``api.app`` documents the scheme instead.
    """
    services = services_of(request)
    token = _bearer_token(request)
    if token is None:
        await _audit_failure(request, services, "missing", None, None)
        raise _unauthorized(services, "an API key is required (Authorization: Bearer <key>)")
    key = await services.authenticate(token)
    if key is None:
        key_id, named = await run_in_threadpool(services.keys.named_by, token)
        reason = "malformed" if key_id is None else "wrong_secret" if named else "unknown_key"
        await _audit_failure(request, services, reason, named, key_id)
        raise _unauthorized(services, "the API key is not valid")
    if key.revoked_at is not None:
        await _audit_failure(request, services, "revoked", key, key.key_id)
        raise _unauthorized(services, f"API key {key.key_id} has been revoked")
    if key.is_expired():
        await _audit_failure(request, services, "expired", key, key.key_id)
        raise _unauthorized(services, f"API key {key.key_id} has expired")
    if not key.allows_address(client_ip(request)):
        raise forbidden(
            services, key, f"API key {key.key_id} may not be used from {client_ip(request)}"
        )
    request.state.key_id = key.key_id
    return key


async def _audit_failure(
    request: Request,
    services: Services,
    reason: str,
    key: ApiKey | None,
    presented_key_id: str | None,
) -> None:
    """Record a 401 in the key's tenant, or in ``vigil-system`` when no key is known."""
    if services.auth_audit is None:
        return
    route = getattr(request.scope.get("route"), "path", request.url.path)
    event = failed_auth_event(
        reason,
        f"{request.method} {route}",
        request.url.path,
        key_id=key.key_id if key else None,
        presented_key_id=presented_key_id,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        request_id=getattr(request.state, "request_id", None),
    )
    await services.auth_audit.failed(key.tenant if key else SYSTEM_TENANT, event)


def requires(permission: Permission) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency: the request's key, if it may do ``permission`` (else 401 or 403)."""

    async def check(request: Request) -> ApiKey:
        key = await current_key(request)
        if not key.can(permission):
            services = services_of(request)
            roles = ", ".join(key.roles)
            raise forbidden(
                services,
                key,
                f"API key {key.key_id} ({roles}) may not {permission.value.replace('_', ' ')}",
            )
        return key

    return check


ingest_key = requires(Permission.INGEST)
QueryKey = Annotated[ApiKey, Depends(requires(Permission.QUERY))]
ExportKey = Annotated[ApiKey, Depends(requires(Permission.EXPORT))]
VerifyKey = Annotated[ApiKey, Depends(requires(Permission.VERIFY))]
AdminKey = Annotated[ApiKey, Depends(requires(Permission.MANAGE_KEYS))]

_TENANT_DESCRIPTION = "Tenant to act on; only admin keys may name another tenant than their own."
TenantParam = Annotated[str | None, Query(pattern=TENANT_PATTERN, description=_TENANT_DESCRIPTION)]

TENANT_PARAMETER = {
    "name": "tenant",
    "in": "query",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string", "pattern": TENANT_PATTERN}, {"type": "null"}],
        "title": "Tenant",
    },
    "description": _TENANT_DESCRIPTION,
}
"""``TenantParam`` in OpenAPI, for a route that reads it with ``tenant_param``."""


def tenant_param(request: Request) -> str | None:
    """The ``tenant`` query parameter, refused (422) as ``TenantParam`` refuses it."""
    tenant = request.query_params.get("tenant")
    if tenant is not None and not is_tenant_name(tenant):
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("query", "tenant"),
                    "msg": f"String should match pattern '{TENANT_PATTERN}'",
                    "input": tenant,
                    "ctx": {"pattern": TENANT_PATTERN},
                }
            ]
        )
    return tenant


def tenant_of(key: ApiKey, tenant: str | None, services: Services, *, creates: bool = False) -> str:
    """The tenant a request acts on: the key's own, unless an all-tenants key names
    another, which must have a log unless the request ``creates`` it (a write)."""
    if creates and tenant == SYSTEM_TENANT:
        raise forbidden(
            services,
            key,
            f"tenant {SYSTEM_TENANT!r} is Vigil's own; nothing is recorded there "
            "but failed authentications",
            tenant,
        )
    if tenant is None or tenant == key.tenant:
        return key.tenant
    if not key.can_access(tenant):
        raise forbidden(
            services, key, f"API key {key.key_id} may not act on tenant {tenant!r}", tenant
        )
    if not creates and not services.has_tenant(tenant):
        raise UnknownTenant(key, tenant)
    return tenant
