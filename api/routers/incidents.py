"""``/v1/incidents``: list, show, act on incidents and render their post-mortems.

``responder`` and ``admin`` keys act; ``analyst`` and ``auditor`` keys read. Every route
is scoped to the key's tenant (an admin may name another with ``?tenant=``), and
another tenant's incident is not found. Every action is recorded in the tenant's ledger
by the incidents application itself, with the key as the responder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.dependencies import (
    ServicesDep,
    TenantParam,
    current_key,
    forbidden,
    services_of,
    tenant_of,
)
from api.incident_desk import build_incidents
from api.keys import ApiKey, Role
from api.schemas import ERRORS
from api.services import Services
from incident import (
    Actor,
    ConfigurationError,
    Evidence,
    IllegalTransitionError,
    IncidentError,
    IncidentNotFoundError,
    Incidents,
    InvalidIncidentError,
    StepNotFoundError,
    StepRefusedError,
)

router = APIRouter(prefix="/v1/incidents", tags=["incidents"], responses=ERRORS)

READERS = frozenset({Role.ANALYST, Role.AUDITOR, Role.RESPONDER, Role.ADMIN})
ACTORS = frozenset({Role.RESPONDER, Role.ADMIN})
_build_lock = threading.Lock()
T = TypeVar("T")


def desk_of(request: Request) -> Incidents:
    """The incidents application of this app, built on first use and closed with it."""
    incidents: Incidents | None = getattr(request.app.state, "incidents", None)
    if incidents is None:
        with _build_lock:
            incidents = getattr(request.app.state, "incidents", None)
            if incidents is None:
                services = services_of(request)
                incidents = build_incidents(services.settings, services.ledger)
                services.closers.append(incidents.close)
                request.app.state.incidents = incidents
    return incidents


def _roles(allowed: frozenset[Role], verb: str) -> Any:
    async def check(request: Request) -> ApiKey:
        key = await current_key(request)
        if not allowed.intersection(key.roles):
            roles = ", ".join(key.roles)
            raise forbidden(
                services_of(request), key, f"API key {key.key_id} ({roles}) may not {verb}"
            )
        return key

    return check


ReadKey = Annotated[ApiKey, Depends(_roles(READERS, "read incidents"))]
ActKey = Annotated[ApiKey, Depends(_roles(ACTORS, "act on incidents"))]


async def get_desk(request: Request) -> Incidents:
    return await _call(desk_of, request)


Desk = Annotated[Incidents, Depends(get_desk)]


def _actor(key: ApiKey) -> Actor:
    return Actor(key.key_id, "api_key")


class IncidentSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    ref: str = Field(description="Short reference, INC- and the id's first 8 hex digits.")
    tenant: str
    title: str
    severity: str
    status: str
    rule: str | None


class IncidentList(BaseModel):
    items: list[IncidentSummary]


class IncidentDetails(IncidentSummary):
    timeline: list[dict[str, Any]]
    evidence: list[dict[str, Any]]
    runbook_steps: list[dict[str, Any]]
    escalation: dict[str, Any]
    postmortem: dict[str, Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenIn(_Body):
    title: str = Field(min_length=1, max_length=300)
    severity: Literal["SEV1", "SEV2", "SEV3", "SEV4"]
    description: str = Field(default="", max_length=8000)
    runbook: str | None = None
    policy: str | None = None
    evidence: list[Annotated[int, Field(ge=0)]] = Field(
        default=[], max_length=200, description="seqs of the tenant's records to link"
    )


class NoteIn(_Body):
    text: str = Field(min_length=1, max_length=8000)


class OptionalNoteIn(_Body):
    note: str = Field(default="", max_length=8000)


class ReasonIn(_Body):
    reason: str = Field(min_length=1, max_length=2000)


class AssignIn(_Body):
    commander: str = Field(min_length=1, max_length=256)


class ParticipantIn(_Body):
    user: str = Field(min_length=1, max_length=256)


class SeverityIn(_Body):
    severity: Literal["SEV1", "SEV2", "SEV3", "SEV4"]


class MergeIn(_Body):
    into: UUID


class ActionItem(_Body):
    title: str = Field(min_length=1, max_length=500)
    owner: str | None = Field(default=None, max_length=256)
    due: str | None = Field(default=None, description="YYYY-MM-DD")
    done: bool = False


class PostmortemIn(_Body):
    summary: str | None = Field(default=None, max_length=20_000)
    impact: str | None = Field(default=None, max_length=20_000)
    root_cause: str | None = Field(default=None, max_length=20_000)
    lessons: str | None = Field(default=None, max_length=20_000)
    action_items: list[ActionItem] | None = Field(default=None, max_length=200)


_STATUS = (
    (IncidentNotFoundError, status.HTTP_404_NOT_FOUND),
    (StepNotFoundError, status.HTTP_404_NOT_FOUND),
    (IllegalTransitionError, status.HTTP_409_CONFLICT),
    (InvalidIncidentError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (StepRefusedError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (ConfigurationError, status.HTTP_500_INTERNAL_SERVER_ERROR),
)


async def _call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function`` in a worker thread, its incident errors as HTTP errors."""
    try:
        return await run_in_threadpool(function, *args, **kwargs)
    except IncidentError as error:
        code = next((c for kind, c in _STATUS if isinstance(error, kind)), 400)
        raise HTTPException(code, str(error)) from None


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code, media_type="application/json")


