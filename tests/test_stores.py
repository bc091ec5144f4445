"""The test stores themselves: PostgreSQL being down is a failure, and schemas stay isolated."""

from __future__ import annotations

import psycopg
import pytest

from tests.events import audit_event
from tests.stores import POSTGRES_URL, PostgresStore, connect_or_fail, with_query


def test_an_unreachable_postgres_fails_the_test_instead_of_skipping_it() -> None:
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is unreachable"):
        connect_or_fail("postgresql://postgres@127.0.0.1:1/test")


def test_the_schema_travels_in_the_database_url() -> None:
    assert with_query("postgresql://u@h/db", schema="s1") == "postgresql://u@h/db?schema=s1"
    assert with_query("postgresql://u@h/db?sslmode=disable", schema="s1") == (
        "postgresql://u@h/db?sslmode=disable&schema=s1"
    )


@pytest.mark.postgres
def test_each_postgres_store_has_its_own_schema_dropped_afterwards() -> None:
    one, other = PostgresStore(), PostgresStore()
    try:
        one.open_ledger().record("acme", [audit_event()])
        assert other.open_ledger().tenants() == []
        assert one.open_ledger().tenants() == ["acme"]
    finally:
        one.close()
        other.close()
    with psycopg.connect(POSTGRES_URL) as connection:
        left = connection.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
            ([one.schema, other.schema],),
        ).fetchall()
    assert left == []
