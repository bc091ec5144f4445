"""Liveness, readiness (the database answers, the followers keep up) and Prometheus
metrics; no key needed."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.dependencies import ServicesDep
from api.errors import problem
from api.metrics import CONTENT_TYPE
from audit_core.followers import FollowerStatus

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "The database does not answer, or a follower is stopped at a "
            "record or lags beyond VIGIL_READYZ_MAX_LAG_SECONDS."
        }
    },
)
async def readyz(services: ServicesDep) -> Any:
    """The ledger, followers and key tables answer; each follower's lag and state."""

    def check() -> list[FollowerStatus]:
        services.view.ping()
        services.keys.ping()
        return services.follower_statuses()

    try:
        statuses = await asyncio.wait_for(
            run_in_threadpool(check), services.settings.readyz_timeout_seconds
        )
    except TimeoutError:
        return problem(503, "database unavailable: no answer in time")
    except Exception as error:
        return problem(503, f"database unavailable: {type(error).__name__}: {error}")
    max_lag = services.settings.readyz_max_lag_seconds
    followers: dict[str, Any] = {}
    unready: list[str] = []
    for status in statuses:
        followers[status.name] = {
            "kind": status.kind,
            "position": status.position,
            "lag_events": status.lag_events,
            "lag_seconds": status.lag_seconds,
            "leader": status.leader,
            "stopped_at": status.stopped_at,
            "stopped_reason": status.stopped_reason,
        }
        if status.stopped:
            unready.append(f"{status.name} is stopped at notification {status.stopped_at}")
        elif status.lag_seconds is not None and status.lag_seconds > max_lag:
            unready.append(f"{status.name} lags {status.lag_seconds:.0f} s (> {max_lag:.0f} s)")
    if unready:
        return problem(503, "not ready: " + "; ".join(unready), followers=followers)
    return {"status": "ready", "followers": followers}


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text exposition."""
    body = await run_in_threadpool(services.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
