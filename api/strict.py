"""What every route refuses before its own code runs: a body that is not JSON (415), a
query parameter it does not take (422), a parameter holding text that cannot be stored
(422), and a JSON body that is not I-JSON (400).

Installed on every route of the app after the routers are included (``install``), so a
router added later is held to the same rules without opting in. It wraps each route's
handler rather than adding a dependency: FastAPI's solving of dependencies was a quarter
of a single-event request's cost.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from types import UnionType
from typing import Any, NamedTuple, Union, get_args, get_origin

from fastapi import FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute, request_response
from starlette.routing import BaseRoute

from api.dependencies import KEYED_PREFIX, current_key
from audit_core.schema import parse_json, unstorable_text

JSON_MEDIA_TYPE = "application/json"


class UnsupportedMediaTypeError(HTTPException):
    def __init__(self, media_type: str):
        super().__init__(
            415,
            f"body: the Content-Type is {media_type or 'missing'}; "
            f"send the body as {JSON_MEDIA_TYPE}",
        )


class UnstorableTextError(HTTPException):
    """422 for a body string PostgreSQL cannot store. An HTTPException, because FastAPI
    turns any other error raised while it reads a body into a bare 400."""

    def __init__(self, field: str, message: str):
        super().__init__(422, f"body: field {field!r} {message}")
        self.problems = [{"index": 0, "field": field, "message": message}]


class IJsonRequest(Request):
    """A request whose JSON body is parsed as I-JSON (RFC 7493), as event bodies are:
    a key given twice, a lone surrogate or nesting beyond the parser's limit is a 400
    naming the place, never a silent choice of one value; a string PostgreSQL cannot
    store is a 422 naming its field."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                parsed = parse_json(await self.body())
            except ValueError as error:
                raise HTTPException(400, f"body: not valid I-JSON ({error})") from None
            # Whatever a route keeps ends up in PostgreSQL or in an audit event.
            found = unstorable_text(parsed)
            if found is not None:
                raise UnstorableTextError(*found)
            self._json = parsed
        return self._json


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def sends_body(request: Request) -> bool:
    """Whether the request carries a body (an absent one has no media type to judge)."""
    headers = request.headers
    length = headers.get("content-length")
    return "transfer-encoding" in headers if length is None else length != "0"


def takes_body(route: APIRoute) -> bool:
    return route.body_field is not None or "requestBody" in (route.openapi_extra or {})


def _declared_query(dependant: Dependant) -> dict[str, bool]:
    """Each query parameter's name, and whether it may be repeated (a list)."""
    names = {param.alias: _is_list(param.field_info.annotation) for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _declared_query(dependency)
    return names


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_list(member) for member in get_args(annotation))
    return get_origin(annotation) in (list, tuple, set, frozenset)


class QueryParameters(NamedTuple):
    known: frozenset[str]
    repeatable: frozenset[str]


def query_names(route: APIRoute) -> QueryParameters:
    """The query parameters a route declares, to FastAPI or in its OpenAPI extra."""
    names = _declared_query(route.dependant)
    for param in (route.openapi_extra or {}).get("parameters", []):
        if param.get("in") == "query":
            names[param["name"]] = False
    return QueryParameters(
        frozenset(names), frozenset(name for name, many in names.items() if many)
    )


def _invalid(location: str, name: str, message: str, value: Any) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, name), "msg": message, "input": value}]
    )


def check_parameters(request: Request, declared: QueryParameters) -> None:
    """422 for a query parameter the route does not take (it would be silently ignored,
    and a filter that is ignored returns the whole trail), for one that takes a single
    value given twice (only the last would count, as with a key given twice in JSON),
    and for a query or path parameter that PostgreSQL could not store."""
    if request.scope["query_string"]:
        params = request.query_params
        known = declared.known
        unknown = sorted({name for name in params if name not in known})
        if unknown:
            takes = ", ".join(sorted(known)) or "none"
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden",
                        "loc": ("query", name),
                        "msg": f"unknown query parameter {name!r}; this route takes: {takes}",
                        "input": params.getlist(name),
                    }
                    for name in unknown
                ]
            )
        for name, value in params.multi_items():
            found = unstorable_text(value)
            if found is not None:
                raise _invalid("query", name, found[1], value)
        if len(params) < len(params.multi_items()):
            for name in params:
                values = params.getlist(name)
                if len(values) > 1 and name not in declared.repeatable:
                    raise _invalid(
                        "query", name, f"given {len(values)} times; it takes one value", values
                    )
    for name, value in request.path_params.items():
        if isinstance(value, str) and (found := unstorable_text(value)) is not None:
            raise _invalid("path", name, found[1], value)


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute of ``routes``, those of included routers too."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            yield from api_routes(included.routes)


def strict(
    route: APIRoute, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    declared = query_names(route)
    body = takes_body(route)
    keyed = route.path_format.startswith(KEYED_PREFIX)

    async def checked(request: Request) -> Response:
        try:
            check_parameters(request, declared)
            if body and (found := media_type(request)) != JSON_MEDIA_TYPE and sends_body(request):
                raise UnsupportedMediaTypeError(found)
        except (HTTPException, RequestValidationError):
            # A caller without a valid key learns nothing but 401, as on every keyed
            # route; the key is checked here only when a refusal is coming anyway.
            if keyed:
                await current_key(request)
            raise
        return await handler(IJsonRequest(request.scope, request.receive))

    return checked


def install(app: FastAPI) -> None:
    """Hold every API route of ``app`` to these rules (call after including routers).

    FastAPI builds the handler of an included route from the route's
    ``get_route_handler`` when the app first routes to it, so that is what is wrapped;
    a route of the app itself has built its handler already, so it is rebuilt. The
    routers are module-level objects shared by every app made, hence the mark.
    """
    for route in api_routes(app.router.routes):
        if getattr(route, "_vigil_strict", False):
            continue
        build = route.get_route_handler
        route.get_route_handler = functools.partial(_strict_handler, route, build)  # type: ignore[method-assign,assignment]
        route._vigil_strict = True  # type: ignore[attr-defined]
        if route in app.router.routes:
            route.app = request_response(route.get_route_handler())


def _strict_handler(
    route: APIRoute, build: Callable[[], Callable[[Request], Awaitable[Response]]]
) -> Callable[[Request], Awaitable[Response]]:
    return strict(route, build())
