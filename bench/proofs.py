"""The transparency log's figures on the real PostgreSQL, each beside a baseline measured
in the same run.

Run ``python bench/proofs.py`` (see ``--help``; ``--records 1000000`` for the issue's
figure, the default is short). One pass, each step in a fresh schema where it writes:

1. A tenant log of ``--records`` records is written with ``Ledger.record``.
2. Tree follower throughput (records/s, building tiles and writing them with the
   position), beside a bare SHA-256 loop over the same leaves (leaf hashes plus the
   node hashes of the tree: the least any tree follower must do).
3. Inclusion and consistency proofs in process (``TreeReader``) and over HTTP
   (``vigil serve``), p50/p99, beside a bare ``GET /healthz`` round trip.
4. Chain and tree verification in one pass (what ``vigil verify`` runs), events/s, in
   one process and with ``--jobs 2``, beside the chain check alone and reading the
   log's pages alone.
5. An evidence bundle of ``--bundle`` records: export and offline verification.
6. Batch ingest over HTTP with the tree follower running, beside a server without it.
7. Commit to a signed checkpoint covering it, at a steady ``--rate`` events/s over
   HTTP for ``--seconds``, p50/p99.

It prints; it asserts nothing about time. Targets (issue 11): proofs p99 <= 5 ms,
commit to checkpoint p99 <= 1 s, verify >= 150,000 events/s, bundle of 10,000 <= 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import (  # type: ignore[import-not-found]  # bench/ledger.py
    batched,
    connect,
    decoded,
    fresh_schema,
    ledger_env,
    make_events,
    with_schema,
)

from api.keys import KeyStore
from api.settings import Settings
from audit_core import Ledger, Limits, verify_tenant
from audit_core.domain import tenant_log_id
from audit_core.followers import FollowerRunner, FollowerStore, open_store
from audit_core.transparency import MemoryTree, Signer, record_leaf
from audit_core.transparency.evidence import export_bundle, gather, verify_bundle
from audit_core.transparency.follower import TransparencyLog
from audit_core.transparency.proofs import TreeReader
from audit_core.transparency.store import tree_store_class
from audit_core.transparency.verify import TreeCheck

TENANT = "acme"
ORIGIN = "bench.vigil/log"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: Sequence[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1000:.2f} ms, p99 {pct(values, 0.99) * 1000:.2f} ms"


def say(text: str) -> None:
    print(text, flush=True)


def load(ledger: Ledger, count: int, tag: str) -> None:
    for batch in batched(make_events(count, tag), 1000):
        ledger.record(TENANT, decoded(batch))


def follow(
    env: dict[str, str], ledger: Ledger, signer: Signer
) -> tuple[float, TransparencyLog, FollowerStore]:
    """Build the tree from the whole log; the seconds it took, the log and its store."""
    store = open_store(env)
    log = TransparencyLog(
        store.view_recorder(tree_store_class(env)), signer, ORIGIN, every_records=10**9
    )
    runner = FollowerRunner(ledger, log, store, page_size=2000)
    started = time.perf_counter()
    runner.drain()
    log.sign_due(force=True)
    return time.perf_counter() - started, log, store


def bare_hashing(ledger: Ledger, count: int) -> float:
    """SHA-256 of every leaf and every node, over leaves read beforehand."""
    leaves = [record_leaf(r) for r in ledger.read(TENANT, limit=count)]
    sha256 = hashlib.sha256
    started = time.perf_counter()
    tree = MemoryTree(sha256(b"\x00" + leaf).digest() for leaf in leaves)
    seconds = time.perf_counter() - started
    assert tree.size == len(leaves)
    return seconds


def verify_both(ledger: Ledger, log: TransparencyLog, signer: Signer, jobs: int) -> None:
    check = TreeCheck(log.store, TENANT, [signer.verifier])
    chain = verify_tenant(ledger, TENANT, leaves=check, jobs=jobs)
    tree = check.finish()
    if not (chain.ok and tree.ok and tree.records == chain.records):
        raise SystemExit(f"verification failed: {chain}, {tree.problems}")


def vacuum(admin: Any, schema: str) -> None:
    for (table,) in admin.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
    ).fetchall():
        admin.execute(
            sql.SQL("VACUUM (ANALYZE) {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server(db_url: str, key_file: Path | None, **extra: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": db_url,
        "VIGIL_PORT": str(port),
        "VIGIL_LOG_LEVEL": "warning",
        "VIGIL_LOG_ORIGIN": ORIGIN,
        "VIGIL_SIGNING_KEY_FILE": str(key_file) if key_file else "",
        **extra,
    }
    env.pop("VIGIL_ENCRYPTION_KEY", None)
    vigil = Path(sys.executable).with_name("vigil")
    process = subprocess.Popen(
        [str(vigil), "serve"], env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("vigil serve did not come up")
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        # Its follower worker may outlive it by a moment; the schema is dropped next.
        with contextlib.suppress(ProcessLookupError):
            time.sleep(1.0)
            os.killpg(process.pid, signal.SIGKILL)


def token_for(env: dict[str, str]) -> str:
    keys = KeyStore(env)
    try:
        _, token = keys.create(TENANT, ["admin"])
    finally:
        keys.close()
    return token


def timed(calls: Sequence[Callable[[], Any]]) -> list[float]:
    latencies: list[float] = []
    for call in calls:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def send_batches(base: str, token: str, batches: Sequence[bytes], clients: int) -> float:
    """POST every batch with ``clients`` keep-alive connections; return the seconds."""
    queue = list(reversed(batches))
    lock = threading.Lock()
    failures: list[int] = []

    def work() -> None:
        with httpx.Client(base_url=base, headers=_auth(token), timeout=60) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                response = client.post(
                    "/v1/events", content=body, headers={"content-type": "application/json"}
                )
                if response.status_code >= 300:
                    failures.append(response.status_code)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        say(f"  ({len(failures)} failed requests: {sorted(set(failures))})")
    return time.perf_counter() - started


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def commit_to_checkpoint(base: str, token: str, rate: int, seconds: float) -> list[float]:
    """Send ``rate`` events/s in batches every 50 ms; watch the checkpoint; for each
    batch, the time from its response to the first checkpoint that covers it."""
    per_batch = max(1, rate // 20)
    events = make_events(int(rate * seconds) + per_batch, secrets.token_hex(3))
    committed: list[tuple[int, float]] = []  # (last seq + 1, commit time)
    covered: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=base, headers=_auth(token), timeout=10) as client:
            while not stop.is_set():
                response = client.get("/v1/transparency/checkpoint")
                if response.status_code == 200:
                    size = int(response.text.split("\n", 2)[1])
                    now = time.perf_counter()
                    for needed, _ in committed:
                        if needed <= size and needed not in covered:
                            covered[needed] = now
                time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    with httpx.Client(base_url=base, headers=_auth(token), timeout=30) as client:
        for number, batch in enumerate(batched(events, per_batch)):
            due = started + number * 0.05
            if due > started + seconds:
                break
            time.sleep(max(0.0, due - time.perf_counter()))
            response = client.post(
                "/v1/events",
                content=b"[" + b",".join(batch) + b"]",
                headers={"content-type": "application/json"},
            )
            records = response.json()["records"]
            committed.append((records[-1]["seq"] + 1, time.perf_counter()))
    deadline = time.perf_counter() + 10
    while len(covered) < len(committed) and time.perf_counter() < deadline:
        time.sleep(0.05)
    stop.set()
    watcher.join()
    return [covered[needed] - at for needed, at in committed if needed in covered]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("VIGIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test"),
    )
    parser.add_argument("--records", type=int, default=50_000, help="Tenant log size.")
    parser.add_argument("--proofs", type=int, default=500, help="Proofs of each kind.")
    parser.add_argument("--bundle", type=int, default=10_000, help="Records in the bundle.")
    parser.add_argument("--http-events", type=int, default=50_000, help="Batch ingest events.")
    parser.add_argument("--rate", type=int, default=2000, help="Events/s for step 7.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of step 7.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    url = args.postgres_url
    base_env = Settings(database_url=url, encryption_key=None).ledger_env()
    signer = Signer.generate(ORIGIN)
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-proofs-"))
    key_file = workdir / "signing.key"
    signer.write(key_file)
    rng = random.Random(11)
    with connect(base_env) as admin, fresh_schema(admin, "proofs") as schema:
        env = ledger_env(url, schema)
        ledger = Ledger(env, Limits())
        follower_store: FollowerStore | None = None
        try:
            say(f"1. writing a log of {args.records:,} records ...")
            load(ledger, args.records, "p")
            size = ledger.size(TENANT)
            log_id = tenant_log_id(TENANT)

            say("2. tree follower")
            seconds, log, follower_store = follow(env, ledger, signer)
            # As autovacuum leaves a log (it is off on the development machine): without
            # it the first reads of fresh rows write them again to set their hint bits.
            vacuum(admin, schema)
            bare = bare_hashing(ledger, size)
            say(
                f"   tree follower: {size / seconds:,.0f} records/s "
                f"(bare SHA-256 of leaves and nodes over the same leaves: "
                f"{size / bare:,.0f} records/s)"
            )

            say(f"3. proofs, {args.proofs} of each kind, tree of {size:,}")
            reader = TreeReader(log.store, log.tile_cache)
            seqs = [rng.randrange(size) for _ in range(args.proofs)]
            olds = [rng.randrange(1, size) for _ in range(args.proofs)]
            inclusion = timed([lambda s=s: reader.inclusion(TENANT, s) for s in seqs])
            consistency = timed([lambda o=o: reader.consistency(TENANT, o) for o in olds])
            say(f"   in process: inclusion {ms(inclusion)}; consistency {ms(consistency)}")
            token = token_for(env)
            with (
                # Followers off: a server just started on a large log would spend the
                # run catching up the read model and the others, not serving proofs.
                server(with_schema(url, schema), key_file, VIGIL_READMODEL_FOLLOW="false") as base,
                httpx.Client(base_url=base, headers=_auth(token)) as client,
            ):
                # A server's steady state: connections, statements and the upper
                # tiles warm (the timed proofs are of other seqs).
                for seq in rng.sample(range(size), 50):
                    client.get(f"/v1/transparency/proof/inclusion?seq={seq}")
                health = timed([lambda: client.get("/healthz") for _ in range(args.proofs)])
                http_inclusion = timed(
                    [
                        lambda s=s: client.get(f"/v1/transparency/proof/inclusion?seq={s}")
                        for s in seqs
                    ]
                )
                http_consistency = timed(
                    [
                        lambda o=o: client.get(f"/v1/transparency/proof/consistency?old={o}")
                        for o in olds
                    ]
                )
            say(
                f"   over HTTP: inclusion {ms(http_inclusion)}; consistency "
                f"{ms(http_consistency)} (baseline GET /healthz: {ms(health)})"
            )

            say("4. verification (what `vigil verify` runs: chain and tree in one pass)")
            total = ledger.size(TENANT)
            pages = timed([lambda: sum(1 for _ in ledger.ledger_recorder.checked_pages(log_id))])
            chain = timed([lambda: verify_tenant(ledger, TENANT)])
            both = timed([lambda: verify_both(ledger, log, signer, jobs=1)])
            both_jobs = timed([lambda: verify_both(ledger, log, signer, jobs=2)])
            say(
                f"   chain and tree: {total / both[0]:,.0f} events/s in one process, "
                f"{total / both_jobs[0]:,.0f}/s with --jobs 2 (chain alone: "
                f"{total / chain[0]:,.0f}/s; reading the log's pages alone: "
                f"{total / pages[0]:,.0f}/s) (target >= 150,000/s)"
            )

            count = min(args.bundle, size)
            say(f"5. evidence bundle of {count:,} records")
            started = time.perf_counter()
            parts = gather(
                ledger, reader, TENANT, range(size - count, size), origin=f"{ORIGIN}/{TENANT}",
                selection={"from_seq": size - count, "to_seq": size - 1},
                verifier_keys=[signer.verifier.vkey],
            )  # fmt: skip
            exported = export_bundle(workdir / "bundle.zip", **parts)
            export_seconds = time.perf_counter() - started
            started = time.perf_counter()
            report = verify_bundle(workdir / "bundle.zip", [signer.verifier])
            verify_seconds = time.perf_counter() - started
            assert report.count == count
            say(
                f"   export {export_seconds:.2f} s, offline verification {verify_seconds:.2f} s "
                f"({(workdir / 'bundle.zip').stat().st_size / 1e6:.1f} MB, "
                f"sha256 {exported.sha256[:16]}...)"
            )
        finally:
            if follower_store is not None:
                follower_store.close()
            ledger.close()

    say(f"6. batch ingest over HTTP, {args.http_events:,} events in batches of 500, 4 clients")
    batches = [
        b"[" + b",".join(batch) + b"]"
        for batch in batched(make_events(args.http_events, secrets.token_hex(3)), 500)
    ]
    rates: dict[str, float] = {}
    for label, key in (("without the tree follower", None), ("with the tree follower", key_file)):
        with connect(base_env) as admin, fresh_schema(admin, "ingest") as schema:
            env = ledger_env(url, schema)
            token = token_for(env)
            with server(with_schema(url, schema), key) as base:
                rates[label] = args.http_events / send_batches(base, token, batches, 4)
        say(f"   {label}: {rates[label]:,.0f} events/s")

    say(f"7. commit to signed checkpoint at {args.rate:,} events/s for {args.seconds:.0f} s")
    with connect(base_env) as admin, fresh_schema(admin, "latency") as schema:
        env = ledger_env(url, schema)
        token = token_for(env)
        with server(with_schema(url, schema), key_file) as base:
            latencies = commit_to_checkpoint(base, token, args.rate, args.seconds)
    say(f"   {len(latencies)} batches: {ms(latencies)} (target p99 <= 1000 ms)")


if __name__ == "__main__":
    main()
