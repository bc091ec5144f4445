"""The FastAPI app: routers, error mapping, middleware and the lifespan that owns storage.

Start it with ``vigil serve``, or ``uvicorn --factory api.app:create_app``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import docs, errors, strict
from api.dependencies import BEARER_SCHEME, KEYED_PREFIX
from api.routers import events, health, keys, verify
from api.routers import incidents as incidents_routes
from api.routers import transparency as transparency_routes
from api.runtime import tuned_for_service
from api.services import Services, build_services
from api.settings import Settings, get_settings
from audit_core.schema import AuditEventIn

log = structlog.get_logger("vigil.api")

DESCRIPTION = """\
Vigil records hash-chained audit events and answers queries over them.

Authenticate with `Authorization: Bearer <key>`; keys are made with `vigil keys create`
and carry a tenant and roles (`ingest`, `analyst`, `responder`, `auditor`, `admin`).

Limits (configurable through `VIGIL_*` variables): request body `VIGIL_MAX_BODY_BYTES`
(8 MiB, 413 beyond), events per batch `VIGIL_MAX_BATCH_EVENTS` (1000), one event
`VIGIL_MAX_EVENT_BYTES` (32 KiB), metadata/changes `VIGIL_MAX_METADATA_BYTES` (16 KiB)
and `VIGIL_MAX_METADATA_DEPTH` (8), `occurred_at` at most `VIGIL_MAX_FUTURE_SKEW_SECONDS`
(300) ahead of the server clock. A refused request records nothing and names every
event index and field at fault.
"""


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr, with the request id bound by the middleware."""
    logging.basicConfig(format="%(message)s", level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        # stderr, as the README says: stdout is for what a command prints.
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


class BodyLimit:
    """413 for a body over the limit, judged from Content-Length or while streaming,
    before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLargeError
            return message

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watch)
        except _TooLargeError:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = errors.problem_body(
            413,
            f"body: request body is larger than {self.max_bytes} bytes "
            "(VIGIL_MAX_BODY_BYTES); nothing was recorded",
            [{"index": 0, "field": "body", "message": "too large"}],
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", errors.PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLargeError(Exception):
    pass


_REQUEST_ID_PREFIX = secrets.token_hex(8)
"""Random per process; with a counter it makes request ids unique without a uuid4
(an os.urandom call) per request."""
_request_numbers = itertools.count()


class RequestContext:
    """Request id (``X-Request-ID``, kept or made), one JSON log line, and metrics."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
        request_id = request_id or f"{_REQUEST_ID_PREFIX}{next(_request_numbers):08x}"
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status_code = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            app = scope.get("app")
            services: Services | None = getattr(getattr(app, "state", None), "services", None)
            if services is not None:
                services.metrics.request_done(method, path, status_code, elapsed)
            if status_code >= 400 or path not in ("/v1/events", "/healthz", "/metrics"):
                log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    status=status_code,
                    ms=round(elapsed * 1000, 2),
                    key_id=scope.get("state", {}).get("key_id"),
                )
            structlog.contextvars.unbind_contextvars("request_id")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = (
        app.state.settings or app.dependency_overrides.get(get_settings, get_settings)()
    )
    services = await run_in_threadpool(build_services, settings)
    app.state.services = services
    log.info("started", database=settings.database_url.split("@")[-1])
    try:
        with tuned_for_service(
            collector=settings.tune_collector,
            gil_switch_seconds=settings.gil_switch_seconds,
            one_cpu=settings.one_cpu and settings.workers == 1,
        ):
            yield
    finally:
        await services.committer.aclose()
        await run_in_threadpool(services.close)
        log.info("stopped")


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for forwarded headers: believed from ``VIGIL_TRUSTED_PROXIES``
    only. uvicorn's own default believes them from 127.0.0.1, which would let any
    process on the server's host choose the address that a key's allowlist checks."""
    proxies = settings.trusted_proxies
    return {"proxy_headers": bool(proxies), "forwarded_allow_ips": proxies or None}


def create_serving_app() -> FastAPI:
    """The app as ``vigil serve`` runs it: its followers run in a process of their own."""
    return create_app(get_settings().model_copy(update={"readmodel_follow": False}))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` (else ``get_settings()``) is read when the lifespan starts."""
    app = FastAPI(
        title="Vigil",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Metrics are Prometheus's (/metrics); OpenTelemetry is not configured, and
        # checking whether it is costs every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Kept on the app rather than in dependency_overrides: any override makes FastAPI
    # re-resolve every dependency's signature on every request.
    app.state.settings = settings
    effective = settings or get_settings()
    # Here, not only in `vigil serve`: each uvicorn worker process builds its own app.
    configure_logging(effective.log_level)
    max_body = effective.max_body_bytes
    for router in (events.router, keys.router, verify.router, health.router):
        app.include_router(router)
    app.include_router(transparency_routes.router)
    app.include_router(incidents_routes.router)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.add_middleware(RequestContext)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            event_schema = TypeAdapter(AuditEventIn).json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {})
            models = components.setdefault("schemas", {})
            models.update(event_schema.pop("$defs", {}))
            models["AuditEventIn"] = event_schema
            components["securitySchemes"] = BEARER_SCHEME
            for path, operations in schema["paths"].items():
                if path.startswith(KEYED_PREFIX):
                    for operation in operations.values():
                        operation["security"] = [{name: []} for name in BEARER_SCHEME]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Last, so that every route included above is held to the same rules and documented.
    docs.install(app)
    strict.install(app)
    return app
