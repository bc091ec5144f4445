"""What writing the read model costs PostgreSQL, per row, beside baselines from the same run.

Run ``python bench/readmodel.py`` (see ``--help``). The rows are those of
``bench/ledger.py``'s events, written in pages of 2,000, one transaction per page, as
the follower writes them, each variant into a fresh schema:

1. Vigil: ``PostgresTrailView.project``: the table and its indexes, the blocks of text
   for the free text search, and the follower's position.
2. Floor: psycopg binary ``COPY`` of the same rows into a table with only its primary
   key.
3. The design the blocks replaced: Vigil's table and indexes plus a trigram index of
   every row's text.

The figure is the CPU time of all of PostgreSQL's processes (backends, WAL writer,
checkpointer) per row, read from ``/proc``; wall time is printed beside it. Each variant
runs twice, interleaved, because the machine's speed drifts. The script only prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from eventsourcing.persistence import Tracking
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import (  # type: ignore[import-not-found]  # bench/ledger.py
    connect,
    cpu_seconds,
    fresh_schema,
    ledger_env,
    make_events,
    postgres_pids,
)

from audit_core.readmodel import (
    TABLE,
    PostgresTrailView,
    Row,
    close_view,
    open_view,
    to_row,
)
from audit_core.readmodel.rows import _COLUMNS, _WIDTH

PAGE = 2000


def make_rows(count: int) -> list[Row]:
    rows = []
    for seq, raw in enumerate(make_events(count, "rm")):
        record = orjson.loads(raw)
        record.update(tenant="acme-support", seq=seq)
        rows.append(to_row(record))
    return rows


def measure(rows: Sequence[Row], write_page: Callable[[Sequence[Row], int], None]) -> str:
    processes = postgres_pids()
    cpu, started = cpu_seconds(processes), time.perf_counter()
    for start in range(0, len(rows), PAGE):
        write_page(rows[start : start + PAGE], start + PAGE)
    wall = time.perf_counter() - started
    used = cpu_seconds(processes) - cpu
    return f"{1e6 * used / len(rows):5.1f} µs CPU ({1e6 * wall / len(rows):5.1f} µs wall)"


def vigil(url: str, schema: str, rows: Sequence[Row]) -> str:
    view = open_view(ledger_env(url, schema))
    assert isinstance(view, PostgresTrailView)
    try:
        return measure(rows, lambda page, position: view.project(page, Tracking("bench", position)))
    finally:
        close_view(view)


def plain_copy(url: str, schema: str, rows: Sequence[Row], *, trigram_rows: bool) -> str:
    """COPY into a copy of Vigil's table: with only its primary key (the floor), or
    with all its indexes and a trigram index of every row's text."""
    env = ledger_env(url, schema)
    close_view(open_view(env))  # creates Vigil's table, whose shape is copied, and pg_trgm
    with connect(env) as conn:
        table = sql.Identifier(schema, "bench_rows")
        source = sql.Identifier(schema, TABLE)
        if trigram_rows:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(table, source))
            conn.execute(
                sql.SQL("CREATE INDEX ON {} USING gin (search gin_trgm_ops)").format(table)
            )
        else:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(table, source))
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (tenant, seq)").format(table))
        statement = sql.SQL("COPY {} (" + _COLUMNS + ") FROM STDIN (FORMAT BINARY)").format(table)
        conn.autocommit = False

        def write_page(page: Sequence[Row], position: int) -> None:
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(["text", "int8", *["text"] * (_WIDTH - 3), "int8"])
                for row in page:
                    copy.write_row(row)
            conn.commit()

        return measure(rows, write_page)


def floor(url: str, schema: str, rows: Sequence[Row]) -> str:
    return plain_copy(url, schema, rows, trigram_rows=False)


def row_trigrams(url: str, schema: str, rows: Sequence[Row]) -> str:
    return plain_copy(url, schema, rows, trigram_rows=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "VIGIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc"):
        raise SystemExit("this bench reads CPU time from /proc (Linux)")
    rows = make_rows(args.rows)
    variants: list[tuple[str, Callable[[str, str, Sequence[Row]], str]]] = [
        ("floor: COPY, primary key only", floor),
        ("Vigil: PostgresTrailView.project", vigil),
        ("before: trigram index of every row", row_trigrams),
    ]
    print(f"{args.rows:,} read-model rows in pages of {PAGE:,}; PostgreSQL CPU per row")
    results: dict[str, list[str]] = {name: [] for name, _ in variants}
    with connect(ledger_env(args.postgres_url, "public")) as admin:
        for _ in range(2):
            for name, run in variants:
                with fresh_schema(admin, "readmodel") as schema:
                    results[name].append(run(args.postgres_url, schema, rows))
    for name, figures in results.items():
        print(f"  {name:<38} {' | '.join(figures)}")


if __name__ == "__main__":
    main()
