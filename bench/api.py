"""Throughput and latency of Vigil's HTTP API against the real PostgreSQL, beside the
ledger-only figures measured the way ``bench/ledger.py`` measures them, in the same run.

Run ``python bench/api.py`` (see ``--help``). One pass:

1. Baselines, each in a fresh schema: ``Ledger.record`` in batches of 500 (as in
   ``bench/ledger.py``), and ``Ledger.record`` of one event per call from 32 threads.
2. ``vigil serve`` is started as a subprocess on another fresh schema.
3. Batch ingest over HTTP: the trail (1,000,000 events by default) is sent in batches of
   500 by a few concurrent connections. With ``--load-via-ledger`` the trail is written
   through the ledger directly instead (said so in the output) and only ``--http-events``
   go over HTTP. The CPU time of the server's processes, PostgreSQL's and the load
   generator's over this step is printed per event (Linux).
4. Single-event ingest over HTTP: 32 concurrent clients, one event per request.
5. The read model catches up (its time is reported), then filtered queries over HTTP,
   each recorded as an ``audit.query`` event, beside the same queries run directly on the
   read model and the ledger (no HTTP, no audit event) as their baseline.

The load generator is a small asyncio HTTP/1.1 client on keep-alive connections, so that
the client's own cost (on the same machine) stays small beside the server's. The script
only prints; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import (  # type: ignore[import-not-found]  # bench/ledger.py
    Spool,
    batched,
    connect,
    cpu_seconds,
    decoded,
    descendants,
    fresh_schema,
    ledger_env,
    make_events,
    postgres_pids,
    record_with_vigil,
    with_schema,
)

from api.keys import KeyStore
from api.settings import Settings
from audit_core import Ledger, LedgerBusyError, Limits
from audit_core.followers import open_store
from audit_core.readmodel import TABLE, TEXT_TABLE, TrailQuery, trail_view_class

TENANT = "acme-support"
BATCH_TARGET = 20_000
SINGLE_TARGET = 2_000
SINGLE_P99_TARGET_MS = 100
QUERY_P95_TARGET_MS = 50


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- a minimal keep-alive HTTP/1.1 client --------------------------------------------------


class Connection:
    def __init__(self, host: str, port: int, token: str):
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        self.writer.write(head + self.auth + b"\r\n" + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        chunked = False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            return status, b"".join(p[:-2] for p in parts)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()


async def _run_workers(
    host: str, port: int, token: str, jobs: list[tuple[str, str, bytes]], concurrency: int
) -> tuple[float, list[float], list[int]]:
    """Run ``jobs`` over ``concurrency`` connections; (seconds, latencies, statuses)."""
    connections = [Connection(host, port, token) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in connections))
    latencies: list[float] = []
    statuses: list[int] = []
    position = 0

    async def worker(conn: Connection) -> None:
        nonlocal position
        while position < len(jobs):
            method, path, body = jobs[position]
            position += 1
            started = time.perf_counter()
            status, _ = await conn.request(method, path, body)
            latencies.append(time.perf_counter() - started)
            statuses.append(status)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in connections))
    return elapsed, latencies, statuses


def run_jobs(
    host: str, port: int, token: str, jobs: list[tuple[str, str, bytes]], concurrency: int
) -> tuple[float, list[float], list[int]]:
    return asyncio.run(_run_workers(host, port, token, jobs, concurrency))


# -- baselines ------------------------------------------------------------------------------


def ledger_single_events(env: dict[str, str], events: Sequence[bytes], clients: int) -> Any:
    """One event per Ledger.record call from ``clients`` threads: no group commit."""
    ledger = Ledger(env, Limits())
    try:
        ledger.record(TENANT, decoded(events[:1]))
        chunks = [events[1 + i :: clients] for i in range(clients)]
        latencies: list[float] = []
        lock = threading.Lock()

        failures = 0

        def client(chunk: Sequence[bytes]) -> None:
            nonlocal failures
            mine = []
            for raw in chunk:
                event = orjson.loads(raw)
                started = time.perf_counter()
                try:
                    ledger.record(TENANT, [event])
                except LedgerBusyError:
                    with lock:
                        failures += 1
                    continue
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(latencies), time.perf_counter() - started, latencies, failures
    finally:
        ledger.close()


# -- the run ---------------------------------------------------------------------------------


# -- where the CPU goes (Linux /proc; figures are left out elsewhere) ----------------------


def _machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values), values[3] + values[4]


class CpuAccount:
    """CPU time of the server's processes, PostgreSQL's and this one over a span."""

    def __init__(self, server_pid: int):
        self.available = os.path.isdir("/proc")
        self.server_pid = server_pid
        if self.available:
            self.start = self._read()

    def _read(self) -> tuple[float, float, float, tuple[int, int]]:
        return (
            cpu_seconds(descendants(self.server_pid)),
            cpu_seconds(postgres_pids()),
            cpu_seconds([os.getpid()]),
            _machine_busy(),
        )

    def per_event(self, events: int) -> str:
        if not self.available:
            return "CPU per event: not measured (no /proc)"
        end = self._read()
        server, postgres, client = (1e6 * (end[i] - self.start[i]) / events for i in range(3))
        total = end[3][0] - self.start[3][0]
        busy = 100 * (1 - (end[3][1] - self.start[3][1]) / total) if total else 0.0
        return (
            f"CPU per event during batch ingest: vigil serve (API and read-model follower) "
            f"{server:.1f} µs, PostgreSQL {postgres:.1f} µs, load generator {client:.1f} µs; "
            f"machine busy {busy:.0f}%"
        )


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Stop ``vigil serve`` and its read model follower before their schema is dropped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "VIGIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--trail", type=int, default=1_000_000, help="events in the trail")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--batch-clients",
        type=int,
        default=8,
        help="connections sending batches, one at a time each",
    )
    parser.add_argument("--single-events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--queries", type=int, default=100, help="per query shape")
    parser.add_argument("--baseline-events", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument(
        "--load-via-ledger",
        action="store_true",
        help="write the trail with Ledger.record, sending only --http-events over HTTP",
    )
    parser.add_argument("--http-events", type=int, default=200_000)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    url: str = args.postgres_url
    base_env = Settings(database_url=url, encryption_key=None).ledger_env()
    tag = secrets.token_hex(4)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)

    with connect(base_env) as admin:
        server_version = admin.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        say(f"PostgreSQL {server_version}, {os.cpu_count()} CPUs, uvicorn workers: {args.workers}")

        # 1. baselines
        say("baseline 1/2: Ledger.record, batches of 500 ...")
        base_events = make_events(args.baseline_events + args.batch, f"{tag}b")
        spool = Spool()
        with fresh_schema(admin, "apibase") as schema:
            ledger = Ledger(ledger_env(url, schema), Limits())
            try:
                base_batch = record_with_vigil(
                    ledger,
                    base_events[: args.batch],
                    batched(base_events[args.batch :], args.batch),
                    spool,
                )
            finally:
                ledger.close()
                spool.close()
        del base_events
        say(f"  {base_batch.rate:,.0f} events/s")

        say(f"baseline 2/2: Ledger.record of one event per call, {args.clients} threads ...")
        single_base_events = make_events(min(args.single_events, 5000) + 1, f"{tag}s")
        with fresh_schema(admin, "apisingle") as schema:
            count, seconds, base_lat, base_busy = ledger_single_events(
                ledger_env(url, schema), single_base_events, args.clients
            )
        base_single_rate = count / seconds
        say(
            f"  {base_single_rate:,.0f} events/s, p99 {pct(base_lat, 0.99) * 1000:.1f} ms, "
            f"{base_busy} calls gave up with LedgerBusyError"
        )

        with fresh_schema(admin, "api") as schema:
            db_url = with_schema(url, schema)
            env = ledger_env(url, schema)
            keys = KeyStore(env)
            _, token = keys.create(TENANT, ["admin"])
            keys.close()
            server_env = {
                **os.environ,
                "VIGIL_DATABASE_URL": db_url,
                "VIGIL_PORT": str(args.port),
                "VIGIL_WORKERS": str(args.workers),
                "VIGIL_LOG_LEVEL": "warning",
                "VIGIL_POSTGRES_POOL_SIZE": "10",
            }
            server_env.pop("VIGIL_ENCRYPTION_KEY", None)
            vigil = Path(sys.executable).with_name("vigil")
            # Its own process group: the read model follower it starts goes down with it.
            server = subprocess.Popen([str(vigil), "serve"], env=server_env, start_new_session=True)
            try:
                host, port = "127.0.0.1", args.port
                deadline = time.monotonic() + 60
                while True:
                    try:
                        status, _ = (
                            run_jobs(host, port, token, [("GET", "/readyz", b"")], 1)[2][0],
                            None,
                        )
                        if status == 200:
                            break
                    except OSError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("the server did not become ready")
                    time.sleep(0.2)

                # 3. batch ingest
                say(f"generating {args.trail:,} events ...")
                trail = make_events(args.trail, f"{tag}t")
                http_count = args.http_events if args.load_via_ledger else args.trail
                if args.load_via_ledger:
                    say(f"loading {args.trail - http_count:,} events through Ledger.record ...")
                    ledger = Ledger(env, Limits())
                    try:
                        for batch in batched(trail[http_count:], args.batch):
                            ledger.record(TENANT, decoded(batch))
                    finally:
                        ledger.close()
                say(
                    f"batch ingest over HTTP: {http_count:,} events in batches of {args.batch}, "
                    f"{args.batch_clients} connections ..."
                )
                jobs = [
                    ("POST", "/v1/events", b"[" + b",".join(batch) + b"]")
                    for batch in batched(trail[:http_count], args.batch)
                ]
                del trail
                account = CpuAccount(server.pid)
                seconds, batch_lat, statuses = run_jobs(host, port, token, jobs, args.batch_clients)
                batch_cpu = account.per_event(http_count)
                bad = [s for s in statuses if s >= 300]
                batch_rate = http_count / seconds
                say(f"  {batch_rate:,.0f} events/s ({len(bad)} failed requests)")
                say(f"  {batch_cpu}")
                del jobs

                # 4. single events
                say(f"single-event ingest: {args.single_events:,} events, {args.clients} clients")
                singles = make_events(args.single_events, f"{tag}1")
                jobs = [("POST", "/v1/events", raw) for raw in singles]
                seconds, single_lat, statuses = run_jobs(host, port, token, jobs, args.clients)
                bad = [s for s in statuses if s >= 300]
                single_rate = args.single_events / seconds
                say(
                    f"  {single_rate:,.0f} events/s, p50 {pct(single_lat, 0.5) * 1000:.1f} ms, "
                    f"p99 {pct(single_lat, 0.99) * 1000:.1f} ms ({len(bad)} failed)"
                )

                # 5. read model, then queries
                say("waiting for the read model to catch up ...")
                started = time.perf_counter()
                while True:
                    _, body = asyncio.run(_get(host, port, token, "/readyz"))
                    # Each follower's lag (also in a 503, while one lags past the limit).
                    followers = orjson.loads(body).get("followers", {})
                    lag = followers.get("readmodel", {}).get("lag_events", 1)
                    if lag == 0:
                        break
                    time.sleep(0.5)
                catch_up = time.perf_counter() - started
                say(f"  caught up {catch_up:.1f} s after ingest ended")
                # The trail was loaded faster than autovacuum's analyze cadence; give the
                # planner the statistics a server that grew its trail over time has.
                started = time.perf_counter()
                with connect(env) as stats:
                    stats.execute(f'ANALYZE "{schema}".{TABLE}, "{schema}".{TEXT_TABLE}')
                analyze = time.perf_counter() - started
                total = args.trail + args.single_events
                shapes: list[tuple[str, dict[str, str]]] = [
                    ("actor", {"actor_id": "u-1007"}),
                    ("action prefix", {"action": "conversation.*"}),
                    ("target", {"target_type": "conversation", "target_id": "conversation-4242"}),
                    (
                        "outcome + time range",
                        {
                            "outcome": "denied",
                            "since": "2000-01-01T00:00:00Z",
                            "until": "2100-01-01T00:00:00Z",
                        },
                    ),
                    ("source + actor", {"source": "app", "actor_id": "svc-billing"}),
                    ("free text + actor", {"q": "de-de", "actor_id": "u-1012"}),
                    ("free text, common", {"q": "support-apac"}),
                    ("free text, absent", {"q": "refund-4242"}),
                    ("address", {"actor_ip": "10.20.3.17"}),
                    ("network, most records", {"actor_ip": "203.0.113.0/24"}),
                    ("session", {"session_id": "sess-u-1012-7"}),
                    ("request", {"request_id": f"req-{tag}t-00004242"}),
                ]
                from urllib.parse import urlencode

                http_lat: list[float] = []
                direct_lat: list[float] = []
                per_shape: list[str] = []
                store = open_store(env)
                view = store.view_recorder(trail_view_class(env))
                reader = Ledger(env, Limits())
                try:
                    for name, params in shapes:
                        path = "/v1/events?" + urlencode({**params, "limit": "50"})
                        query_jobs = [("GET", path, b"")] * args.queries
                        _, lat, statuses = run_jobs(host, port, token, query_jobs, 1)
                        http_lat += lat
                        query = TrailQuery(
                            tenant=TENANT,
                            actor_id=params.get("actor_id"),
                            action=params.get("action"),
                            target_type=params.get("target_type"),
                            target_id=params.get("target_id"),
                            outcome=params.get("outcome"),
                            source=params.get("source"),
                            since=params.get("since"),
                            until=params.get("until"),
                            text=params.get("q"),
                            actor_ip=params.get("actor_ip"),
                            session_id=params.get("session_id"),
                            request_id=params.get("request_id"),
                            limit=50,
                        )
                        dlat = []
                        for _ in range(args.queries):
                            started = time.perf_counter()
                            reader.records_at(TENANT, view.query(query).seqs)
                            dlat.append(time.perf_counter() - started)
                        direct_lat += dlat
                        per_shape.append(
                            f"    {name:<22} HTTP p50 {pct(lat, 0.5) * 1000:6.1f} ms "
                            f"p95 {pct(lat, 0.95) * 1000:6.1f} ms | read model + ledger "
                            f"p50 {pct(dlat, 0.5) * 1000:6.1f} ms p95 {pct(dlat, 0.95) * 1000:6.1f}"
                            f" ms ({sum(1 for s in statuses if s != 200)} failed)"
                        )
                    count_rows = view.count(TENANT)
                finally:
                    reader.close()
                    store.close()
            finally:
                stop_server(server)

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "BELOW TARGET"

    lines += [
        "",
        f"Vigil HTTP API on PostgreSQL {server_version}, {os.cpu_count()} CPUs "
        f"(server, database and load generator share them), {args.workers} uvicorn worker(s)",
        f"trail: {total:,} events in tenant {TENANT} ({count_rows:,} rows in the read model)"
        + (
            f"; {args.trail - args.http_events:,} of them loaded through Ledger.record, not HTTP"
            if args.load_via_ledger
            else "; all of them sent over HTTP"
        ),
        "",
        f"{'measure':<44}{'HTTP API':>18}{'ledger only':>18}   target",
        f"{'batch ingest, 500/request (events/s)':<44}{batch_rate:>18,.0f}"
        f"{base_batch.rate:>18,.0f}   >= {BATCH_TARGET:,}: {verdict(batch_rate >= BATCH_TARGET)}",
        f"{f'single events, {args.clients} clients (events/s)':<44}{single_rate:>18,.0f}"
        f"{base_single_rate:>18,.0f}   >= {SINGLE_TARGET:,}: "
        f"{verdict(single_rate >= SINGLE_TARGET)}",
        f"{'  p50 latency (ms)':<44}{pct(single_lat, 0.5) * 1000:>18.1f}"
        f"{pct(base_lat, 0.5) * 1000:>18.1f}",
        f"{'  p99 latency (ms)':<44}{pct(single_lat, 0.99) * 1000:>18.1f}"
        f"{pct(base_lat, 0.99) * 1000:>18.1f}   <= {SINGLE_P99_TARGET_MS}: "
        f"{verdict(pct(single_lat, 0.99) * 1000 <= SINGLE_P99_TARGET_MS)}",
        f"{'filtered query p50 (ms), HTTP vs direct':<44}{pct(http_lat, 0.5) * 1000:>18.1f}"
        f"{pct(direct_lat, 0.5) * 1000:>18.1f}",
        f"{'filtered query p95 (ms), HTTP vs direct':<44}{pct(http_lat, 0.95) * 1000:>18.1f}"
        f"{pct(direct_lat, 0.95) * 1000:>18.1f}   <= {QUERY_P95_TARGET_MS}: "
        f"{verdict(pct(http_lat, 0.95) * 1000 <= QUERY_P95_TARGET_MS)}",
        f"  per query shape ({args.queries} each, 50 per page, each HTTP query also records "
        "an audit.query event):",
        *per_shape,
        f"read model caught up {catch_up:.1f} s after the last write; then ANALYZE of the "
        f"read model table ({analyze:.1f} s) before the queries",
        "ledger-only baselines: Ledger.record in batches of 500 (as bench/ledger.py), and "
        f"one event per Ledger.record call from {args.clients} threads (no group commit); "
        "query baseline: the same queries on the read model, records read from the ledger "
        "(no HTTP, no audit).",
        f"ledger-only single events: {base_busy} of {count + base_busy} calls gave up with "
        "LedgerBusyError (rate and latency count the recorded ones)",
        f"mean batch request latency {statistics.mean(batch_lat) * 1000:.0f} ms",
        batch_cpu,
    ]
    print("\n".join(lines), flush=True)


async def _get(host: str, port: int, token: str, path: str) -> tuple[int, bytes]:
    conn = Connection(host, port, token)
    await conn.open()
    try:
        return await conn.request("GET", path)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
