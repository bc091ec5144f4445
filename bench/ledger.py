"""Throughput of Vigil's ledger against the real PostgreSQL, beside honest baselines.

Run ``python bench/ledger.py`` (see ``--help``). One pass, each measurement in its own
fresh schema that is dropped afterwards:

1. Vigil recording: ``Ledger.record`` in batches, one tenant (validation, hashing,
   id index, storage), after one untimed warm-up batch.
2. Baseline: a plain eventsourcing ``Application`` saving the same records, one event
   per record, default PostgreSQL recorder and JSON transcoder, no hashing.
3. Baseline: raw psycopg binary ``COPY`` of the same rows into a plain table: the ceiling.
4. Verification: ``audit_core.verify.verify_tenant`` over the recorded log.
5. Baseline: bare ``hashlib.sha256`` over the records' precomputed canonical bytes.

Only the calls under test are timed: inputs are held as JSON bytes (which the garbage
collector does not track), the records the ledger returns are spooled to a temporary
file, and both are decoded batch by batch outside the timed sections.
The script only prints; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import os
import platform
import pstats
import random
import re
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.settings import Settings
from audit_core import Ledger, Limits
from audit_core.canonical import canonical_bytes
from audit_core.verify import verify_tenant

RECORDING_TARGET = 25_000
VERIFICATION_TARGET = 150_000
TENANT = "acme-support"
COPY_TOPIC = "bench:BaselineLog.Recorded"

# -- realistic audit events ---------------------------------------------------------------

_USERS = [f"u-{1000 + n}" for n in range(40)]
_SERVICES = ["svc-billing", "svc-sync", "svc-sla-timer", "svc-import"]
_USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Firefox/131.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0",
    "Mozilla/5.0 (X11; Linux x86_64) Chrome/129.0",
    "Vigil-iOS/4.12.3 (iPhone; iOS 18.1)",
]
_ACTIONS: list[tuple[str, str, Callable[[random.Random], dict[str, Any]]]] = [
    ("auth.login", "session", lambda rng: {}),
    ("auth.logout", "session", lambda rng: {}),
    (
        "conversation.assign",
        "conversation",
        lambda rng: {"assignee": {"from": None, "to": rng.choice(_USERS)}},
    ),
    (
        "conversation.close",
        "conversation",
        lambda rng: {"status": {"from": "open", "to": "closed"}},
    ),
    (
        "conversation.tag.add",
        "conversation",
        lambda rng: {"tags": {"from": ["billing"], "to": ["billing", "vip"]}},
    ),
    (
        "user.role.update",
        "user",
        lambda rng: {"role": {"from": "agent", "to": rng.choice(["supervisor", "admin"])}},
    ),
    ("export.download", "export", lambda rng: {}),
    (
        "macro.update",
        "macro",
        lambda rng: {"body_length": {"from": rng.randint(50, 900), "to": rng.randint(50, 900)}},
    ),
]
_NAMES = ["Refund request #", "Login trouble #", "Invoice copy #", "Delivery delay #", None]
_WORKSPACES = ["support-emea", "support-amer", "support-apac"]
_OUTCOMES = ["success"] * 17 + ["failure", "failure", "denied"]


def make_events(count: int, tag: str, seed: int = 7) -> list[bytes]:
    """``count`` audit events shaped like ``samples/actions.jsonl``, with unique ids.

    Each is kept as its JSON bytes: a list of 100,000 event dicts (600,000 containers)
    would make every full garbage collection during the timed loops walk them all, and
    the harness's heap, not the ledger, would set the figures. ``bytes`` are not tracked
    by the collector.
    """
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=6)
    events: list[bytes] = []
    for n in range(count):
        service = rng.random() < 0.1
        actor_id = rng.choice(_SERVICES) if service else rng.choice(_USERS)
        if service:
            ip = f"10.20.{rng.randint(0, 9)}.{rng.randint(1, 254)}"
        elif rng.random() < 0.2:
            ip = f"2001:db8:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"
        else:
            ip = f"203.0.113.{rng.randint(1, 254)}"
        action, target_type, changes = rng.choice(_ACTIONS)
        target_number = rng.randint(1000, 99999)
        name = rng.choice(_NAMES)
        occurred = start + timedelta(milliseconds=n * 7)
        event = {
            "id": f"bench-{tag}-{n:08d}",
            "occurred_at": occurred.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": {
                "id": actor_id,
                "type": "service" if service else "user",
                "ip": ip,
                "user_agent": None if service else rng.choice(_USER_AGENTS),
                "session_id": f"sess-{actor_id}-{rng.randint(0, 50)}",
            },
            "action": action,
            "target": {
                "type": target_type,
                "id": f"{target_type}-{target_number}",
                "name": None if name is None else f"{name}{target_number}",
            },
            "outcome": rng.choice(_OUTCOMES),
            "source": rng.choice(["console", "console", "app", "api"]),
            "request_id": f"req-{tag}-{n:08d}",
            "metadata": {
                "workspace": rng.choice(_WORKSPACES),
                "client_version": "4.12.3",
                "locale": rng.choice(["en-GB", "de-DE", "fr-FR"]),
            },
            "changes": changes(rng),
        }
        events.append(orjson.dumps(event))
    return events


def batched(items: Sequence[bytes], size: int) -> list[Sequence[bytes]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def decoded(batch: Sequence[bytes]) -> list[dict[str, Any]]:
    """A batch as dicts, made outside the timed section just before it is used."""
    return [orjson.loads(item) for item in batch]


# -- PostgreSQL plumbing -------------------------------------------------------------------


def with_schema(url: str, schema: str) -> str:
    """``url`` with its ``?schema=`` query parameter set to ``schema``."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "schema"]
    query.append(("schema", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


def connect(env: dict[str, str]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=env["POSTGRES_HOST"],
        port=int(env["POSTGRES_PORT"]),
        dbname=env["POSTGRES_DBNAME"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"] or None,
        autocommit=True,
    )


@contextlib.contextmanager
def fresh_schema(admin: psycopg.Connection[Any], label: str) -> Iterator[str]:
    """A new, empty schema, dropped with everything in it afterwards."""
    name = f"bench_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def ledger_env(url: str, schema: str) -> dict[str, str]:
    # encryption_key=None: a VIGIL_ENCRYPTION_KEY in the shell must not silently turn
    # the cipher on for some runs and not others.
    return Settings(database_url=with_schema(url, schema), encryption_key=None).ledger_env()


# -- CPU time of processes (Linux) --------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    parents = {pid: int(fields[1]) for pid in _pids() if (fields := _stat(pid))}
    tree = {root}
    for _ in range(4):
        tree |= {pid for pid, parent in parents.items() if parent in tree}
    return sorted(tree)


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this machine: backends and background
    workers (WAL writer, checkpointer), whose CPU a write costs too."""
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == "postgres":
                    found.append(pid)
        except OSError:
            continue
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU time of these processes so far (Linux ``/proc``)."""
    ticks = 0
    for pid in pids:
        if fields := _stat(pid):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the measurements ----------------------------------------------------------------------


@dataclass
class Timing:
    events: int
    seconds: float
    """Wall-clock time."""
    cpu_seconds: float
    """CPU time of this (the calling) thread: the rest of ``seconds`` is waiting, mostly
    on PostgreSQL (or on CPU the machine gives to someone else)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def spent(self) -> str:
        return f"{self.seconds:.3f} s, {self.cpu_seconds:.3f} s of it CPU in this thread"


class Stopwatch:
    """Adds up wall-clock and thread CPU time over the sections it times."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.cpu_seconds += time.thread_time() - cpu
            self.seconds += time.perf_counter() - wall

    def timing(self, events: int) -> Timing:
        return Timing(events, self.seconds, self.cpu_seconds)


class Spool:
    """The records ``Ledger.record`` returned, as JSON lines in a temporary file.

    Kept in memory, 100,000 records grow the heap by ~100 MB while recording, and that
    growth shows up as two minor page faults per event inside ``Ledger.record``'s own
    allocations (measured: 120,000 for 60,000 events, against ~250 when spooled), which
    would be the harness's cost charged to the ledger.
    """

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.count = 0

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self.file.write(b"".join(orjson.dumps(record) + b"\n" for record in records))
        self.count += len(records)

    def batches(self, size: int) -> Iterator[list[bytes]]:
        self.file.flush()
        self.file.seek(0)
        batch: list[bytes] = []
        for line in self.file:
            batch.append(line)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        self.file.close()


def record_with_vigil(
    ledger: Ledger, warmup: Sequence[bytes], batches: Sequence[Sequence[bytes]], spool: Spool
) -> Timing:
    """Time ``Ledger.record`` alone; spool the records it returns."""
    spool.write(ledger.record(TENANT, decoded(warmup)))
    count, watch = 0, Stopwatch()
    for batch in batches:
        events = decoded(batch)
        with watch.running():
            returned = ledger.record(TENANT, events)
        count += len(batch)
        spool.write(returned)
    return watch.timing(count)


def verify_with_vigil(ledger: Ledger, expected: int) -> tuple[Timing, str | None]:
    watch = Stopwatch()
    with watch.running():
        report = verify_tenant(ledger, TENANT)
    problem = None
    if not report.ok:
        problem = f"verify_tenant found a break: {report.problem}"
    elif report.records != expected:
        problem = f"verify_tenant checked {report.records} records, {expected} were recorded"
    return watch.timing(report.records), problem


class BaselineLog(Aggregate):
    """A tenant's log the plain eventsourcing way: one event per record, no hashing."""

    @event("Opened")
    def __init__(self, tenant: str):
        self.tenant = tenant
        self.count = 0

    @event("Recorded")
    def record(self, record: dict[str, Any]) -> None:
        self.count += 1


class BaselineApp(Application[uuid.UUID]):
    pass


def record_with_eventsourcing(env: dict[str, str], spool: Spool, size: int) -> Timing:
    """Time getting the log (cache, fast-forward), triggering the events and ``save()``."""
    app_env = {
        key: value
        for key, value in env.items()
        if key.startswith("POSTGRES_") or key == "PERSISTENCE_MODULE"
    }
    app_env.update({"AGGREGATE_CACHE_MAXSIZE": "10000", "AGGREGATE_CACHE_FASTFORWARD": "y"})
    app = BaselineApp(env=app_env)
    batches = spool.batches(size)
    try:
        log = BaselineLog(TENANT)
        for record in decoded(next(batches)):
            log.record(record)
        app.save(log)
        log_id = log.id
        app.repository.get(log_id)  # Into the cache, as a long-running service would be.
        count, watch = 0, Stopwatch()
        for batch in batches:
            records = decoded(batch)
            with watch.running():
                log = app.repository.get(log_id)
                for record in records:
                    log.record(record)
                app.save(log)
            count += len(batch)
        return watch.timing(count)
    finally:
        app.close()


def record_with_copy(env: dict[str, str], schema: str, spool: Spool, size: int) -> Timing:
    """Time serialising each record with orjson and one binary ``COPY`` per batch."""
    table = sql.Identifier(schema, "stored_events")
    log_id = uuid.uuid4()
    copy_statement = sql.SQL(
        "COPY {} (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
    ).format(table)
    with connect(env) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (originator_id uuid NOT NULL, originator_version bigint NOT NULL, "
                "topic text, state bytea, PRIMARY KEY (originator_id, originator_version))"
            ).format(table)
        )
        version = 0

        def copy_batch(records: Sequence[dict[str, Any]]) -> None:
            nonlocal version
            with conn.transaction(), conn.cursor() as curs, curs.copy(copy_statement) as copy:
                copy.set_types(["uuid", "int8", "text", "bytea"])
                for record in records:
                    version += 1
                    copy.write_row((log_id, version, COPY_TOPIC, orjson.dumps(record)))

        batches = spool.batches(size)
        copy_batch(decoded(next(batches)))
        count, watch = 0, Stopwatch()
        for batch in batches:
            records = decoded(batch)
            with watch.running():
                copy_batch(records)
            count += len(batch)
        return watch.timing(count)


def hash_bare(spool: Spool, chunk: int = 5000) -> tuple[Timing, Timing, int]:
    """(bare sha256 of precomputed canonical bytes, canonical_bytes + sha256, matching hashes).

    A chunk at a time: decoding and the canonical bytes the bare loop hashes are made
    outside its timed section.
    """
    sha256 = hashlib.sha256
    count, matches = 0, 0
    in_memory_watch, bare_watch = Stopwatch(), Stopwatch()
    for batch in spool.batches(chunk):
        records = decoded(batch)
        stored = [record.pop("hash") for record in records]
        with in_memory_watch.running():
            payloads = [canonical_bytes(record) for record in records]
            digests = [sha256(payload).hexdigest() for payload in payloads]
        with bare_watch.running():
            for payload in payloads:
                sha256(payload).hexdigest()
        count += len(records)
        matches += sum(1 for ours, theirs in zip(digests, stored, strict=True) if ours == theirs)
    return bare_watch.timing(count), in_memory_watch.timing(count), matches


# -- reporting ---------------------------------------------------------------------------------


def machine_info(admin: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def show(setting: str) -> str:
        row = admin.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
        return str(row[0]) if row else "?"

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("eventsourcing", "psycopg", "orjson", "pydantic")
    )
    return [
        ("CPU", f"{cpu}; {os.cpu_count()} cores, {usable} usable"),
        ("OS", platform.platform()),
        ("Load average", " ".join(f"{load:.2f}" for load in os.getloadavg())),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("Libraries", versions),
        ("PostgreSQL", show("server_version")),
        (
            "PG durability",
            f"fsync={show('fsync')}, synchronous_commit={show('synchronous_commit')}, "
            f"wal_level={show('wal_level')}",
        ),
    ]


def ratio(figure: Timing, baseline: Timing) -> str:
    return f"{figure.rate / baseline.rate:.2f}x"


def verdict(rate: float, target: int) -> str:
    return "PASS" if rate >= target else "MISS"


def print_report(
    args: argparse.Namespace,
    info: list[tuple[str, str]],
    vigil: Timing,
    es: Timing,
    copy: Timing,
    verify: Timing,
    bare: Timing,
    in_memory: Timing,
    notes: list[str],
) -> None:
    print()
    print(f"Vigil ledger benchmark - {args.events:,} events, batches of {args.batch}, 1 tenant")
    for key, value in info:
        print(f"  {key + ':':<15}{value}")
    print()
    rows = [
        ("Recording", "Ledger.record", vigil, "eventsourcing save()", es, RECORDING_TARGET),
        ("", "", vigil, "psycopg binary COPY (ceiling)", copy, None),
        (
            "Verification",
            "verify_tenant",
            verify,
            "hashlib.sha256 (bare)",
            bare,
            VERIFICATION_TARGET,
        ),
    ]
    header = (
        f"{'Measure':<13}{'Vigil':>16}{'events/s':>11}  {'Baseline':<31}"
        f"{'events/s':>11}{'ratio':>8}  Target"
    )
    print(header)
    print("-" * (len(header) + 22))
    for measure, name, figure, base_name, base, target in rows:
        shown = f"{figure.rate:>11,.0f}" if name else " " * 11
        goal = f">= {target:,}/s  {verdict(figure.rate, target)}" if target else ""
        print(
            f"{measure:<13}{name:>16}{shown}  {base_name:<31}{base.rate:>11,.0f}"
            f"{ratio(figure, base):>8}  {goal}"
        )
    print()
    print(f"  Vigil recording:    {vigil.events:,} events in {vigil.spent()}")
    print(f"  eventsourcing save: {es.events:,} events in {es.spent()}")
    print(f"  psycopg COPY:       {copy.events:,} events in {copy.spent()}")
    print(f"  verify_tenant:      {verify.events:,} records in {verify.spent()}")
    print(f"  bare sha256:        {bare.events:,} records in {bare.spent()}")
    print(
        f"  (info) canonical_bytes + sha256 in memory, no storage: {in_memory.rate:,.0f} events/s"
    )
    for note in notes:
        print(f"  NOTE: {note}")

    print()
    print("Markdown:")
    print()
    print("| Measure | events/s | Baseline | Baseline events/s | Ratio | Target |")
    print("|---|---:|---|---:|---:|---|")
    print(
        f"| Recording (`Ledger.record`, batches of {args.batch}) | {vigil.rate:,.0f} | "
        f"eventsourcing `save()`, {args.batch} events each, no hashing | {es.rate:,.0f} | "
        f"{ratio(vigil, es)} | >= {RECORDING_TARGET:,}/s: "
        f"{verdict(vigil.rate, RECORDING_TARGET)} |"
    )
    print(f"| | | psycopg binary `COPY` (ceiling) | {copy.rate:,.0f} | {ratio(vigil, copy)} | |")
    print(
        f"| Verification (`verify_tenant`) | {verify.rate:,.0f} | bare `hashlib.sha256` over "
        f"canonical bytes | {bare.rate:,.0f} | {ratio(verify, bare)} | "
        f">= {VERIFICATION_TARGET:,}/s: {verdict(verify.rate, VERIFICATION_TARGET)} |"
    )
    print()
    cpu_line = next(value for key, value in info if key == "CPU")
    pg_line = next(value for key, value in info if key == "PostgreSQL")
    print(
        f"_{args.events:,} events, one tenant; {cpu_line}; Python {platform.python_version()}; "
        f"PostgreSQL {pg_line.split()[0]}._"
    )


def profile_paths(
    url: str, admin: psycopg.Connection[Any], limits: Limits, count: int, batch: int
) -> None:
    """cProfile of the recording and verification paths, top 15 by cumulative and own time."""
    events = make_events(count + batch, f"prof{secrets.token_hex(3)}")
    warmup, timed = events[:batch], events[batch:]
    with fresh_schema(admin, "prof") as schema:
        ledger = Ledger(ledger_env(url, schema), limits)
        try:
            ledger.record(TENANT, decoded(warmup))
            profiler = cProfile.Profile()
            for chunk in batched(timed, batch):
                chunk_events = decoded(chunk)
                profiler.enable()
                ledger.record(TENANT, chunk_events)
                profiler.disable()
            print_profile(f"Ledger.record, {count:,} events", profiler)
            profiler = cProfile.Profile()
            profiler.enable()
            verify_tenant(ledger, TENANT)
            profiler.disable()
            print_profile(f"verify_tenant, {count + batch:,} records", profiler)
        finally:
            ledger.close()


def print_profile(title: str, profiler: cProfile.Profile) -> None:
    for order in ("cumulative", "tottime"):
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).sort_stats(order)
        stats.print_stats(15)
        print()
        print(f"=== profile: {title}, top 15 by {order} ===")
        lines = stream.getvalue().splitlines()
        start = next((n for n, line in enumerate(lines) if "ncalls" in line), 0)
        for line in lines[start:]:
            if line.strip():
                print(_short_path(line))


_PATH = re.compile(
    r"\S*/(?:site-packages|lib/python3\.\d+)/|"
    + re.escape(f"{Path(__file__).resolve().parent.parent}/")
)


def _short_path(line: str) -> str:
    """A pstats line with paths relative to site-packages or to the repository."""
    return _PATH.sub("", line)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="timed events per measure")
    parser.add_argument("--batch", type=int, default=500, help="events per record()/save()")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "VIGIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="server to run against (env VIGIL_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, cProfile the recording and verification paths (separate pass)",
    )
    parser.add_argument(
        "--profile-events", type=int, default=20_000, help="events for the profiled pass"
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.batch < 1:
        parser.error("--events and --batch must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    url: str = args.postgres_url
    settings = Settings(database_url=url, encryption_key=None)
    limits = settings.limits()
    if args.batch > limits.max_batch_events:
        limits = Limits(max_batch_events=args.batch)
    base_env = settings.ledger_env()
    notes: list[str] = []

    tag = secrets.token_hex(4)
    events = make_events(args.events + args.batch, tag)
    warmup, timed = events[: args.batch], events[args.batch :]
    batches = batched(timed, args.batch)

    with connect(base_env) as admin:
        info = machine_info(admin)
        server = dict(info)["PostgreSQL"].split()[0]
        print(f"Running against PostgreSQL {server} at {base_env['POSTGRES_HOST']} ...", flush=True)

        spool = Spool()
        try:
            with fresh_schema(admin, "vigil") as schema:
                ledger = Ledger(ledger_env(url, schema), limits)
                try:
                    vigil = record_with_vigil(ledger, warmup, batches, spool)
                    print(f"  1/5 Vigil recording: {vigil.rate:,.0f} events/s", flush=True)
                    verify, problem = verify_with_vigil(ledger, spool.count)
                    print(f"  4/5 verify_tenant: {verify.rate:,.0f} events/s", flush=True)
                    if problem:
                        notes.append(problem)
                finally:
                    ledger.close()
            del events, warmup, timed, batches

            with fresh_schema(admin, "es") as schema:
                es = record_with_eventsourcing(ledger_env(url, schema), spool, args.batch)
            print(f"  2/5 eventsourcing save(): {es.rate:,.0f} events/s", flush=True)
            with fresh_schema(admin, "copy") as schema:
                copy = record_with_copy(base_env, schema, spool, args.batch)
            print(f"  3/5 psycopg COPY: {copy.rate:,.0f} events/s", flush=True)

            bare, in_memory, matches = hash_bare(spool)
            print(f"  5/5 bare sha256: {bare.rate:,.0f} events/s", flush=True)
            if matches != spool.count:
                notes.append(
                    f"only {matches:,} of {spool.count:,} returned hashes equal sha256 of "
                    "canonical_bytes(record without hash)"
                )
        finally:
            spool.close()

        print_report(args, info, vigil, es, copy, verify, bare, in_memory, notes)

        if args.profile:
            profile_paths(url, admin, limits, args.profile_events, args.batch)


if __name__ == "__main__":
    main()
