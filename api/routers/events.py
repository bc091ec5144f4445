"""``/v1/events``: record events, query and export the trail, read one record."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.dependencies import (
    TENANT_PARAMETER,
    ExportKey,
    QueryKey,
    ServicesDep,
    TenantParam,
    audit_request,
    ingest_key,
    services_of,
    tenant_of,
    tenant_param,
)
from api.read_your_writes import position_header, wait_for_position
from api.schemas import ERRORS, AuditRecord, ErrorBody, RecordBatch, RecordPage
from api.services import Services
from audit_core import PreparedBatch
from audit_core.exceptions import FieldProblem, InvalidEventError, LedgerError
from audit_core.readmodel import InvalidQueryError, TrailQuery, address_filter, decode_cursor
from audit_core.record import flat_columns, flat_values
from audit_core.schema import (
    ACTION_PATTERN,
    RFC3339_PATTERN,
    Outcome,
    Source,
    format_timestamp,
    parse_json,
)

router = APIRouter(prefix="/v1/events", tags=["events"], responses=ERRORS)
log = structlog.get_logger("vigil.api")

_JSON = "application/json"


def _json(body: bytes, status_code: int = 200) -> Response:
    return Response(body, status_code, media_type=_JSON)


_INGEST_DOC = {
    "parameters": [TENANT_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/AuditEventIn"},
                        {"type": "array", "items": {"$ref": "#/components/schemas/AuditEventIn"}},
                    ]
                }
            }
        },
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AuditRecord | RecordBatch,
    openapi_extra=_INGEST_DOC,
    responses={
        200: {"description": "Every event was already recorded (an idempotent retry)."},
        409: {"model": ErrorBody, "description": "An event id is reused with other content."},
        413: {"model": ErrorBody, "description": "The body exceeds VIGIL_MAX_BODY_BYTES."},
        422: {"model": ErrorBody, "description": "Events refused; nothing was recorded."},
        503: {"model": ErrorBody, "description": "Storage busy or down; retry."},
    },
)
async def record_events(request: Request) -> Response:
    """Record one event (a JSON object) or an atomic batch (a JSON array).

    A single event answers with its record; a batch with ``{"records": [...]}`` in input
    order. Each record carries ``seq``, ``prev_hash`` and ``hash``. Resending an event
    with the same ``id`` and content returns the original record (status 200).
    """
    # The key, services and tenant are read here, not declared as dependencies:
    # FastAPI's solving of those was a quarter of a single-event request's cost.
    key = await ingest_key(request)
    services = services_of(request)
    tenant = tenant_of(key, tenant_param(request), services, creates=True)
    started = format_timestamp(datetime.now(UTC))
    body = (await request.body()).lstrip(b" \t\r\n")
    if body[:1] == b"{":
        # Prepared here, so a bad event fails its own request and not its group.
        [record] = await services.record(_prepare(services, tenant, body, batch=False))
        services.metrics.ingested.labels("single").inc()
        replay = record["received_at"] < started
        body = orjson.dumps(record)
        return Response(body, 200 if replay else 201, position_header([record]), _JSON)
    if body[:1] != b"[":
        _parse(services, body)  # says what is wrong with it if it is not JSON at all
        raise InvalidEventError(
            [FieldProblem(0, "body", "must be an event (JSON object) or a batch (JSON array)")]
        )
    # In a worker thread: a batch is parsed and validated while another commits.
    prepared = await run_in_threadpool(_prepare, services, tenant, body, batch=True)
    records = await services.record(prepared)
    services.metrics.ingested.labels("batch").inc(len(records))
    replay = all(r["received_at"] < started for r in records)
    body = orjson.dumps({"records": records})
    return Response(body, 200 if replay else 201, position_header(records), _JSON)


def _parse(services: Services, body: bytes) -> Any:
    try:
        return parse_json(body)
    except ValueError as error:
        services.metrics.ingest_errors.labels("invalid").inc()
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"body: not valid I-JSON ({error})"
        ) from None


def _prepare(services: Services, tenant: str, body: bytes, *, batch: bool) -> PreparedBatch:
    """The body's events, validated and keyed. Valid ones are parsed and checked in one
    pass; the others are parsed and validated event by event, which names every
    problem (or says that the body is not JSON)."""
    prepared = services.ledger.prepare_json(tenant, body, batch=batch)
    if prepared is not None:
        return prepared
    payload = _parse(services, body)
    events: Sequence[Any] = payload if batch else [payload]
    limit = services.ledger.limits.max_batch_events
    if len(events) > limit:
        raise InvalidEventError(
            [
                FieldProblem(
                    0,
                    "body",
                    f"batch of {len(events)} events exceeds the limit of {limit} "
                    "(VIGIL_MAX_BATCH_EVENTS)",
                )
            ]
        )
    return services.ledger.prepare(tenant, events)


ACTION_FILTER_PATTERN = r"^[a-z][a-z0-9_]*((\.[a-z][a-z0-9_]*)+|(\.[a-z][a-z0-9_]*)*\.\*)$"
"""An action (``ACTION_PATTERN``) or a prefix of one ending in ``.*``, as the document
states it (the server also takes any text before ``.*``, which matches nothing)."""


def _timestamp(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidQueryError(
            name, f"{value!r} is not an RFC 3339 timestamp with offset (e.g. 2026-11-23T10:15:00Z)"
        )
    return format_timestamp(moment)


async def trail_filters(
    actor_id: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[
        str | None,
        Query(
            max_length=128,
            description="Exact action, or a prefix ending in `.*` (e.g. `conversation.*`).",
            json_schema_extra={"pattern": ACTION_FILTER_PATTERN},
        ),
    ] = None,
    target_type: Annotated[str | None, Query(max_length=64)] = None,
    target_id: Annotated[str | None, Query(max_length=256)] = None,
    outcome: Outcome | None = None,
    source: Source | None = None,
    since: Annotated[
        str | None,
        Query(
            description="occurred_at at or after this RFC 3339 instant.",
            json_schema_extra={"pattern": RFC3339_PATTERN},
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(
            description="occurred_at before this RFC 3339 instant (later than since).",
            json_schema_extra={"pattern": RFC3339_PATTERN},
        ),
    ] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            description="Text found in a metadata value, whatever its case; with "
            "VIGIL_ENCRYPTION_KEY set, whole words only (a part of a word finds nothing).",
        ),
    ] = None,
    order: Literal["desc", "asc"] = "desc",
    actor_ip: Annotated[
        str | None,
        Query(
            max_length=64,
            description="The actor's address (`203.0.113.7`), or a network it is in "
            "(`203.0.113.0/24`, `2001:db8::/32`). A network is refused (422) when "
            "VIGIL_ENCRYPTION_KEY is set.",
        ),
    ] = None,
    session_id: Annotated[str | None, Query(max_length=256, description="actor.session_id")] = None,
    request_id: Annotated[str | None, Query(max_length=256)] = None,
    min_position: Annotated[
        int | None,
        Query(
            ge=0,
            description="Read-your-writes: wait (up to VIGIL_READ_YOUR_WRITES_TIMEOUT_SECONDS, "
            "else 503) until the read model holds the tenant's record at this seq, as a "
            "write's Vigil-Position header gives it.",
        ),
    ] = None,
) -> TrailQuery:
    is_prefix = action is not None and action.endswith(".*")
    if action is not None and not is_prefix and not re.fullmatch(ACTION_PATTERN, action):
        raise InvalidQueryError("action", f"{action!r} is not a dotted action or prefix.*")
    since_ts, until_ts = _timestamp("since", since), _timestamp("until", until)
    if since_ts and until_ts and since_ts >= until_ts:
        raise InvalidQueryError("until", "must be later than since")
    return TrailQuery(
        actor_ip=None if actor_ip is None else address_filter(actor_ip),
        session_id=session_id,
        request_id=request_id,
        min_seq=min_position,
        tenant="",
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        source=source,
        since=since_ts,
        until=until_ts,
        text=q,
        order=order,
    )


Filters = Annotated[TrailQuery, Depends(trail_filters)]


@router.get("", response_model=RecordPage)
async def query_events(
    request: Request,
    key: QueryKey,
    services: ServicesDep,
    filters: Filters,
    tenant: TenantParam = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Query the trail, newest first unless ``order=asc``; page with ``next_cursor``.

    Every query is itself recorded in the tenant's log as ``audit.query``.
    """
    tenant = tenant_of(key, tenant, services)
    limit = min(limit, services.settings.max_page_size)
    after = decode_cursor(cursor, filters.order) if cursor else None
    query = replace(filters, tenant=tenant, limit=limit, after_seq=after)
    await wait_for_position(services, query)
    records, next_cursor = await run_in_threadpool(services.query_page, query)
    await audit_request(
        services,
        request,
        key,
        tenant,
        "audit.query",
        {"type": "audit_trail", "id": tenant},
        {"filters": query.filters(), "returned": len(records), "cursor": cursor},
    )
    return _json(orjson.dumps({"items": records, "next_cursor": next_cursor}))


