"""API keys: bearer tokens scoped to a tenant and roles, stored as SHA-256 hashes only.

A token reads ``vgl_<key id>_<secret>``: the key id (12 hex digits) is shown in lists and
recorded as the actor of audit events; the secret is 256 random bits and is printed once.
Only SHA-256 of the whole token is stored: with that much entropy a slow password hash
would add nothing but latency to every request.

    ApiKeyError
    ├── InvalidKeySpecError   bad tenant, role, expiry or network when creating a key
    └── ApiKeyNotFoundError   no key with that id
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.utils import Environment

from api.auth_audit import SYSTEM_TENANT
from audit_core.schema import TENANT_PATTERN, is_tenant_name, unstorable_text


class ApiKeyError(Exception):
    """Base of the key store's errors."""


class InvalidKeySpecError(ApiKeyError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ApiKeyNotFoundError(ApiKeyError):
    def __init__(self, key_id: str):
        self.key_id = key_id
        super().__init__(f"no API key {key_id!r}")


class Role(enum.StrEnum):
    INGEST = "ingest"
    ANALYST = "analyst"
    RESPONDER = "responder"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    INGEST = "ingest"
    QUERY = "query"
    EXPORT = "export"
    VERIFY = "verify"
    MANAGE_KEYS = "manage_keys"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.INGEST: frozenset({Permission.INGEST}),
    Role.ANALYST: frozenset({Permission.QUERY}),
    Role.RESPONDER: frozenset({Permission.QUERY}),
    Role.AUDITOR: frozenset({Permission.QUERY, Permission.EXPORT, Permission.VERIFY}),
    Role.ADMIN: frozenset(Permission),
}
"""What each role may do, in the key's own tenant. A key reaches the other tenants only
when it was made with ``all_tenants`` (``vigil keys create --all-tenants``): an operator
key. ``admin`` alone manages its own tenant's keys and nothing beyond."""

_TOKEN = re.compile(r"^vgl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    roles: tuple[Role, ...]
    created_at: datetime
    expires_at: datetime | None = None
    networks: tuple[str, ...] = ()
    """CIDR allowlist of client addresses; empty allows any."""
    revoked_at: datetime | None = None
    description: str = ""
    all_tenants: bool = False
    """An operator key: its roles apply to every tenant, not only its own."""

    @property
    def permissions(self) -> frozenset[Permission]:
        granted: set[Permission] = set()
        for role in self.roles:
            granted |= GRANTS[role]
        return frozenset(granted)

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    def can_access(self, tenant: str) -> bool:
        return tenant == self.tenant or self.all_tenants

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or _now()) >= self.expires_at

    def allows_address(self, address: str | None) -> bool:
        if not self.networks:
            return True
        if address is None:
            return False
        try:
            client = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(client in ipaddress.ip_network(net) for net in self.networks)

    def audit_metadata(self) -> dict[str, Any]:
        """What a key change records in the ledger about the key."""
        return {
            "roles": [role.value for role in self.roles],
            "tenant": self.tenant,
            "all_tenants": self.all_tenants,
            "expires_at": _iso(self.expires_at),
            "networks": list(self.networks),
        }

    def public(self) -> dict[str, Any]:
        """Everything about the key except its hash."""
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "roles": [str(role) for role in self.roles],
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "networks": list(self.networks),
            "revoked_at": _iso(self.revoked_at),
            "description": self.description,
            "all_tenants": self.all_tenants,
        }


MAX_DESCRIPTION_CHARS = 256


def check_spec(
    tenant: str,
    roles: Iterable[str],
    expires_at: datetime | None,
    networks: Iterable[str],
    description: str = "",
) -> tuple[tuple[Role, ...], tuple[str, ...]]:
    """Validated roles and normalised networks of a key about to be created."""
    if not is_tenant_name(tenant):
        raise InvalidKeySpecError("tenant", f"{tenant!r} must match {TENANT_PATTERN}")
    if tenant == SYSTEM_TENANT:
        raise InvalidKeySpecError(
            "tenant",
            f"{SYSTEM_TENANT!r} is reserved for Vigil's log of failed authentications; "
            "read it with an --all-tenants key",
        )
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidKeySpecError(
            "description", f"is longer than {MAX_DESCRIPTION_CHARS} characters"
        )
    unstorable = unstorable_text(description)
    if unstorable is not None:
        raise InvalidKeySpecError("description", unstorable[1])
    parsed: list[Role] = []
    for role in roles:
        try:
            parsed.append(Role(role))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidKeySpecError("roles", f"{role!r} is not one of {known}") from None
    if not parsed:
        raise InvalidKeySpecError("roles", "a key needs at least one role")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidKeySpecError("expires_at", "needs a time zone offset")
        if expires_at <= _now():
            raise InvalidKeySpecError("expires_at", "is in the past")
    cidrs: list[str] = []
    for network in networks:
        try:
            cidrs.append(str(ipaddress.ip_network(network, strict=False)))
        except ValueError:
            raise InvalidKeySpecError("networks", f"{network!r} is not a CIDR network") from None
    return tuple(dict.fromkeys(parsed)), tuple(cidrs)


