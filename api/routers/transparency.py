"""``/v1/transparency``: each tenant's signed checkpoint, verifier keys, proofs, and the
tree as C2SP tlog-tiles, scoped to the key's tenant.

Reads of checkpoints, proofs and tiles hold hashes only and are not recorded in the
ledger (a monitor polling the checkpoint would otherwise grow the log it watches, and
call for a checkpoint with every poll); entry bundles and evidence bundles hold records
and are recorded (``audit.query``, ``audit.evidence_export``).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.dependencies import (
    ExportKey,
    QueryKey,
    ServicesDep,
    TenantParam,
    audit_request,
    tenant_of,
)
from api.routers.events import Filters
from api.schemas import ERRORS, ErrorBody
from api.services import Services
from api.transparency import NOT_CONFIGURED, trusted_keys
from audit_core.readmodel import TrailQuery
from audit_core.schema import TENANT_PATTERN
from audit_core.transparency import (
    EvidenceError,
    NotConfiguredError,
    SizeError,
    TileNotFoundError,
    tenant_origin,
)
from audit_core.transparency.evidence import gather, write_bundle
from audit_core.transparency.follower import TransparencyLog
from audit_core.transparency.proofs import TreeReader
from audit_core.transparency.tiles import ENTRIES, TILE_WIDTH, Tile

router = APIRouter(prefix="/v1/transparency", tags=["transparency"], responses=ERRORS)

_TEXT = "text/plain; charset=utf-8"
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Not configured, or nothing signed yet."},
    422: {"model": ErrorBody, "description": "A size or seq beyond the latest checkpoint."},
}


def _log(services: Services) -> TransparencyLog:
    for follower in services.followers:
        if isinstance(follower, TransparencyLog):
            return follower
    raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_CONFIGURED)


def _reader(services: Services) -> TreeReader:
    log = _log(services)
    return TreeReader(log.store, log.tile_cache, log.recent_checkpoints)


def _json(body: dict[str, Any]) -> Response:
    # Encoded here: the generic encoder cost more than the proof itself.
    return Response(orjson.dumps(body), media_type="application/json")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


async def _answer(function: Any, *args: Any) -> Any:
    """Run a tree read in a worker thread; its errors as 4xx."""
    try:
        return await run_in_threadpool(function, *args)
    except SizeError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    except (TileNotFoundError, NotConfiguredError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except EvidenceError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None


def _checkpoint_response(note: str) -> Response:
    # Mutable: caches must not hold it beyond a few seconds (tlog-tiles).
    return Response(note, media_type=_TEXT, headers={"Cache-Control": "max-age=1"})


@router.get(
    "/checkpoint",
    response_class=Response,
    responses={200: {"content": {_TEXT: {}}}, **_NOT_FOUND},
)
async def checkpoint(key: QueryKey, services: ServicesDep, tenant: TenantParam = None) -> Response:
    """The tenant's latest signed checkpoint, exactly as signed (a C2SP signed note)."""
    tenant = tenant_of(key, tenant, services)
    latest = await _answer(_reader(services).latest, tenant)
    return _checkpoint_response(latest.note)


@router.get("/keys")
async def verifier_keys(
    key: QueryKey, services: ServicesDep, tenant: TenantParam = None
) -> dict[str, Any]:
    """The verifier keys of the tenant's log in signed-note ``vkey`` format, named after
    its origin: the current key first, then earlier ones that older checkpoints use."""
    tenant = tenant_of(key, tenant, services)
    _log(services)
    origin = tenant_origin(services.settings.log_origin, tenant)
    keys = [k.named(origin).vkey for k in trusted_keys(services.settings)]
    return {"tenant": tenant, "origin": origin, "keys": keys}


@router.get("/proof/inclusion", response_class=Response, responses=_NOT_FOUND)
async def inclusion(
    key: QueryKey,
    services: ServicesDep,
    tenant: TenantParam = None,
    seq: Annotated[int | None, Query(ge=0, description="The record's seq.")] = None,
    event_id: Annotated[str | None, Query(max_length=256, description="Or its event id.")] = None,
    size: Annotated[
        int | None, Query(ge=1, description="Tree size; default: the latest checkpoint's.")
    ] = None,
) -> Response:
    """Proof that a record is in the tenant's tree of ``size`` leaves: ``hashes`` are
    base64, ordered from the leaf up (RFC 9162 §2.1.3); ``leaf_hash`` is SHA-256(0x00 ‖
    the record's canonical bytes without ``hash``). ``checkpoint`` is the latest signed
    checkpoint, whose tree holds ``size``."""
    tenant = tenant_of(key, tenant, services)
    if (seq is None) == (event_id is None):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give either seq or event_id")
    if event_id is not None:
        record = await run_in_threadpool(services.ledger.get, tenant, event_id)
        seq = int(record["seq"])
    assert seq is not None
    proof = await _answer(_reader(services).inclusion, tenant, seq, size)
    body: dict[str, Any] = {
        "tenant": tenant,
        "seq": proof.seq,
        "tree_size": proof.size,
        "leaf_hash": _b64(proof.leaf_hash),
        "hashes": [_b64(h) for h in proof.hashes],
        "checkpoint": proof.checkpoint.note,
    }
    if event_id is not None:
        body["event_id"] = event_id
    return _json(body)


