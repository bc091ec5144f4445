"""How fast the Graylog shipper ships, beside the raw socket rate of the same payloads.

Run ``python bench/graylog.py`` (see ``--help``; a short run by default). Every figure
is measured in this run against GELF inputs in a separate process (so that they do not
compete with the shipper for the GIL):

1. TCP: the shipper (``FollowerRunner.drain`` of a ``GraylogShipper``: read the ledger's
   pages, decode, build and pack GELF, write) beside a raw ``sendall`` of the very same
   packed messages, 1,000 per write, on one connection. Both end when the input has
   counted every message.
2. HTTP: the same, one message per request (Graylog's plain GELF HTTP input) and 500 per
   request (bulk receiving), beside raw ``httpx`` posts of the same bodies. The input is
   Python's ``http.server``, so the figures compare the two senders, not Graylog.
3. Lag: the shipper running (as in ``vigil worker``) while a writer process (as the
   API would be) records a steady 2,000 events/s, 20 every 10 ms; lag is the input's
   receipt time minus each record's ``received_at`` (stamped just before its commit),
   as p50/p99/max, beside the follower's poll interval (on SQLite a new record waits
   up to one interval; on PostgreSQL the ledger's NOTIFY wakes the shipper).
4. What building and packing one GELF message costs, beside graypy's own packer
   (``BaseGELFHandler._pack_gelf_dict``) of the same messages.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
from graypy.handler import BaseGELFHandler

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import connect, fresh_schema, with_schema  # type: ignore[import-not-found]

from api.settings import Settings
from audit_core import Ledger
from audit_core.followers import FollowerRunner, Worker, open_store
from audit_core.graylog import GraylogShipper, MessageBuilder, MessageOptions, parse_destinations

# -- the GELF input, in its own process ----------------------------------------------


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class _Counter:
    def __init__(self, expect: int, lag: bool):
        self.expect = expect
        self.lag = lag
        self.count = 0
        self.lags: list[float] = []
        self.lock = threading.Lock()

    def add(self, frames: list[bytes]) -> None:
        now = time.time()
        with self.lock:
            self.count += len(frames)
            if self.lag:
                self.lags.extend(now - _epoch(orjson.loads(f)["_received_at"]) for f in frames)
            if self.count >= self.expect:
                print(orjson.dumps({"end": now, "count": self.count, "lags": self.lags}).decode())
                sys.stdout.flush()
                self.count = -(10**12)  # report once


def receive(kind: str, expect: int, lag: bool) -> None:
    import socket

    counter = _Counter(expect, lag)
    if kind == "tcp":
        listener = socket.create_server(("127.0.0.1", 0))
        print(listener.getsockname()[1], flush=True)

        def read(connection: socket.socket) -> None:
            buffer = b""
            while data := connection.recv(1 << 20):
                frames = (buffer + data).split(b"\x00")
                buffer = frames.pop()
                counter.add(frames if lag else [b""] * len(frames))

        while True:
            connection, _ = listener.accept()
            threading.Thread(target=read, args=(connection,), daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers["Content-Encoding"] == "gzip":
                body = gzip.decompress(body)
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            counter.add([line for line in body.split(b"\n") if line])

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Input:
    """A GELF input process that reports once it has counted ``expect`` messages."""

    def __init__(self, kind: str, expect: int, lag: bool = False):
        command = [sys.executable, __file__, "--receive", kind, "--expect", str(expect)]
        self.process = subprocess.Popen(
            [*command, *(["--lag"] if lag else [])], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def result(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        result: dict[str, Any] = orjson.loads(line)
        return result


# -- the runs ---------------------------------------------------------------------------


def record(ledger: Ledger, count: int, prefix: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for start in range(0, count, 1000):
        records += ledger.record(
            "bench",
            [
                {
                    "id": f"{prefix}-{index}",
                    "occurred_at": "2026-01-01T12:00:00Z",
                    "actor": {"id": f"u-{index % 97}", "type": "user", "ip": "203.0.113.7"},
                    "action": "conversation.assign",
                    "target": {"type": "conversation", "id": f"c-{index}", "name": "Refund"},
                    "outcome": ("success", "failure", "denied")[index % 3],
                    "source": "console",
                    "metadata": {"workspace": "support-emea", "queue": {"name": "l2", "n": index}},
                }
                for index in range(start, min(count, start + 1000))
            ],
        )
    return records


def ship(
    settings: Settings, ledger: Ledger, url: str, name: str, last: int, **options: Any
) -> float:
    """Ship the ``last`` records of the ledger to ``url`` as a new follower; return
    when it started."""
    (destination,) = parse_destinations(orjson.dumps({name: {"url": url, **options}}).decode())
    store = open_store(settings.ledger_env())
    shipper = GraylogShipper(destination, BUILDER, store.positions)
    runner = FollowerRunner(ledger, shipper, store, page_size=1000)
    shipper.skip_to((ledger.recorder.max_notification_id() or 0) - last)
    try:
        start = time.time()
        runner.drain()
        return start
    finally:
        shipper.close()
        store.close()


BUILDER = MessageBuilder(MessageOptions(host="bench"))


def tcp(settings: Settings, ledger: Ledger, payloads: list[bytes], run: int) -> tuple[float, float]:
    import socket

    count = len(payloads)
    receiver = Input("tcp", count)
    start = time.time()
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        for offset in range(0, count, 1000):
            sock.sendall(b"\x00".join(payloads[offset : offset + 1000]) + b"\x00")
        raw = count / (receiver.result()["end"] - start)
    receiver = Input("tcp", count)
    start = ship(settings, ledger, f"tcp://127.0.0.1:{receiver.port}", f"tcp{run}", count)
    shipped = count / (receiver.result()["end"] - start)
    return raw, shipped


def http(
    settings: Settings, ledger: Ledger, payloads: list[bytes], run: int, batch: int
) -> tuple[float, float]:
    count = len(payloads)
    receiver = Input("http", count)
    url = f"http://127.0.0.1:{receiver.port}/gelf"
    with httpx.Client() as client:
        start = time.time()
        for offset in range(0, count, batch):
            body = b"\n".join(payloads[offset : offset + batch])
            assert client.post(url, content=body).status_code == 202
    raw = count / (receiver.result()["end"] - start)
    receiver = Input("http", count)
    url = f"http://127.0.0.1:{receiver.port}/gelf"
    start = ship(settings, ledger, url, f"http{batch}-{run}", count, batch=batch)
    shipped = count / (receiver.result()["end"] - start)
    return raw, shipped


def lag(settings: Settings, ledger: Ledger, rate: int, seconds: float, poll: float) -> list[float]:
    """Lags (s) of every record written at ``rate``/s for ``seconds`` while shipping."""
    receiver = Input("tcp", int(rate * seconds), lag=True)
    (destination,) = parse_destinations(f"lag=tcp://127.0.0.1:{receiver.port}")
    store = open_store(settings.ledger_env())
    shipper = GraylogShipper(destination, BUILDER, store.positions)
    runner = FollowerRunner(ledger, shipper, store, poll_interval=poll)
    # As in `vigil worker`: woken by the ledger's NOTIFY on PostgreSQL, polling on SQLite.
    worker = Worker(ledger, store, [runner])
    # Start after what the throughput runs recorded, as a worker that has caught up.
    shipper.skip_to(ledger.recorder.max_notification_id() or 0)
    worker.start()
    # The writer is another process, as the API is beside `vigil worker`.
    writer = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--write",
            settings.database_url,
            "--lag-rate",
            str(rate),
            "--lag-seconds",
            str(seconds),
        ]
    )
    try:
        lags: list[float] = receiver.result()["lags"]
        assert writer.wait() == 0
        return lags
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        worker.stop()
        shipper.close()
        store.close()


def write(url: str, rate: int, seconds: float) -> None:
    """Record ``rate`` events/s for ``seconds``, a batch every 10 ms."""
    settings = Settings(database_url=url, encryption_key=None)
    ledger = Ledger(settings.ledger_env(), settings.limits())
    count = int(rate * seconds)
    step = max(1, rate // 100)
    try:
        start = time.monotonic()
        for index in range(0, count, step):
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
            record_slice(ledger, index, min(step, count - index))
    finally:
        ledger.close()


def record_slice(ledger: Ledger, start: int, count: int) -> None:
    ledger.record(
        "lag",
        [
            {
                "id": f"lag-{index}",
                "occurred_at": "2026-01-01T12:00:00Z",
                "actor": {"id": "u-1", "type": "user"},
                "action": "session.refresh",
                "outcome": "success",
                "source": "api",
            }
            for index in range(start, start + count)
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="TCP run size")
    parser.add_argument("--http-events", type=int, default=3_000, help="HTTP run size")
    parser.add_argument("--runs", type=int, default=2, help="runs of each, interleaved")
    parser.add_argument("--lag-seconds", type=float, default=5.0)
    parser.add_argument("--lag-rate", type=int, default=2_000, help="events/s written")
    parser.add_argument("--poll", type=float, default=0.05, help="follower poll interval (s)")
    parser.add_argument(
        "--database-url",
        default="",
        help="postgresql://... to run on a fresh schema of it (default: a temporary SQLite file)",
    )
    parser.add_argument("--receive", choices=["tcp", "http"], help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lag", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write(args.write, args.lag_rate, args.lag_seconds)
        return
    if args.receive:
        receive(args.receive, args.expect, args.lag)
        return
    with tempfile.TemporaryDirectory() as directory, database(args, directory) as url:
        settings = Settings(database_url=url, encryption_key=None)
        ledger = Ledger(settings.ledger_env(), settings.limits())
        try:
            bench(args, settings, ledger)
        finally:
            ledger.close()


@contextmanager
def database(args: argparse.Namespace, directory: str) -> Iterator[str]:
    """A temporary SQLite file, or a fresh schema of the PostgreSQL database given."""
    if not args.database_url:
        yield f"sqlite:///{directory}/bench.db"
        return
    admin_env = Settings(database_url=args.database_url).ledger_env()
    with connect(admin_env) as admin, fresh_schema(admin, "graylog") as schema:
        yield with_schema(args.database_url, schema)


def bench(args: argparse.Namespace, settings: Settings, ledger: Ledger) -> None:
    print(f"database: {settings.redacted_database_url()}; {os.cpu_count()} CPUs")
    records = record(ledger, args.events, "tp")
    payloads = [BUILDER.pack(r) for r in records]
    size = statistics.mean(len(p) for p in payloads)
    print(f"{len(payloads)} messages of {size:.0f} bytes on average")
    sample = records[:2000]
    started = time.perf_counter()
    messages = [BUILDER.message(r) for r in sample]
    built = time.perf_counter()
    for message in messages:
        orjson.dumps(message)
    packed = time.perf_counter()
    for message in messages:
        BaseGELFHandler._pack_gelf_dict(message)
    graypy = time.perf_counter()
    per = 1e6 / len(sample)
    print(
        f"GELF message: built in {(built - started) * per:.1f} µs, packed in "
        f"{(packed - built) * per:.1f} µs (graypy's packer: {(graypy - packed) * per:.1f} µs)\n"
    )
    print(f"{'transport':<22}{'raw send msg/s':>16}{'shipper msg/s':>16}{'shipper/raw':>13}")
    for run in range(args.runs):
        raw, shipped = tcp(settings, ledger, payloads, run)
        print(f"{'tcp':<22}{raw:>16,.0f}{shipped:>16,.0f}{shipped / raw:>12.0%}")
        for batch in (1, 500):
            raw, shipped = http(settings, ledger, payloads[-args.http_events :], run, batch)
            label = f"http, {batch} per request"
            print(f"{label:<22}{raw:>16,.0f}{shipped:>16,.0f}{shipped / raw:>12.0%}")
    lags = sorted(lag(settings, ledger, args.lag_rate, args.lag_seconds, args.poll))
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    print(
        f"\nlag commit -> receipt at {args.lag_rate:,} events/s for {args.lag_seconds:g} s "
        f"over tcp ({len(lags)} events): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {lags[-1] * 1000:.0f} ms; poll interval {args.poll * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
