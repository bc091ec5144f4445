"""Liveness, readiness (the database answers) and Prometheus metrics; no key needed."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.dependencies import ServicesDep
from api.errors import problem
from api.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database does not answer."}})
async def readyz(services: ServicesDep) -> Any:
    """The ledger, read model and key tables answer; reports the read model's lag."""

    def check() -> tuple[int, int]:
        notifications = services.ledger.recorder.max_notification_id() or 0
        services.view.ping()
        services.keys.ping()
        return notifications, services.follower.position()

    try:
        notifications, position = await asyncio.wait_for(
            run_in_threadpool(check), services.settings.readyz_timeout_seconds
        )
    except TimeoutError:
        return problem(503, "database unavailable: no answer in time")
    except Exception as error:
        return problem(503, f"database unavailable: {type(error).__name__}: {error}")
    return {
        "status": "ready",
        "readmodel_lag": max(0, notifications - position),
    }


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text exposition."""
    body = await run_in_threadpool(services.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