CSV_COLUMNS = flat_columns()


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: one that would start a formula gets a leading
    apostrophe, as OWASP's CSV injection guidance says. The JSON Lines export is the
    exact one; CSV is for reading."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_row(record: dict[str, Any]) -> list[Any]:
    return [
        _cell(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())
        if isinstance(value, dict)
        else _cell(value)
        for value in flat_values(record)
    ]


class _Tally:
    """What an export has sent so far, for the line that ends it: a summary when every
    record was sent, an error when it stopped. A reader knows an export is whole only
    by its summary (a cut connection leaves none)."""

    def __init__(self) -> None:
        self.records = 0
        self.last: dict[str, Any] | None = None
        self.digest = hashlib.sha256()

    def sent(self, chunk: bytes) -> bytes:
        self.digest.update(chunk)
        return chunk

    def summary(self) -> dict[str, Any]:
        return {
            "complete": True,
            "records": self.records,
            "last_seq": None if self.last is None else self.last["seq"],
            "last_hash": None if self.last is None else self.last["hash"],
            "sha256": self.digest.hexdigest(),
        }

    def failure(self, error: Exception) -> dict[str, Any]:
        # A ledger error says what is wrong; others could name hosts, so only their kind.
        reason = str(error) if isinstance(error, LedgerError) else type(error).__name__
        log.error("export stopped", records=self.records, error=repr(error))
        return {
            "complete": False,
            "records": self.records,
            "detail": f"the export stopped after {self.records} records ({reason}); "
            "it is incomplete: export again",
        }


