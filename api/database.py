"""What ``VIGIL_DATABASE_URL`` points at, checked before a ledger is opened on it.

Opening a ledger creates whatever is missing (a SQLite file and its directories, a
PostgreSQL schema and tables), which is right for a command that writes and wrong for
one that reads: ``vigil verify`` on a mistyped path would create an empty store and
report an empty success. So reading commands first ask :func:`check_database` whether
the store exists, and every command gets a connection failure with the server's own
reason (no such role or database, connection refused, authentication failed) rather
than the pool's "couldn't get a connection".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from psycopg import sql

from api.settings import Settings

EVENTS_TABLES = {"sqlite": "stored_events", "postgres": "ledger_events"}
"""The ledger's events table on each backend (the library names it after the app)."""


class DatabaseUnusableError(Exception):
    """The store cannot be used as asked; ``exit_code`` follows the CLI's convention."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)


def check_database(settings: Settings, *, must_exist: bool) -> None:
    """Raise ``DatabaseUnusableError`` unless the store can be opened; with ``must_exist``,
    also unless it already holds a ledger (nothing is created either way)."""
    env = settings.ledger_env(create=False)
    if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        _check_sqlite(settings, env["SQLITE_DBNAME"], must_exist=must_exist)
    else:
        _check_postgres(settings, env, must_exist=must_exist)


def _check_sqlite(settings: Settings, name: str, *, must_exist: bool) -> None:
    if name == ":memory:":
        return
    path = Path(name)
    where = f"{path.resolve()} (VIGIL_DATABASE_URL={settings.redacted_database_url()})"
    if not path.exists():
        if must_exist:
            raise DatabaseUnusableError(
                f"no database at {where}; nothing was created. Check the path, or record "
                "events first",
                3,
            )
        return
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = connection.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                (EVENTS_TABLES["sqlite"],),
            ).fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise DatabaseUnusableError(f"{where} is not a SQLite database ({error})", 2) from None
    if must_exist and not tables:
        raise DatabaseUnusableError(
            f"{where} is a SQLite database without a Vigil ledger in it; nothing was created",
            3,
        )


def _check_postgres(settings: Settings, env: dict[str, str], *, must_exist: bool) -> None:
    password = env.get("POSTGRES_PASSWORD", "")
    try:
        connection = psycopg.connect(
            host=env["POSTGRES_HOST"],
            port=int(env["POSTGRES_PORT"]),
            dbname=env["POSTGRES_DBNAME"],
            user=env["POSTGRES_USER"],
            password=password or None,
            connect_timeout=int(env.get("POSTGRES_CONNECT_TIMEOUT") or 5),
            autocommit=True,
        )
    except psycopg.Error as error:
        reason = " ".join(str(error).split())
        if password:
            reason = reason.replace(password, "***")
        missing = f'database "{env["POSTGRES_DBNAME"]}" does not exist' in reason
        raise DatabaseUnusableError(
            f"cannot connect to PostgreSQL at {settings.redacted_database_url()}: {reason}",
            3 if missing and must_exist else 5,
        ) from None
    if not must_exist:
        connection.close()
        return
    schema = env.get("POSTGRES_SCHEMA") or "public"
    try:
        found = connection.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            (sql.Identifier(schema, EVENTS_TABLES["postgres"]).as_string(connection),),
        ).fetchone()
    finally:
        connection.close()
    if not found or not found[0]:
        raise DatabaseUnusableError(
            f"no Vigil ledger in database {env['POSTGRES_DBNAME']!r}, schema {schema!r} "
            f"(VIGIL_DATABASE_URL={settings.redacted_database_url()}); nothing was created",
            3,
        )
