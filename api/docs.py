"""The OpenAPI document's error statuses and rules, and the pages that render it.

``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles from Vigil itself,
from the copies the ``fastapi-offline`` package ships, so that they render on a machine
without internet (FastAPI's own pages load them from a CDN).

The document declares, for every operation, every error status it can answer, each as
an RFC 9457 problem (``application/problem+json``), and states the rules the server
enforces beyond types: no U+0000 in any string, and the nesting bound of ``metadata``
and ``changes``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.errors import PROBLEM_MEDIA_TYPE
from api.schemas import ProblemDetails
from api.settings import get_settings
from api.strict import api_routes, takes_body
from audit_core.schema import MAX_SAFE_INTEGER, STORABLE_TEXT_PATTERN

ASSETS_PATH = "/docs-assets"
ASSETS = Path(str(files("fastapi_offline") / "static"))

_COMMON = {
    "422": "A query parameter the route does not take, or a parameter that breaks its "
    "rules (named in `problems`).",
    "500": "An internal error; the detail names the request id to quote.",
}
_BODY = {
    "400": "The body is not I-JSON: malformed, a key given twice, a lone surrogate, or "
    "nested beyond the parser's limit.",
    "413": "The body is larger than VIGIL_MAX_BODY_BYTES.",
    "415": "The body is not sent as application/json.",
}
_KEYED = {
    "401": "No API key, or an unknown, expired or revoked one.",
    "403": "The key lacks the role, tenant or network.",
    "503": "Storage is busy or unavailable; retry after Retry-After seconds.",
}
_NOT_FOUND = {"404": "No such record, key or tenant."}


def install(app: FastAPI) -> None:
    """Serve the docs pages from local assets and complete the OpenAPI document."""
    docs_urls = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) not in docs_urls
    ]
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} API",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            # Swagger UI would otherwise send the document to an online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} API",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        if not schema.get("x-vigil-completed"):
            complete(schema, app)
            schema["x-vigil-completed"] = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _json_values(depth: int) -> dict[str, Any]:
    """Schemas of the values ``metadata`` and ``changes`` may hold: JSONValueN is what a
    container N levels deep may hold (the field itself is level 1), so the nesting bound
    is stated exactly."""
    scalar = {
        "anyOf": [
            {"type": "string", "pattern": STORABLE_TEXT_PATTERN},
            {"type": "number", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
            {"type": "boolean"},
            {"type": "null"},
        ]
    }
    schemas: dict[str, Any] = {f"JSONValue{depth}": scalar}
    for level in range(depth - 1, 0, -1):
        inner = {"$ref": f"#/components/schemas/JSONValue{level + 1}"}
        schemas[f"JSONValue{level}"] = {
            "anyOf": [
                *scalar["anyOf"],
                {"type": "array", "items": inner},
                {
                    "type": "object",
                    "additionalProperties": inner,
                    "propertyNames": {"pattern": STORABLE_TEXT_PATTERN},
                },
            ]
        }
    return schemas


def _text_rule(schema: dict[str, Any]) -> None:
    """A string parameter without a pattern of its own refuses U+0000 like the rest."""
    if "pattern" in schema:
        return
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string" and "pattern" not in branch and "enum" not in branch:
            branch["pattern"] = STORABLE_TEXT_PATTERN


def complete(schema: dict[str, Any], app: FastAPI) -> None:
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    problem_schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    models.update(problem_schema.pop("$defs", {}))
    models["ProblemDetails"] = problem_schema
    for unused in ("HTTPValidationError", "ValidationError", "ErrorBody"):
        models.pop(unused, None)
    settings = app.state.settings or get_settings()
    ingest = schema["paths"].get("/v1/events", {}).get("post", {})
    for body in ingest.get("requestBody", {}).get("content", {}).values():
        for shape in body["schema"].get("oneOf", []):
            if shape.get("type") == "array":
                shape["minItems"] = 1
                shape["maxItems"] = settings.max_batch_events
    if "AuditEventIn" in models:
        depth = settings.max_metadata_depth
        models.update(_json_values(depth))
        for field in ("metadata", "changes"):
            prop = models["AuditEventIn"]["properties"][field]
            prop["additionalProperties"] = {"$ref": "#/components/schemas/JSONValue1"}
            prop["propertyNames"] = {"pattern": STORABLE_TEXT_PATTERN}
    content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for route in api_routes(app.router.routes):
        if not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            statuses = dict(_COMMON)
            if takes_body(route):
                statuses |= _BODY
            if route.path_format.startswith("/v1/"):
                statuses |= _KEYED
            parameters = operation.get("parameters", [])
            if "{" in route.path_format or any(p["name"] == "tenant" for p in parameters):
                statuses |= _NOT_FOUND
            for parameter in parameters:
                _text_rule(parameter.get("schema", {}))
            responses = operation.setdefault("responses", {})
            for status, description in statuses.items():
                responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = content
