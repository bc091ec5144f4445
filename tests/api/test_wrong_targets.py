"""Pointed at the wrong store or tenant, a command fails loudly, names what it looked for,
and creates nothing: a reading command never turns a typo into an empty success."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from api.cli import app
from tests.api.test_cli import Vigil, jsonl
from tests.events import audit_events
from tests.stores import POSTGRES_URL, PostgresStore, SQLiteStore, with_query
from tests.tampering import seed

READING = [
    ["verify"],
    ["verify", "--tenant", "acme"],
    ["tail", "-t", "acme"],
    ["show", "--seq", "0", "-t", "acme"],
    ["tenants"],
    ["keys", "list"],
    ["status"],
]
reading = pytest.mark.parametrize("args", READING, ids=lambda args: "-".join(args[:2]))


def run(url: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, list(args), input=stdin, env={"VIGIL_DATABASE_URL": url}, catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


@reading
def test_reading_a_missing_sqlite_file_exits_3_naming_it_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    path = tmp_path / "no" / "such" / "dir" / "ledger.db"
    code, _, stderr = run(f"sqlite:///{path}", *args)
    assert code == 3
    assert f"no database at {path}" in stderr
    assert not (tmp_path / "no").exists()


@reading
def test_reading_a_sqlite_file_without_a_ledger_exits_3(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE unrelated (x)")
    connection.close()
    code, _, stderr = run(f"sqlite:///{path}", *args)
    assert code == 3
    assert "without a Vigil ledger" in stderr


@pytest.mark.parametrize("args", [*READING, ["record", "-t", "acme"]], ids=str)
def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("shopping list: milk, eggs\n" * 100)
    code, _, stderr = run(f"sqlite:///{path}", *args, stdin=jsonl(audit_events(1)))
    assert code == 2
    assert f"{path} (VIGIL_DATABASE_URL=sqlite:///{path}) is not a SQLite database" in stderr
    assert "Traceback" not in stderr
    assert path.read_text().startswith("shopping list")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://ledger.db", "names no file"),
        ("sqlite://", "names no file"),
        ("postgresql://postgres@127.0.0.1:5432", "names no database"),
        ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
    ],
)
def test_a_malformed_database_url_exits_2_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (["tenants"], ["record", "-t", "acme"]):
        code, _, stderr = run(url, *args, stdin=jsonl(audit_events(1)))
        assert code == 2
        assert "bad configuration: VIGIL_DATABASE_URL" in stderr
        assert message in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
@reading
def test_reading_a_postgres_schema_without_a_ledger_exits_3_and_creates_no_schema(
    args: list[str],
) -> None:
    schema = f"vigil_missing_{uuid.uuid4().hex[:8]}"
    code, _, stderr = run(with_query(POSTGRES_URL, schema=schema), *args)
    assert code == 3
    assert f"no Vigil ledger in database 'test', schema '{schema}'" in stderr
    with psycopg.connect(POSTGRES_URL) as connection:
        found = connection.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    assert found == (0,)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("url", "reason", "code"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/no_such_db",
            'database "no_such_db" does not exist',
            3,
        ),
        ("postgresql://no_such_role@127.0.0.1:5432/test", 'role "no_such_role" does not exist', 5),
        ("postgresql://postgres:hunter2-secret@127.0.0.1:1/test", "Connection refused", 5),
    ],
    ids=["database", "role", "refused"],
)
def test_postgres_connection_errors_carry_the_server_s_reason_never_the_password(
    url: str, reason: str, code: int
) -> None:
    for args in (["tenants"], ["record", "-t", "acme"]):
        exit_code, _, stderr = run(url, *args, stdin=jsonl(audit_events(1)))
        assert reason in stderr
        assert "hunter2-secret" not in stderr
        assert "Traceback" not in stderr
        assert exit_code == (code if args == ["tenants"] else 5)


def test_a_ledger_on_an_existing_store_reads_with_every_command(sqlite_store: SQLiteStore) -> None:
    seed(sqlite_store.open_ledger())
    for args in READING:
        code, _, stderr = run(sqlite_store.url, *args)
        assert code == 0, (args, stderr)


def test_verify_of_a_known_and_an_unknown_tenant_names_the_unknown_one(
    postgres_store: PostgresStore, tmp_path: Path
) -> None:
    seed(postgres_store.open_ledger())
    result = Vigil(postgres_store, tmp_path)("verify", "--tenant", "acme", "--tenant", "typo")
    assert result.exit_code == 3
    assert "no audit log for tenant 'typo'" in result.stderr


def _vigil_serve(store: SQLiteStore, cwd: Path, port: int) -> subprocess.Popen[bytes]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("VIGIL_")}
    env.update(VIGIL_DATABASE_URL=store.url, VIGIL_PORT=str(port), VIGIL_READMODEL_FOLLOW="false")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "vigil"), "serve"],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_vigil_serve_logs_on_stderr_and_a_port_in_use_exits_2_naming_it(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    seed(sqlite_store.open_ledger())
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    first = _vigil_serve(sqlite_store, tmp_path, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert first.poll() is None, "vigil serve stopped"
            assert time.monotonic() < deadline, "vigil serve never answered"
            time.sleep(0.1)
        second = _vigil_serve(sqlite_store, tmp_path, port)
        second_out, second_err = second.communicate(timeout=60)
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in second_err.decode()
        assert "VIGIL_PORT" in second_err.decode()
        assert second_out == b""
    finally:
        first.terminate()
        first_out, first_err = first.communicate(timeout=30)
    assert first_out == b""
    assert b'"event":"started"' in first_err