@router.get("", response_model=IncidentList)
async def list_incidents(
    key: ReadKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
    status_: Annotated[
        list[str] | None, Query(alias="status", description="triggered, acknowledged, ...")
    ] = None,
    severity: Annotated[list[Literal["SEV1", "SEV2", "SEV3", "SEV4"]] | None, Query()] = None,
    rule: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="triggered at or after")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The tenant's incidents, newest first."""
    tenant = tenant_of(key, tenant, services)
    items = await _call(
        desk.list_incidents,
        tenant,
        status=status_ or (),
        severity=severity or (),
        rule=rule,
        since=since,
        limit=limit,
    )
    return _json({"items": items})


@router.post("", status_code=201, response_model=IncidentDetails)
async def open_incident(
    body: OpenIn, key: ActKey, services: ServicesDep, desk: Desk, tenant: TenantParam = None
) -> Response:
    """Open an incident by hand (detection opens most of them), linking records by seq."""
    tenant = tenant_of(key, tenant, services)

    def open_() -> dict[str, Any]:
        records = services.ledger.records_at(tenant, body.evidence) if body.evidence else []
        opened = desk.open(
            tenant,
            body.title,
            body.severity,
            description=body.description,
            runbook=body.runbook,
            policy=body.policy,
            evidence=[Evidence.of_record(r) for r in records],
            actor=_actor(key),
        )
        return desk.get(tenant, opened.incident_id)

    return _json(await _call(open_), 201)


@router.get("/metrics")
async def incident_metrics(
    key: ReadKey, services: ServicesDep, desk: Desk, tenant: TenantParam = None
) -> Response:
    """Mean time to detect, acknowledge, mitigate and resolve (seconds), per severity
    and per rule."""
    tenant = tenant_of(key, tenant, services)
    return _json(await _call(desk.metrics, tenant))


@router.get("/{incident_id}", response_model=IncidentDetails)
async def show_incident(
    incident_id: UUID, key: ReadKey, services: ServicesDep, desk: Desk, tenant: TenantParam = None
) -> Response:
    """One incident with its timeline, evidence (seq and hash), runbook steps and
    escalation state. Automated steps' HTTP configuration is never shown."""
    tenant = tenant_of(key, tenant, services)
    return _json(await _call(desk.get, tenant, incident_id))


async def _act(
    key: ApiKey, services: Services, tenant: str | None, call: Any, *args: Any
) -> Response:
    tenant = tenant_of(key, tenant, services)
    result = await _call(call, tenant, *args)
    if services.worker is not None:
        services.worker.nudge()  # the action's audit record, to the read model
    return _json(result)


@router.post("/{incident_id}/acknowledge", response_model=IncidentDetails)
async def acknowledge(
    incident_id: UUID, key: ActKey, services: ServicesDep, desk: Desk, tenant: TenantParam = None
) -> Response:
    """Acknowledge: you are on it; escalation stops."""
    return await _act(key, services, tenant, desk.acknowledge, incident_id, _actor(key))


@router.post("/{incident_id}/escalate", response_model=IncidentDetails)
async def escalate(
    incident_id: UUID, key: ActKey, services: ServicesDep, desk: Desk, tenant: TenantParam = None
) -> Response:
    """Page the next level of the incident's escalation policy now."""
    return await _act(key, services, tenant, desk.escalate, incident_id, _actor(key))


