"""An ``admin`` key manages its own tenant only; reaching every tenant takes an explicit
operator key (``--all-tenants``). A key is revoked, and its revocation recorded, once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from api.keys import token_hash
from tests.api.conftest import Api, OpenApi
from tests.api.test_cli import Vigil
from tests.events import audit_event
from tests.stores import SQLiteStore, Store


def test_a_tenant_admin_manages_its_own_tenant_and_nothing_beyond(api: Api) -> None:
    api.client.post("/v1/events", json=audit_event("g-1"), headers=api.headers("globex", "ingest"))
    globex_key, _ = api.key("globex", "analyst")
    _, admin = api.key("acme", "admin")

    own = api.client.post("/v1/keys", json={"tenant": "acme", "roles": ["analyst"]}, headers=admin)
    assert own.status_code == 201
    refused = [
        api.client.post("/v1/keys", json={"tenant": "globex", "roles": ["admin"]}, headers=admin),
        api.client.post(
            "/v1/keys",
            json={"tenant": "acme", "roles": ["admin"], "all_tenants": True},
            headers=admin,
        ),
        api.client.get("/v1/keys", params={"tenant": "globex"}, headers=admin),
        api.client.delete(f"/v1/keys/{globex_key.key_id}", headers=admin),
        api.client.get("/v1/events", params={"tenant": "globex"}, headers=admin),
        api.client.get("/v1/verify", params={"tenant": "globex"}, headers=admin),
    ]
    assert [response.status_code for response in refused] == [403] * len(refused)
    listed = api.client.get("/v1/keys", headers=admin).json()
    assert {key["tenant"] for key in listed} == {"acme"}
    assert api.services.keys.get(globex_key.key_id).revoked_at is None
    assert {key.tenant for key in api.services.keys.list()} == {"acme", "globex"}


def test_an_all_tenants_admin_key_manages_every_tenant(api: Api) -> None:
    api.client.post("/v1/events", json=audit_event("g-1"), headers=api.headers("globex", "ingest"))
    globex_key, _ = api.key("globex", "analyst")
    operator_key, operator = api.key("ops", "admin", all_tenants=True)

    created = api.client.post(
        "/v1/keys",
        json={"tenant": "ops", "roles": ["auditor"], "all_tenants": True},
        headers=operator,
    )
    assert created.status_code == 201
    assert created.json()["key"]["all_tenants"] is True
    assert api.client.delete(f"/v1/keys/{globex_key.key_id}", headers=operator).status_code == 200
    verified = api.client.get("/v1/verify", params={"tenant": "globex"}, headers=operator)
    assert verified.status_code == 200
    listed = api.client.get("/v1/keys", headers=operator).json()
    assert {key["tenant"] for key in listed} == {"globex", "ops"}
    assert {key["key_id"]: key["all_tenants"] for key in listed}[operator_key.key_id] is True


def test_an_admin_key_made_before_operator_keys_existed_keeps_its_own_tenant_only(
    store: Store, open_api: OpenApi
) -> None:
    ledger = store.open_ledger()
    ledger.record("acme", [audit_event("a-1")])
    ledger.record("globex", [audit_event("g-1")])
    token = "vgl_0123456789ab_" + "s" * 43
    blob = "bytea" if store.name == "postgres" else "BLOB"
    table = store.events_table.replace("ledger_events", "api_keys").replace(
        "stored_events", "api_keys"
    )
    # The table as the previous release created it, with one admin key in it.
    store._run(
        f"CREATE TABLE {table} (key_id TEXT PRIMARY KEY, secret_hash {blob} NOT NULL, "
        "tenant TEXT NOT NULL, roles TEXT NOT NULL, created_at TEXT NOT NULL, "
        "expires_at TEXT, networks TEXT NOT NULL, revoked_at TEXT, description TEXT NOT NULL)"
    )
    store._run(
        f"INSERT INTO {table} VALUES (?, ?, 'acme', 'admin', ?, NULL, '[]', NULL, 'old')",
        ("0123456789ab", token_hash(token), datetime.now(UTC).isoformat()),
    )
    api = open_api()
    headers = {"Authorization": f"Bearer {token}"}

    assert api.client.get("/v1/verify", headers=headers).status_code == 200
    assert api.client.get("/v1/keys", headers=headers).status_code == 200
    other = api.client.get("/v1/verify", params={"tenant": "globex"}, headers=headers)
    assert other.status_code == 403
    assert api.services.keys.get("0123456789ab").all_tenants is False


def test_vigil_keys_create_all_tenants_and_list_shows_it(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    vigil = Vigil(sqlite_store, tmp_path)
    operator = vigil("keys", "create", "--tenant", "ops", "--role", "admin", "--all-tenants")
    assert operator.exit_code == 0, operator.stderr
    assert "for every tenant (operator key)" in operator.stderr
    scoped = vigil("keys", "create", "--tenant", "acme", "--role", "admin")
    assert "for tenant acme" in scoped.stderr

    listed = vigil("keys", "list")
    rows = {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()}
    assert rows == {"ops": "ALL-TENANTS", "acme": "tenant-only"}
    as_json = [orjson.loads(line) for line in vigil("keys", "list", "--json").stdout.splitlines()]
    assert {key["tenant"]: key["all_tenants"] for key in as_json} == {"ops": True, "acme": False}
    created = [r for r in vigil.ledger().read("ops") if r["action"] == "api_key.create"]
    assert created[0]["metadata"]["all_tenants"] is True


def test_revoking_a_revoked_key_records_one_revocation(
    store: Store, tmp_path: Path, open_api: OpenApi
) -> None:
    vigil = Vigil(store, tmp_path)
    vigil("keys", "create", "--tenant", "acme", "--role", "analyst")
    [key] = store.open_ledger().read("acme")
    key_id = key["target"]["id"]

    first = vigil("keys", "revoke", key_id)
    again = vigil("keys", "revoke", key_id)
    assert (first.exit_code, again.exit_code) == (0, 0)
    assert "already revoked" in again.stdout
    api = open_api()
    admin = api.headers("acme", "admin")
    over_http = api.client.delete(f"/v1/keys/{key_id}", headers=admin)
    assert over_http.status_code == 200

    revocations = [r for r in api.trail("acme") if r["action"] == "api_key.revoke"]
    assert len(revocations) == 1
