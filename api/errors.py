"""Domain errors mapped to HTTP: the only place that knows both sides.

Every error is an RFC 9457 problem (``application/problem+json``):
``{"type", "title", "status", "detail", "problems": [{"index", "field", "message"}]}``;
``problems`` names every event and field at fault, so a client can fix a whole batch at
once. FastAPI's and Starlette's own errors (404, 405, 422 of parameters, 500) take the
same shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from eventsourcing.persistence import PersistenceError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.dependencies import AccessDenied, audit_request
from api.group_commit import WriteTimeoutError
from api.keys import ApiKeyNotFoundError, InvalidKeySpecError
from audit_core import (
    DamagedLogError,
    DuplicateEventIdError,
    EventNotFoundError,
    InvalidEventError,
    LedgerBusyError,
    TenantNotFoundError,
)
from audit_core.readmodel import InvalidQueryError

log = structlog.get_logger("vigil.api")


PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_body(
    status: int, detail: str, problems: list[dict[str, Any]] | None = None, **extra: Any
) -> bytes:
    """An RFC 9457 problem; ``type`` is about:blank, so ``title`` is the status's phrase."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    if problems is not None:
        body["problems"] = problems
    return orjson.dumps(body)


def problem(
    status: int,
    detail: str,
    problems: list[dict[str, Any]] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    if status == 503:
        headers = {"Retry-After": "1", **(headers or {})}
    return Response(
        problem_body(status, detail, problems, **extra),
        status,
        headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _field(name: str) -> str:
    return name or "event"


async def _invalid_event(request: Request, error: Exception) -> Response:
    assert isinstance(error, InvalidEventError)
    _count(request, "invalid")
    return problem(
        422,
        f"nothing was recorded: {error}",
        [
            {"index": p.index, "field": _field(p.field), "message": p.message}
            for p in error.problems
        ],
    )


async def _duplicate(request: Request, error: Exception) -> Response:
    assert isinstance(error, DuplicateEventIdError)
    _count(request, "duplicate_id")
    return problem(
        409,
        f"nothing was recorded: {error}",
        [{"index": error.index, "field": "id", "message": str(error)}],
    )


async def _not_found(request: Request, error: Exception) -> Response:
    return problem(404, str(error))


async def _damaged(request: Request, error: Exception) -> Response:
    """A log that cannot be replayed takes no append until an operator has looked."""
    _count(request, "damaged")
    return problem(500, str(error))


async def _busy(request: Request, error: Exception) -> Response:
    _count(request, "busy")
    return problem(503, str(error))


async def _write_timeout(request: Request, error: Exception) -> Response:
    _count(request, "timeout")
    return problem(503, str(error))


async def _storage(request: Request, error: Exception) -> Response:
    _count(request, "storage")
    return problem(503, f"storage unavailable, nothing was recorded: {type(error).__name__}")


async def _bad_query(request: Request, error: Exception) -> Response:
    assert isinstance(error, InvalidQueryError)
    return problem(422, str(error), [{"index": 0, "field": error.field, "message": str(error)}])


async def _bad_key_spec(request: Request, error: Exception) -> Response:
    assert isinstance(error, InvalidKeySpecError)
    return problem(422, str(error), [{"index": 0, "field": error.field, "message": str(error)}])


async def _access_denied(request: Request, error: Exception) -> Response:
    assert isinstance(error, AccessDenied)
    route = getattr(request.scope.get("route"), "path", "")
    metadata: dict[str, Any] = {"reason": error.detail, "path": request.url.path}
    if error.tenant is not None:
        metadata["requested_tenant"] = error.tenant
    try:
        await audit_request(
            request.app.state.services,
            request,
            error.key,
            error.key.tenant,
            error.action,
            {"type": "api_route", "id": f"{request.method} {route}"},
            metadata,
            outcome=error.outcome,
        )
    except Exception as failure:  # the refusal stands; only its record is missing
        log.warning("refusal not recorded", key_id=error.key.key_id, error=repr(failure))
    return problem(error.status_code, error.detail)


async def _http_error(request: Request, error: Exception) -> Response:
    """FastAPI's and Starlette's HTTP errors (401, 404 of a route, 405, 415...)."""
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else orjson.dumps(error.detail).decode()
    problems = getattr(error, "problems", None)  # api.strict names the field it refused
    return problem(error.status_code, detail, problems, headers=error.headers)


def _where(location: tuple[Any, ...]) -> str:
    # ("body", "roles", 0) names roles.0; ("query", "limit") names limit.
    parts = location[1:] if len(location) > 1 else location
    return ".".join(str(part) for part in parts)


async def _invalid_request(request: Request, error: Exception) -> Response:
    """422 for parameters and bodies FastAPI validates, naming each one at fault."""
    assert isinstance(error, RequestValidationError)
    problems = [
        {"index": 0, "field": _where(tuple(issue["loc"])), "message": issue["msg"]}
        for issue in error.errors()
    ]
    named = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return problem(422, f"request refused: {named}", problems)


async def _internal(request: Request, error: Exception) -> Response:
    """A 500 in the same shape, naming the request id to quote, never the exception."""
    request_id = getattr(request.state, "request_id", None)
    return problem(
        500, f"internal error; nothing is known to be recorded (request id {request_id})"
    )


def _count(request: Request, reason: str) -> None:
    if request.method == "POST" and request.url.path == "/v1/events":
        request.app.state.services.metrics.ingest_errors.labels(reason).inc()


def install(app: FastAPI) -> None:
    app.add_exception_handler(InvalidEventError, _invalid_event)
    app.add_exception_handler(DuplicateEventIdError, _duplicate)
    app.add_exception_handler(EventNotFoundError, _not_found)
    app.add_exception_handler(TenantNotFoundError, _not_found)
    app.add_exception_handler(ApiKeyNotFoundError, _not_found)
    app.add_exception_handler(LedgerBusyError, _busy)
    app.add_exception_handler(DamagedLogError, _damaged)
    app.add_exception_handler(WriteTimeoutError, _write_timeout)
    app.add_exception_handler(PersistenceError, _storage)
    app.add_exception_handler(InvalidQueryError, _bad_query)
    app.add_exception_handler(InvalidKeySpecError, _bad_key_spec)
    app.add_exception_handler(AccessDenied, _access_denied)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal)
