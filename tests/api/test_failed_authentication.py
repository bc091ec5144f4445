"""Every 401 is audited (PCI DSS 10.2.1.4): in the tenant of the key the token names, or in
the reserved ``vigil-system`` log; a flood of bad tokens is counted, not itemised."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.keys import InvalidKeySpecError
from tests.api.conftest import Api, OpenApi
from tests.events import audit_event
from tests.stores import Store


def _failures(api: Api, tenant: str) -> list[dict[str, Any]]:
    if not api.services.ledger.has_log(tenant):
        return []
    return [r for r in api.trail(tenant) if r["action"].startswith("access.unauthenticated")]


def test_each_kind_of_failed_authentication_is_recorded_where_it_belongs(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.client.post("/v1/events", json=audit_event("a-1"), headers=api.headers("acme", "ingest"))
    known, token_headers = api.key("acme", "analyst")
    token = token_headers["Authorization"].removeprefix("Bearer ")
    revoked, revoked_headers = api.key("acme", "analyst")
    api.services.keys.revoke(revoked.key_id)
    expiring, expiring_headers = api.key(
        "acme", "analyst", expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    wrong_secret = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    unknown = "vgl_0000000000ff_" + "x" * 43
    attempts = {
        "missing": {},
        "malformed": {"Authorization": "Bearer not-a-token"},
        "unknown_key": {"Authorization": f"Bearer {unknown}"},
        "wrong_secret": {"Authorization": f"Bearer {wrong_secret}"},
        "revoked": revoked_headers,
    }
    for headers in attempts.values():
        assert api.client.get("/v1/events", headers=headers).status_code == 401
    later = datetime.now(UTC) + timedelta(hours=2)
    monkeypatch.setattr("api.keys._now", lambda: later)
    assert api.client.get("/v1/events", headers=expiring_headers).status_code == 401

    in_acme = _failures(api, "acme")
    in_system = _failures(api, "vigil-system")
    assert [(r["metadata"]["reason"], r["actor"]["id"]) for r in in_acme] == [
        ("wrong_secret", known.key_id),
        ("revoked", revoked.key_id),
        ("expired", expiring.key_id),
    ]
    assert [(r["metadata"]["reason"], r["actor"]["id"]) for r in in_system] == [
        ("missing", "unknown"),
        ("malformed", "unknown"),
        ("unknown_key", "unknown"),
    ]
    assert in_system[2]["metadata"]["presented_key_id"] == "0000000000ff"
    for record in in_acme + in_system:
        assert (record["outcome"], record["source"]) == ("failure", "api")
        assert record["target"] == {"type": "api_route", "id": "GET /v1/events", "name": None}
        assert record["actor"]["type"] == "api_key"
    everything = str(in_acme + in_system)
    assert token[20:] not in everything
    assert wrong_secret[20:] not in everything
    assert unknown[20:] not in everything


def test_a_flood_of_bad_tokens_is_counted_not_itemised(open_api: OpenApi, store: Store) -> None:
    api = open_api(auth_failure_audit_limit=3, auth_failure_audit_window_seconds=3600)
    for number in range(40):
        headers = {"Authorization": f"Bearer vgl_{number:012x}_" + "y" * 43}
        assert api.client.get("/v1/verify", headers=headers).status_code == 401
    assert len(_failures(api, "vigil-system")) == 3
    api.client.__exit__(None, None, None)  # stopping records what it counted

    trail = store.open_ledger().read("vigil-system")
    assert [r["action"] for r in trail] == ["access.unauthenticated"] * 3 + [
        "access.unauthenticated.suppressed"
    ]
    assert trail[-1]["metadata"]["suppressed"] == 37
    assert trail[-1]["metadata"]["routes"] == {"GET /v1/verify": 37}


def test_a_window_s_suppressed_count_is_recorded_when_it_ends(open_api: OpenApi) -> None:
    api = open_api(auth_failure_audit_limit=2, auth_failure_audit_window_seconds=0.5)
    for _ in range(7):
        assert api.client.get("/v1/events", headers={}).status_code == 401
    deadline = time.monotonic() + 30
    while not [r for r in _failures(api, "vigil-system") if "suppressed" in r["action"]]:
        assert time.monotonic() < deadline, "the suppressed count was never recorded"
        time.sleep(0.1)
    [summary] = [r for r in _failures(api, "vigil-system") if "suppressed" in r["action"]]
    assert summary["metadata"]["suppressed"] == 5
    assert summary["metadata"]["recorded"] == 2


def test_vigil_system_takes_no_key_and_no_event(api: Api) -> None:
    operator = api.headers("ops", "admin", all_tenants=True)
    refused_key = api.client.post(
        "/v1/keys", json={"tenant": "vigil-system", "roles": ["ingest"]}, headers=operator
    )
    refused_event = api.client.post(
        "/v1/events", params={"tenant": "vigil-system"}, json=audit_event("x"), headers=operator
    )
    assert (refused_key.status_code, refused_event.status_code) == (403, 403)
    with pytest.raises(InvalidKeySpecError, match="reserved"):
        api.services.keys.create("vigil-system", ["ingest"])
    assert not _failures(api, "vigil-system")
    assert api.client.get("/v1/events", headers={}).status_code == 401
    readable = api.client.get("/v1/verify", params={"tenant": "vigil-system"}, headers=operator)
    assert readable.status_code == 200
    assert readable.json()["ok"] is True
