"""What writing the read model costs PostgreSQL, per row, beside baselines from the same run.

Run ``python bench/readmodel.py`` (see ``--help``). The rows are those of
``bench/ledger.py``'s events, written in pages of 2,000, one transaction per page, as
the follower writes them, each variant into a fresh schema:

1. Floor: psycopg binary ``COPY`` of the same rows into a table with only its primary
   key.
2. Baseline: Vigil without the investigation filters: ``PostgresTrailView.project`` of
   rows without address, session and request, their three indexes dropped.
3. Vigil: ``PostgresTrailView.project``: the table and all its indexes (the address, the
   session and the request included), the blocks of text for the free text search, and
   the follower's position.
4. Vigil keyed: the same with ``VIGIL_ENCRYPTION_KEY`` set (keyed hashes in place of
   identifiers and words).
5. With ``--row-trigrams``, the design the blocks replaced: Vigil's table and indexes
   plus a trigram index of every row's text.

Request ids are made random (128 bits, as a UUID is), not the bench events' sequence:
a random key lands anywhere in its index, the costlier case. After the runs, queries by
each filter are timed on the last Vigil table (``ANALYZE``d first), beside the query by
actor as their baseline, and the follower's Python time to make a row is printed, in
clear and keyed.

The figure is the CPU time per row of the backend that writes, read from ``/proc``
(other clients of a shared server do not blur it); that of all of PostgreSQL's processes
(backends, WAL writer, checkpointer, and whatever else the server serves meanwhile) and
the wall time are printed beside it. Each variant
runs twice, interleaved, because the machine's speed drifts. The script only prints.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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

from audit_core.followers import open_store
from audit_core.readmodel import (
    TABLE,
    BlindIndex,
    PostgresTrailView,
    Row,
    TrailQuery,
    to_row,
    trail_view_class,
)
from audit_core.readmodel.rows import _COLUMNS

PAGE = 2000


KEY = base64.b64encode(b"bench-key-" * 3 + b"32").decode()
TENANT = "acme-support"


def make_records(count: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    records = []
    for seq, raw in enumerate(make_events(count, "rm")):
        record = orjson.loads(raw)
        record.update(tenant=TENANT, seq=seq, request_id=f"{rng.getrandbits(128):032x}")
        records.append(record)
    return records


def make_rows(records: Sequence[dict[str, Any]], blind: BlindIndex | None = None) -> list[Row]:
    return [to_row(record, blind) for record in records]


def without_investigation(rows: Sequence[Row]) -> list[Row]:
    return [(*row[:12], None, None, None) for row in rows]


def python_cost(records: Sequence[dict[str, Any]]) -> str:
    """The follower's time to make rows (from decoded records), in clear and keyed."""
    figures = []
    for blind in (None, BlindIndex(KEY)):
        started = time.perf_counter()
        make_rows(records, blind)
        figures.append(1e6 * (time.perf_counter() - started) / len(records))
    return f"in clear {figures[0]:.2f} µs, keyed {figures[1]:.2f} µs (hashes cached per value)"


def measure(
    rows: Sequence[Row], write_page: Callable[[Sequence[Row], int], None], backend: int
) -> str:
    """CPU per row of the one backend that writes (what a busy machine's other clients
    of the same server do not blur), and of all of PostgreSQL's processes."""
    processes = postgres_pids()
    cpu, own, started = cpu_seconds(processes), cpu_seconds([backend]), time.perf_counter()
    for start in range(0, len(rows), PAGE):
        write_page(rows[start : start + PAGE], start + PAGE)
    wall = time.perf_counter() - started
    used, own = cpu_seconds(processes) - cpu, cpu_seconds([backend]) - own
    per_row = 1e6 / len(rows)
    return (
        f"{own * per_row:5.1f} µs backend CPU ({used * per_row:5.1f} all, "
        f"{wall * per_row:5.1f} wall)"
    )


@contextlib.contextmanager
def opened_view(env: dict[str, str]) -> Iterator[PostgresTrailView]:
    """The read model's tables, created if need be, on a follower store of their own."""
    store = open_store(env)
    try:
        view = store.view_recorder(trail_view_class(env))
        assert isinstance(view, PostgresTrailView)
        yield view
    finally:
        store.close()