@router.get("/proof/consistency", response_class=Response, responses=_NOT_FOUND)
async def consistency(
    key: QueryKey,
    services: ServicesDep,
    old: Annotated[int, Query(ge=0, description="The older tree size.")],
    tenant: TenantParam = None,
    new: Annotated[
        int | None, Query(ge=1, description="The newer size; default: the latest checkpoint's.")
    ] = None,
) -> Response:
    """Proof that the tree of ``new`` leaves extends the tree of ``old`` leaves (RFC 9162
    §2.1.4), hashes base64 in RFC order, with the latest signed checkpoint."""
    tenant = tenant_of(key, tenant, services)
    proof = await _answer(_reader(services).consistency, tenant, old, new)
    return _json(
        {
            "tenant": tenant,
            "old_size": proof.old_size,
            "new_size": proof.new_size,
            "hashes": [_b64(h) for h in proof.hashes],
            "checkpoint": proof.checkpoint.note,
        }
    )


_TILES_DOC = (
    "The tenant's log as C2SP tlog-tiles under the prefix "
    "``/v1/transparency/log/<tenant>/``: ``checkpoint``, hash tiles "
    "``tile/<L>/<N>[.p/<W>]`` and entry bundles ``tile/entries/<N>[.p/<W>]`` (each "
    "record's canonical bytes after a big-endian uint16 length; a read of entries is "
    "recorded as ``audit.query``)."
)


@router.get(
    "/log/{log_tenant}/checkpoint",
    response_class=Response,
    responses={200: {"content": {_TEXT: {}}}, **_NOT_FOUND},
    description=_TILES_DOC,
)
async def tiles_checkpoint(log_tenant: str, key: QueryKey, services: ServicesDep) -> Response:
    tenant = tenant_of(key, _tenant(log_tenant), services)
    latest = await _answer(_reader(services).latest, tenant)
    return _checkpoint_response(latest.note)


@router.get(
    "/log/{log_tenant}/tile/{tile_path:path}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **_NOT_FOUND},
    description=_TILES_DOC,
)
async def tile(
    request: Request, log_tenant: str, tile_path: str, key: QueryKey, services: ServicesDep
) -> Response:
    tenant = tenant_of(key, _tenant(log_tenant), services)
    try:
        wanted = Tile.parse(f"tile/{tile_path}")
    except TileNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    if wanted.level == ENTRIES:
        data = await _answer(
            _reader(services).entry_bundle,
            tenant,
            wanted,
            lambda first, end: services.ledger.leaves(tenant, first, end),
        )
        # Records, not hashes: read like a query of the trail, and recorded as one.
        await audit_request(
            services,
            request,
            key,
            tenant,
            "audit.query",
            {"type": "tlog_entries", "id": f"{tenant}/{wanted.path}"},
            {"from_seq": wanted.index * TILE_WIDTH, "returned": wanted.width},
        )
    else:
        data = await _answer(_reader(services).tile, tenant, wanted)
    # A tile never changes once the checkpoint covers it.
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


def _tenant(name: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name!r} is not a tenant name")
    return name


_MAX_EVIDENCE = 100_000


@router.get(
    "/evidence",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, **_NOT_FOUND},
)
async def evidence(
    request: Request,
    key: ExportKey,
    services: ServicesDep,
    filters: Filters,
    tenant: TenantParam = None,
    from_seq: Annotated[int | None, Query(ge=0, description="First seq of a range.")] = None,
    to_seq: Annotated[int | None, Query(ge=0, description="Last seq of a range.")] = None,
) -> Response:
    """An evidence bundle (ZIP, ``vigil-evidence/1``): the records of a seq range, or
    those matching the trail filters, with an inclusion proof each, the signed
    checkpoint, the verifier keys and a manifest. Check it offline with ``vigil
    evidence verify``. Recorded as ``audit.evidence_export`` first."""
    tenant = tenant_of(key, tenant, services)
    log = _log(services)
    if from_seq is not None or to_seq is not None:
        first, last = from_seq or 0, to_seq
        if last is None:
            last = (await _answer(_reader(services).latest, tenant)).size - 1
        if last < first or last - first >= _MAX_EVIDENCE:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"to_seq must be at or after from_seq, and a bundle holds at most "
                f"{_MAX_EVIDENCE} records",
            )
        seqs = list(range(first, last + 1))
        selection: dict[str, Any] = {"from_seq": first, "to_seq": last}
    else:
        query = replace(filters, tenant=tenant)
        seqs = await _answer(_matching, services, query)
        selection = {"query": query.filters()}
    await audit_request(
        services,
        request,
        key,
        tenant,
        "audit.evidence_export",
        {"type": "audit_trail", "id": tenant},
        {"selection": selection, "records": len(seqs)},
    )
    # Records recorded just now are proved once a checkpoint covers them: ask for one.
    await run_in_threadpool(lambda: log.sign_due(force=True, tenant=tenant))
    origin = tenant_origin(services.settings.log_origin, tenant)
    keys = [k.named(origin).vkey for k in trusted_keys(services.settings)]
    parts = await _answer(
        lambda: gather(
            services.ledger,
            _reader(services),
            tenant,
            seqs,
            origin=origin,
            selection=selection,
            verifier_keys=keys,
        )
    )
    buffer = io.BytesIO()
    await run_in_threadpool(lambda: write_bundle(buffer, **parts))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="vigil-evidence-{tenant}-{stamp}.zip"'
        },
    )


def _matching(services: Services, query: TrailQuery) -> list[int]:
    seqs: list[int] = []
    for page in services.view.iter_seqs(query):
        seqs += page
        if len(seqs) > _MAX_EVIDENCE:
            raise SizeError(
                f"more than {_MAX_EVIDENCE} records match; narrow the filters or give a seq range"
            )
    return seqs