class KeyStore:
    """Keys in the ledger's database (table ``api_keys``)."""

    _columns = (
        "key_id, secret_hash, tenant, roles, created_at, expires_at, networks, "
        "revoked_at, description, all_tenants"
    )

    def __init__(self, env: dict[str, str]):
        self._factory = InfrastructureFactory.construct(Environment("Keys", env))
        datastore = self._factory.datastore  # type: ignore[attr-defined]
        self._postgres = isinstance(datastore, PostgresDatastore)
        if not self._postgres and not isinstance(datastore, SQLiteDatastore):
            raise TypeError("API keys need SQLite or PostgreSQL")
        self._datastore = datastore
        self.table = f'"{datastore.schema}".api_keys' if self._postgres else "api_keys"
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "key_id TEXT PRIMARY KEY, secret_hash "
            + ("bytea" if self._postgres else "BLOB")
            + " NOT NULL, tenant TEXT NOT NULL, roles TEXT NOT NULL, created_at TEXT NOT NULL, "
            "expires_at TEXT, networks TEXT NOT NULL, revoked_at TEXT, "
            "description TEXT NOT NULL)",
            (),
            commit=True,
        )
        self._add_all_tenants_column()

    def _add_all_tenants_column(self) -> None:
        """Stores made before operator keys existed get the column; their keys, admin
        ones included, are scoped to their own tenant."""
        if self._postgres:
            self._execute(
                f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS "
                "all_tenants boolean NOT NULL DEFAULT false",
                (),
                commit=True,
            )
            return
        columns = [row[1] for row in self._execute(f"PRAGMA table_info({self.table})", ())]
        if "all_tenants" not in columns:
            self._execute(
                f"ALTER TABLE {self.table} ADD COLUMN all_tenants INTEGER NOT NULL DEFAULT 0",
                (),
                commit=True,
            )

    def close(self) -> None:
        self._factory.close()

    def _execute(
        self, statement: str, params: Sequence[Any], *, commit: bool = False
    ) -> list[tuple[Any, ...]]:
        if self._postgres:
            with self._datastore.transaction(commit=commit) as curs:
                curs.execute(statement.replace("?", "%s"), list(params))
                if curs.description is None:
                    return []
                return [tuple(row.values()) for row in curs.fetchall()]
        with self._datastore.transaction(commit=commit) as c:
            c.execute(statement, list(params))
            return [tuple(row) for row in c.fetchall()]

    def create(
        self,
        tenant: str,
        roles: Iterable[str],
        *,
        expires_at: datetime | None = None,
        networks: Iterable[str] = (),
        description: str = "",
        all_tenants: bool = False,
    ) -> tuple[ApiKey, str]:
        """A new key and its token; the token is not stored and cannot be shown again.
        ``all_tenants``: an operator key, whose roles apply to every tenant."""
        parsed_roles, cidrs = check_spec(tenant, roles, expires_at, networks, description)
        key_id = secrets.token_hex(6)
        token = f"vgl_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            key_id, tenant, parsed_roles, _now(), expires_at, cidrs, None, description, all_tenants
        )
        self._execute(
            f"INSERT INTO {self.table} ({self._columns}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                key_id,
                token_hash(token),
                tenant,
                ",".join(parsed_roles),
                _iso(key.created_at),
                _iso(expires_at),
                orjson.dumps(list(cidrs)).decode(),
                None,
                description,
                all_tenants,
            ),
            commit=True,
        )
        return key, token

    @staticmethod
    def _key(row: tuple[Any, ...]) -> ApiKey:
        key_id, _, tenant, roles, created, expires, networks, revoked, description, every = row
        return ApiKey(
            key_id=key_id,
            tenant=tenant,
            roles=tuple(Role(r) for r in roles.split(",")),
            created_at=datetime.fromisoformat(created),
            expires_at=datetime.fromisoformat(expires) if expires else None,
            networks=tuple(orjson.loads(networks)),
            revoked_at=datetime.fromisoformat(revoked) if revoked else None,
            description=description,
            all_tenants=bool(every),
        )

    def get(self, key_id: str) -> ApiKey:
        rows = self._execute(
            f"SELECT {self._columns} FROM {self.table} WHERE key_id = ?", (key_id,)
        )
        if not rows:
            raise ApiKeyNotFoundError(key_id)
        return self._key(rows[0])

    def authenticate(self, token: str) -> ApiKey | None:
        """The key a token belongs to, whatever its state, or None if the token is wrong."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        rows = self._execute(
            f"SELECT {self._columns} FROM {self.table} WHERE key_id = ?", (match.group(1),)
        )
        if not rows or not hmac.compare_digest(bytes(rows[0][1]), token_hash(token)):
            return None
        return self._key(rows[0])

    def named_by(self, token: str) -> tuple[str | None, ApiKey | None]:
        """The key id a token names, if it is shaped like a token, and that key if it
        exists (whether or not the token's secret is its own): whose failure it is."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None, None
        try:
            return match.group(1), self.get(match.group(1))
        except ApiKeyNotFoundError:
            return match.group(1), None

    def list(self, tenant: str | None = None, *, include_revoked: bool = True) -> list[ApiKey]:
        statement = f"SELECT {self._columns} FROM {self.table}"
        params: list[Any] = []
        clauses = []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if not include_revoked:
            clauses.append("revoked_at IS NULL")
        if clauses:
            statement += " WHERE " + " AND ".join(clauses)
        statement += " ORDER BY created_at, key_id"
        return [self._key(row) for row in self._execute(statement, params)]

    def revoke(self, key_id: str) -> tuple[ApiKey, bool]:
        """Revoke a key; the key, and whether this call revoked it (False: it already
        was, and nothing changed), so that a revocation is recorded once even when two
        calls race."""
        self.get(key_id)  # ApiKeyNotFoundError
        changed = self._execute(
            f"UPDATE {self.table} SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL "
            "RETURNING key_id",
            (_iso(_now()), key_id),
            commit=True,
        )
        return self.get(key_id), bool(changed)

    def ping(self) -> None:
        self._execute("SELECT 1", ())