@router.post("/{incident_id}/assign", response_model=IncidentDetails)
async def assign(
    incident_id: UUID,
    body: AssignIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    """Make someone the incident commander."""
    return await _act(key, services, tenant, desk.assign, incident_id, body.commander, _actor(key))


@router.post("/{incident_id}/participants", response_model=IncidentDetails)
async def add_participant(
    incident_id: UUID,
    body: ParticipantIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    return await _act(
        key, services, tenant, desk.add_participant, incident_id, body.user, _actor(key)
    )


@router.post("/{incident_id}/severity", response_model=IncidentDetails)
async def change_severity(
    incident_id: UUID,
    body: SeverityIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    return await _act(
        key, services, tenant, desk.change_severity, incident_id, body.severity, _actor(key)
    )


@router.post("/{incident_id}/notes", response_model=IncidentDetails)
async def add_note(
    incident_id: UUID,
    body: NoteIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    """Add a note to the timeline."""
    return await _act(key, services, tenant, desk.note, incident_id, body.text, _actor(key))


@router.post("/{incident_id}/mitigate", response_model=IncidentDetails)
async def mitigate(
    incident_id: UUID,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    body: OptionalNoteIn | None = None,
    tenant: TenantParam = None,
) -> Response:
    """Mark the incident as being mitigated."""
    note = body.note if body else ""
    return await _act(key, services, tenant, desk.start_mitigation, incident_id, _actor(key), note)


@router.post("/{incident_id}/resolve", response_model=IncidentDetails)
async def resolve(
    incident_id: UUID,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    body: OptionalNoteIn | None = None,
    tenant: TenantParam = None,
) -> Response:
    note = body.note if body else ""
    return await _act(key, services, tenant, desk.resolve, incident_id, _actor(key), note)


@router.post("/{incident_id}/close", response_model=IncidentDetails)
async def close(
    incident_id: UUID,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    body: OptionalNoteIn | None = None,
    tenant: TenantParam = None,
) -> Response:
    note = body.note if body else ""
    return await _act(key, services, tenant, desk.close_incident, incident_id, _actor(key), note)


@router.post("/{incident_id}/reopen", response_model=IncidentDetails)
async def reopen(
    incident_id: UUID,
    body: ReasonIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    return await _act(key, services, tenant, desk.reopen, incident_id, _actor(key), body.reason)


@router.post("/{incident_id}/decline", response_model=IncidentDetails)
async def decline(
    incident_id: UUID,
    body: ReasonIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    """Decline: not an incident (a false positive, a pen test)."""
    return await _act(key, services, tenant, desk.decline, incident_id, _actor(key), body.reason)


@router.post("/{incident_id}/merge", response_model=IncidentDetails)
async def merge(
    incident_id: UUID,
    body: MergeIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    """Merge this incident into another open one; its evidence goes along."""
    return await _act(key, services, tenant, desk.merge, incident_id, body.into, _actor(key))


@router.post("/{incident_id}/steps/{step_id}/run", response_model=IncidentDetails)
async def run_step(
    incident_id: UUID,
    step_id: Annotated[str, Field(max_length=100)],
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    """Run an automated runbook step from the backend; its outcome (or the reason it
    failed or was refused) is recorded in the timeline and returned in
    ``step_outcome``."""
    return await _act(key, services, tenant, desk.run_step, incident_id, step_id, _actor(key))


@router.post("/{incident_id}/steps/{step_id}/complete", response_model=IncidentDetails)
async def complete_step(
    incident_id: UUID,
    step_id: Annotated[str, Field(max_length=100)],
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    body: OptionalNoteIn | None = None,
    tenant: TenantParam = None,
) -> Response:
    """Mark a (manual) runbook step done, with a note."""
    note = body.note if body else ""
    return await _act(
        key, services, tenant, desk.complete_step, incident_id, step_id, _actor(key), note
    )


@router.patch("/{incident_id}/postmortem", response_model=IncidentDetails)
async def edit_postmortem(
    incident_id: UUID,
    body: PostmortemIn,
    key: ActKey,
    services: ServicesDep,
    desk: Desk,
    tenant: TenantParam = None,
) -> Response:
    """Set the responders' parts of the post-mortem: summary, impact, root cause,
    lessons, action items (with owner and due date)."""
    fields = body.model_dump(exclude_none=True)
    if not fields:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "body: give at least one field")
    return await _act(
        key, services, tenant, desk.write_postmortem, incident_id, fields, _actor(key)
    )


@router.get(
    "/{incident_id}/postmortem",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/markdown": {}, "text/html": {}}}},
)
async def render_postmortem(
    incident_id: UUID,
    key: ReadKey,
    services: ServicesDep,
    desk: Desk,
    format: Literal["md", "html"] = "md",
    tenant: TenantParam = None,
) -> Response:
    """The post-mortem rendered from the incident's events, as Markdown or HTML."""
    from incident.postmortem import render

    tenant = tenant_of(key, tenant, services)
    incident = await _call(desk.incident, tenant, incident_id)
    templates = services.settings.incident_templates_dir or None
    text = await _call(render, incident, format, templates, desk.ledger)
    media = "text/markdown; charset=utf-8" if format == "md" else "text/html; charset=utf-8"
    return Response(text, media_type=media)


@router.post("/{incident_id}/postmortem/publish")
async def publish_postmortem(
    incident_id: UUID, key: ActKey, services: ServicesDep, desk: Desk, tenant: TenantParam = None
) -> Response:
    """Render the post-mortem and record its SHA-256 in the ledger (so the published
    text can later be shown unaltered). Returns the hashes and the texts."""
    from incident.postmortem import publish

    tenant = tenant_of(key, tenant, services)
    result = await _call(
        publish,
        desk,
        tenant,
        incident_id,
        _actor(key),
        services.settings.incident_templates_dir or None,
    )
    return _json(result)