def vigil(url: str, schema: str, rows: Sequence[Row], *, key: str | None = None) -> str:
    # One connection, so the backend that writes is known.
    env = {**ledger_env(url, schema), "POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "0"}
    if key:
        env["CIPHER_KEY"] = key
    with opened_view(env) as view:
        with view.datastore.get_connection() as conn:
            backend = conn.info.backend_pid
        return measure(
            rows, lambda page, position: view.project(page, Tracking("bench", position)), backend
        )


def baseline(url: str, schema: str, rows: Sequence[Row]) -> str:
    """Vigil as it was before the investigation filters: no address, session or
    request in the rows, and none of their indexes."""
    env = ledger_env(url, schema)
    with opened_view(env):  # creates the read model's tables
        pass
    with connect(env) as conn:
        for name in ("ip", "session", "request"):
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, f"{TABLE}_{name}")))
    return vigil(url, schema, without_investigation(rows))


def keyed(url: str, schema: str, rows: Sequence[Row]) -> str:
    return vigil(url, schema, rows, key=KEY)


def query_times(url: str, schema: str, sample: dict[str, Any], repeats: int = 30) -> list[str]:
    """Median time of the newest 50 matches of each filter, from the read model alone."""
    env = ledger_env(url, schema)
    with connect(env) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, TABLE)))
    shapes: list[tuple[str, dict[str, str]]] = [
        ("actor (baseline)", {"actor_id": "u-1012"}),
        ("address", {"actor_ip": sample["actor"]["ip"]}),
        ("network /24, few", {"actor_ip": "10.20.3.0/24"}),
        ("network /16, services", {"actor_ip": "10.20.0.0/16"}),
        ("network /24, most", {"actor_ip": "203.0.113.0/24"}),
        ("network IPv6 /32", {"actor_ip": "2001:db8::/32"}),
        ("session", {"session_id": sample["actor"]["session_id"]}),
        ("request", {"request_id": sample["request_id"]}),
    ]
    lines = []
    with opened_view(env) as view:
        for name, filters in shapes:
            query = TrailQuery(tenant=TENANT, limit=50, **filters)  # type: ignore[arg-type]
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                found = view.query(query).seqs
                times.append(time.perf_counter() - started)
            median = statistics.median(times) * 1000
            lines.append(f"  {name:<24} {median:7.2f} ms median ({len(found)} found)")
    return lines


def plain_copy(url: str, schema: str, rows: Sequence[Row], *, trigram_rows: bool) -> str:
    """COPY into a copy of Vigil's table: with only its primary key (the floor), or
    with all its indexes and a trigram index of every row's text."""
    env = ledger_env(url, schema)
    with opened_view(env):  # creates Vigil's table, whose shape is copied, and pg_trgm
        pass
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
                copy.set_types(["text", "int8", *["text"] * 9, "int8", "text", "text", "inet"])
                for row in page:
                    address = None if row[-1] is None else ipaddress.ip_address(row[-1])
                    copy.write_row((*row[:-1], address))
            conn.commit()

        return measure(rows, write_page, conn.info.backend_pid)


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
    parser.add_argument("--row-trigrams", action="store_true", help="also the older design")
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc"):
        raise SystemExit("this bench reads CPU time from /proc (Linux)")
    records = make_records(args.rows)
    rows = make_rows(records)
    keyed_rows = make_rows(records, BlindIndex(KEY))
    variants: list[tuple[str, Callable[[str, str, Sequence[Row]], str]]] = [
        ("floor: COPY, primary key only", floor),
        ("baseline: Vigil without ip/session/request", baseline),
        ("Vigil: PostgresTrailView.project", vigil),
    ]
    if args.row_trigrams:
        variants.append(("before: trigram index of every row", row_trigrams))
    print(f"{args.rows:,} read-model rows in pages of {PAGE:,}; PostgreSQL CPU per row")
    results: dict[str, list[str]] = {name: [] for name, _ in variants}
    results["Vigil keyed (VIGIL_ENCRYPTION_KEY set)"] = []
    queries: list[str] = []
    with connect(ledger_env(args.postgres_url, "public")) as admin:
        for attempt in range(2):
            for name, run in variants:
                with fresh_schema(admin, "readmodel") as schema:
                    results[name].append(run(args.postgres_url, schema, rows))
                    if run is vigil and attempt == 1:
                        sample = records[len(records) // 2]
                        queries = query_times(args.postgres_url, schema, sample)
            with fresh_schema(admin, "readmodel") as schema:
                figure = keyed(args.postgres_url, schema, keyed_rows)
                results["Vigil keyed (VIGIL_ENCRYPTION_KEY set)"].append(figure)
    for name, figures in results.items():
        print(f"  {name:<44} {' | '.join(figures)}")
    print(f"Making a row in the follower (Python): {python_cost(records)}")
    print(f"Queries at {args.rows:,} rows, newest 50 matches, read model only:")
    print("\n".join(queries))


if __name__ == "__main__":
    main()