def _csv(records: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    tally = _Tally()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)

    def flush() -> bytes:
        chunk = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        return tally.sent(chunk)

    try:
        for record in records:
            writer.writerow(_csv_row(record))
            tally.records += 1
            tally.last = record
            if tally.records % 500 == 0:
                yield flush()
    except Exception as error:
        yield flush()
        failure = tally.failure(error)
        writer.writerow(["#error", failure["records"], failure["detail"]])
        yield buffer.getvalue().encode()
        return
    yield flush()
    # The first column holds a tenant in every other row, and no tenant starts with #.
    summary = tally.summary()
    writer.writerow(
        ["#summary", *(summary[k] for k in ("records", "last_seq", "last_hash", "sha256"))]
    )
    yield buffer.getvalue().encode()


def _jsonl(records: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    tally = _Tally()
    try:
        for record in records:
            line = orjson.dumps(record) + b"\n"
            tally.records += 1
            tally.last = record
            yield tally.sent(line)
    except Exception as error:
        yield orjson.dumps({"error": tally.failure(error)}) + b"\n"
        return
    yield orjson.dumps({"summary": tally.summary()}) + b"\n"


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
)
async def export_events(
    request: Request,
    key: ExportKey,
    services: ServicesDep,
    filters: Filters,
    tenant: TenantParam = None,
    format: Literal["csv", "jsonl"] = "jsonl",
) -> StreamingResponse:
    """Every record matching the filters, streamed as CSV or JSON Lines.

    JSON Lines holds each record exactly as stored (with ``prev_hash`` and ``hash``),
    so it can be verified offline. The export is recorded as ``audit.export`` first.

    A complete export ends with a summary: in JSON Lines a last line
    ``{"summary": {"complete": true, "records", "last_seq", "last_hash", "sha256"}}``,
    in CSV a last row ``#summary,records,last_seq,last_hash,sha256`` (``last_*`` of the
    last record sent, ``sha256`` of every byte before the summary). An export that
    stopped midway ends with ``{"error": {"complete": false, ...}}`` or an ``#error``
    row instead; one with neither was cut off. CSV cells that would start a formula
    (``= + - @``, tab, carriage return) are prefixed with ``'``.
    """
    tenant = tenant_of(key, tenant, services)
    query = replace(filters, tenant=tenant)
    services.view.validate(query)  # refused now, not once the export has started
    await wait_for_position(services, query)
    await audit_request(
        services,
        request,
        key,
        tenant,
        "audit.export",
        {"type": "audit_trail", "id": tenant},
        {"filters": query.filters(), "format": format},
    )
    records = services.export(query)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Disposition": f'attachment; filename="vigil-{tenant}-{stamp}.{format}"'}
    if format == "csv":
        return StreamingResponse(_csv(records), media_type="text/csv", headers=headers)
    return StreamingResponse(_jsonl(records), media_type="application/x-ndjson", headers=headers)


@router.get(
    # :path, because an event id may hold "/" (raw or percent-encoded, both decoded to it).
    "/{event_id:path}",
    response_model=AuditRecord,
    responses={404: {"model": ErrorBody, "description": "No event with that id."}},
)
async def get_event(
    request: Request,
    event_id: str,
    key: QueryKey,
    services: ServicesDep,
    tenant: TenantParam = None,
) -> Response:
    """One record by its event id, with ``seq``, ``prev_hash`` and ``hash``."""
    tenant = tenant_of(key, tenant, services)
    record = await run_in_threadpool(services.ledger.get, tenant, event_id)
    await audit_request(
        services,
        request,
        key,
        tenant,
        "audit.read",
        {"type": "audit_event", "id": event_id[:256]},
        {"seq": record["seq"]},
    )
    return _json(orjson.dumps(record))
