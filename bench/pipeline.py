"""The whole pipeline: ingest over HTTP with every follower running, beside ingest with
the read model alone, and each follower's lag at a steady rate, in one run.

Run ``python bench/pipeline.py`` (see ``--help``; a short run by default). ``vigil serve``
runs on PostgreSQL, each configuration in a fresh schema, its followers in the worker
process it starts, as in production. Two configurations:

* read model alone: ``VIGIL_INCIDENT_DETECTOR=false``, no signing key, no Graylog, no
  archive (the escalation scheduler, which reads no records, cannot be turned off);
* every follower: the read model, the transparency log (a signing key), Graylog over
  TCP to a GELF input on loopback (a thread of this process that counts the messages),
  the S3 archive to moto's S3 server on loopback (a process of its own, as
  ``bench/archive.py`` starts it; the bucket made by the code of ``vigil archive
  init``), the incident detector with the shipped rules, and the escalation scheduler.

Each of ``--rounds`` runs both configurations, the order swapped every round, because
the machine's speed drifts. In each:

1. Batch ingest: after an untimed warm-up of 2,000 events, ``--events`` events in
   batches of 500 over ``--clients`` keep-alive connections (``bench/proofs.py``'s
   sender); events/s from the first request to the last answer, while the followers
   run. Then how long each follower takes to catch up after the last answer.
2. Steady load: ``--rate`` events/s for ``--seconds``, one batch every 50 ms on one
   connection. A follower's lag is, for each batch, the time from its answer (the
   commit is just before) to the first poll at which the follower's stored position
   (``Follower.position()``, what ``vigil status`` and ``/metrics`` read) covers the
   batch's last record; for the transparency log also to the first signed checkpoint
   that covers it. The positions are polled every ``--poll`` seconds by this process,
   so each lag is late by up to one poll interval. Per-batch lags weigh every record
   alike at a steady rate; sampling ``vigil_follower_lag_seconds`` instead would give
   the age of the oldest waiting record at the sampling instants, which says little
   of a typical record's wait. The batches' notification ids are read back from the
   ledger afterwards, outside the measured path.

The events are a simulated tenant's ordinary days (``incident.simulation``, the
activity ``bench/detect.py`` runs its rules over: logins, replies, exports,
integrations), one stream per run, oldest first. ``bench/ledger.py``'s events are not
used here: about one in sixteen grants the admin role at whatever hour the bench runs,
so the detector would open an incident every twenty events or so, a flood rather than
the steady state this bench is about.

Targets (issue 13): ingest with every follower >= 70% of ingest with the read model
alone; each follower's lag p99 <= 1 s, the archive's <= its segment interval + 5 s.
The script only prints; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import itertools
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archive import start_s3  # type: ignore[import-not-found]  # bench/archive.py
from ledger import (  # type: ignore[import-not-found]  # bench/ledger.py
    batched,
    connect,
    fresh_schema,
    machine_info,
    with_schema,
)
from proofs import (  # type: ignore[import-not-found]  # bench/proofs.py
    ORIGIN,
    TENANT,
    pct,
    send_batches,
    server,
    token_for,
)

from api.archive import bucket_settings
from api.followers import build_followers
from api.read_your_writes import POSITION_HEADER
from api.settings import Settings
from audit_core import Ledger
from audit_core.archive.s3 import ArchiveBucket
from audit_core.followers import Follower, FollowerStore, open_store
from audit_core.transparency import Signer
from audit_core.transparency.follower import TransparencyLog
from incident.simulation import Tenant

INGEST_RATIO_TARGET = 0.70
LAG_TARGET_SECONDS = 1.0
ARCHIVE_MARGIN_SECONDS = 5.0
BUCKET = "vigil-bench-pipeline"
ALONE = "read model alone"
EVERY = "every follower"
CHECKPOINT = "transparency, signed checkpoint"
BATCH = 500
WARMUP = 2000


def say(text: str) -> None:
    print(text, flush=True)


def activity(count: int) -> list[bytes]:
    """The first ``count`` events of a simulated tenant's directory sync and ordinary
    days (about 7,200 events a day, ids unique), ending before today, as JSON."""
    tenant = Tenant.make(TENANT, users=300)
    day = datetime.now(UTC).date() - timedelta(days=2 + count // 5000)
    events = tenant.directory(datetime.combine(day, datetime.min.time(), UTC))
    while len(events) < count:
        day += timedelta(days=1)
        events += tenant.ordinary_day(day)
    return [orjson.dumps(event) for event in events[:count]]


# -- the GELF input ---------------------------------------------------------------------


class GelfInput:
    """A GELF TCP input on loopback that counts the null-terminated messages it receives.

    A thread of this process, where ``bench/graylog.py``'s input is a process that
    reports once, at a count known in advance: here the count is read as it grows.
    Counting costs a ``bytes.count`` per read, next to nothing beside the shipper.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.count = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="gelf-input", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(1 << 20):
                with self._lock:
                    self.count += data.count(b"\x00")

    def close(self) -> None:
        self.listener.close()


# -- configurations ----------------------------------------------------------------------


def configuration(
    name: str, schema: str, key_file: Path, gelf: GelfInput, endpoint: str, segment: float
) -> dict[str, str]:
    """The settings (``Settings`` field names) of a configuration, besides the database."""
    if name == ALONE:
        return {"signing_key_file": "", "incident_detector": "false"}
    return {
        "signing_key_file": str(key_file),
        "graylog_destinations": f"bench=tcp://127.0.0.1:{gelf.port}",
        "archive_bucket": BUCKET,
        "archive_prefix": schema,  # a chain of digests of its own in each run
        "archive_endpoint_url": endpoint,
        "archive_region": "eu-west-1",
        "archive_access_key_id": "bench",
        "archive_secret_access_key": "bench",  # moto's, on loopback
        "archive_retention_days": "1",
        "archive_segment_seconds": str(segment),
        "incident_detector": "true",
    }


def settings_of(db_url: str, config: dict[str, str]) -> Settings:
    """The settings ``vigil serve`` reads from the ``VIGIL_*`` variables ``server`` sets."""
    return Settings(
        database_url=db_url,
        encryption_key=None,
        log_origin=ORIGIN,
        **config,  # type: ignore[arg-type]  # strings, validated as the environment is
    )


def environment(config: dict[str, str]) -> dict[str, str]:
    return {f"VIGIL_{name.upper()}": value for name, value in config.items()}


def wait_until_led(base: str, timeout: float = 60.0) -> list[str]:
    """The followers' names, once ``vigil serve``'s worker process leads every one."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=10) as client:
        while True:
            followers = client.get("/readyz").json().get("followers", {})
            if followers and all(f["leader"] == "elsewhere" for f in followers.values()):
                return sorted(followers)
            if time.monotonic() > deadline:
                raise SystemExit(f"the follower worker did not take the lead: {followers}")
            time.sleep(0.2)


@dataclass
class Observed:
    """What this process reads of a server's followers, as ``vigil status`` does."""

    settings: Settings
    ledger: Ledger = field(init=False)
    store: FollowerStore = field(init=False)
    followers: list[Follower] = field(init=False)

    def __post_init__(self) -> None:
        env = self.settings.ledger_env()
        self.ledger = Ledger(env)
        self.store = open_store(env)
        self.followers = build_followers(self.settings, self.ledger, self.store)

    def head(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0

    def series(self) -> dict[str, Callable[[], int]]:
        """What to poll: each follower's position, and the tenant's signed tree size."""
        polled: dict[str, Callable[[], int]] = {f.name: f.position for f in self.followers}
        for follower in self.followers:
            if isinstance(follower, TransparencyLog):
                polled[CHECKPOINT] = functools.partial(_signed_size, follower)
        return polled

    def close(self) -> None:
        for follower in self.followers:
            follower.close()
        self.store.close()
        self.ledger.close()


def _signed_size(log: TransparencyLog) -> int:
    checkpoint = log.store.latest_checkpoint(TENANT)
    return 0 if checkpoint is None else checkpoint.size


# -- measuring ------------------------------------------------------------------------------


class Poller:
    """Reads each series every ``interval`` seconds in a thread, with the time of each
    reading."""

    def __init__(self, series: dict[str, Callable[[], int]], interval: float):
        self.series = series
        self.interval = interval
        self.times: dict[str, list[float]] = {name: [] for name in series}
        self.values: dict[str, list[int]] = {name: [] for name in series}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, read in self.series.items():
                try:
                    value = read()
                except Exception:
                    self.errors += 1
                    continue
                self.times[name].append(time.perf_counter())
                self.values[name].append(value)
            self._stop.wait(self.interval)

    def latest(self, name: str) -> int:
        values = self.values[name]
        return values[-1] if values else 0

    def reached(self, name: str) -> Callable[[int], float | None]:
        """When the series first held at least a value (None: not while polled)."""
        times = self.times[name]
        highest = list(itertools.accumulate(self.values[name], max))

        def when(needed: int) -> float | None:
            index = bisect.bisect_left(highest, needed)
            return times[index] if index < len(times) else None

        return when


def steady(
    base: str, token: str, events: Sequence[bytes], rate: int, seconds: float
) -> tuple[list[tuple[int, float]], float]:
    """Send ``rate`` events/s for ``seconds``, a batch every 50 ms; (the seq of each
    batch's last record and when its answer arrived), and the rate achieved."""
    per_batch = max(1, rate // 20)
    answered: list[tuple[int, float]] = []
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        started = time.perf_counter()
        for number, batch in enumerate(batched(events, per_batch)):
            due = started + number * per_batch / rate
            if due >= started + seconds:
                break
            time.sleep(max(0.0, due - time.perf_counter()))
            response = client.post("/v1/events", content=b"[" + b",".join(batch) + b"]")
            if response.status_code >= 300:
                raise SystemExit(f"a steady batch failed: {response.status_code} {response.text}")
            answered.append((int(response.headers[POSITION_HEADER]), time.perf_counter()))
        elapsed = time.perf_counter() - started
    return answered, len(answered) * per_batch / elapsed


def notification_ids(ledger: Ledger, after: int) -> dict[int, int]:
    """The tenant's seqs recorded after notification ``after``, to their notification ids."""
    found: dict[int, int] = {}
    while True:
        notes = ledger.ledger_recorder.recorded_after(after, 2000)
        if not notes.ids:
            return found
        for note_id, state in zip(notes.ids, notes.states, strict=True):
            record = ledger.ledger_mapper.decode_recorded(state)["record"]
            if record["tenant"] == TENANT:
                found[record["seq"]] = note_id
        after = notes.ids[-1]


def catch_up(observed: Observed, timeout: float) -> dict[str, float | None]:
    """Seconds until each follower has processed the ledger's head (None: not in time)."""
    head = observed.head()
    started = time.perf_counter()
    done: dict[str, float] = {}
    while len(done) < len(observed.followers) and time.perf_counter() - started < timeout:
        for follower in observed.followers:
            if follower.name not in done and follower.position() >= head:
                done[follower.name] = time.perf_counter() - started
        time.sleep(0.05)
    return {follower.name: done.get(follower.name) for follower in observed.followers}


@dataclass
class Steady:
    rate: float
    """Events/s achieved."""
    events: int
    lags: dict[str, list[float]]
    """Per series, each batch's lag (s)."""
    missing: dict[str, int]
    """Per series, the batches it had not reached when polling stopped."""
    poll_errors: int


def steady_lags(
    args: argparse.Namespace, base: str, token: str, observed: Observed, stream: Sequence[bytes]
) -> Steady:
    """The steady load, and each series' lag for each of its batches."""
    after = observed.head()
    series = observed.series()
    with Poller(series, args.poll) as poller:
        answered, rate = steady(base, token, stream, args.rate, args.seconds)
        # Until every follower has processed the last batch (the archive closes its
        # segment a segment interval after its first record) and a checkpoint covers it.
        head, last_seq = observed.head(), answered[-1][0]
        deadline = time.perf_counter() + args.segment_seconds + 30
        while time.perf_counter() < deadline and any(
            poller.latest(name) < (last_seq + 1 if name == CHECKPOINT else head) for name in series
        ):
            time.sleep(0.1)
    ids = notification_ids(observed.ledger, after)
    lags: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for name in series:
        when = poller.reached(name)
        lags[name], missing[name] = [], 0
        for seq, answer in answered:
            reached = when(seq + 1 if name == CHECKPOINT else ids[seq])
            if reached is None:
                missing[name] += 1
            else:
                lags[name].append(max(0.0, reached - answer))
    per_batch = max(1, args.rate // 20)
    return Steady(rate, len(answered) * per_batch, lags, missing, poller.errors)


@dataclass
class Run:
    config: str
    ingest_rate: float
    caught_up: dict[str, float | None]
    steady: Steady
    gelf_messages: int
    recorded: int


def run(
    args: argparse.Namespace,
    admin: Any,
    config_name: str,
    key_file: Path,
    gelf: GelfInput,
    endpoint: str,
    warmup: Sequence[bytes],
    bodies: Sequence[bytes],
    steady_stream: Sequence[bytes],
) -> Run:
    """One configuration in a fresh schema: batch ingest, then the steady load."""
    url: str = args.postgres_url
    with fresh_schema(admin, "pipeline") as schema:
        db_url = with_schema(url, schema)
        config = configuration(config_name, schema, key_file, gelf, endpoint, args.segment_seconds)
        settings = settings_of(db_url, config)
        token = token_for(settings.ledger_env())
        with server(db_url, None, **environment(config)) as base:
            names = wait_until_led(base)
            say(f"  {config_name}: {', '.join(names)}")
            observed = Observed(settings)
            try:
                gelf_before = gelf.count
                send_batches(base, token, warmup, args.clients)
                catch_up(observed, timeout=60 + args.segment_seconds)
                ingest_rate = args.events / send_batches(base, token, bodies, args.clients)
                caught_up = catch_up(observed, timeout=300 + args.segment_seconds)
                last, seconds = max(caught_up.items(), key=lambda item: item[1] or float("inf"))
                say(
                    f"    batch ingest {ingest_rate:,.0f} events/s; every follower caught up "
                    f"{_seconds(seconds)} after the last answer (last: {last})"
                )
                steady = steady_lags(args, base, token, observed, steady_stream)
                p99s = ", ".join(
                    f"{name} {_ms(pct(values, 0.99)) if values else 'n/a'}"
                    for name, values in steady.lags.items()
                )
                say(f"    steady {steady.rate:,.0f} events/s for {args.seconds:g} s; p99 {p99s}")
                recorded = sum(observed.ledger.size(t) for t in observed.ledger.tenants())
                return Run(
                    config_name,
                    ingest_rate,
                    caught_up,
                    steady,
                    gelf.count - gelf_before,
                    recorded,
                )
            finally:
                observed.close()


# -- reporting --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def _seconds(seconds: float | None) -> str:
    return "not within the time allowed" if seconds is None else f"{seconds:.1f} s"


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def lag_target(name: str, segment: float) -> float | None:
    if name == "incident-escalation":
        return None  # reads no records: its position is the ledger's head
    return segment + ARCHIVE_MARGIN_SECONDS if name == "archive" else LAG_TARGET_SECONDS


def report(args: argparse.Namespace, info: list[tuple[str, str]], runs: list[Run]) -> None:
    by_config = {name: [r for r in runs if r.config == name] for name in (ALONE, EVERY)}
    rates = {
        name: len(chosen) * args.events / sum(args.events / r.ingest_rate for r in chosen)
        for name, chosen in by_config.items()
    }
    say("")
    say(
        f"Vigil pipeline: `vigil serve` on PostgreSQL, {args.rounds} round(s) of each "
        "configuration, alternately"
    )
    for key, value in info:
        say(f"  {key + ':':<15}{value}")
    say(f"  {'Load average:':<15}{' '.join(f'{load:.2f}' for load in os.getloadavg())} (at end)")
    say("")
    say(
        f"batch ingest over HTTP, {args.events:,} events in batches of {BATCH}, "
        f"{args.clients} connections (events/s)"
    )
    header = "".join(f"{f'round {n + 1}':>11}" for n in range(args.rounds))
    say(f"  {'':<20}{header}{'all rounds':>13}")
    for name, chosen in by_config.items():
        cells = "".join(f"{r.ingest_rate:>11,.0f}" for r in chosen)
        say(f"  {name:<20}{cells}{rates[name]:>13,.0f}")
    ratio = rates[EVERY] / rates[ALONE]
    say(
        f"  every follower / read model alone: {ratio:.1%} (target >= "
        f"{INGEST_RATIO_TARGET:.0%}: {verdict(ratio >= INGEST_RATIO_TARGET)})"
    )
    for chosen in by_config.values():
        for number, r in enumerate(chosen, start=1):
            slow = ", ".join(f"{name} {_seconds(s)}" for name, s in r.caught_up.items())
            say(f"  caught up after the last answer, {r.config}, round {number}: {slow}")

    steady_rates = ", ".join(f"{r.steady.rate:,.0f}" for r in runs)
    say("")
    say(
        f"lag at {args.rate:,} events/s for {args.seconds:g} s per run (achieved: "
        f"{steady_rates} events/s), commit (the write's answer) to the follower's stored "
        f"position, per batch of {max(1, args.rate // 20)}, polled every "
        f"{args.poll * 1000:.0f} ms"
    )
    say(
        f"  {'follower':<32}{'alone p50':>11}{'p99':>9}{'every p50':>12}{'p99':>9}"
        f"{'max':>9}   target"
    )
    names = sorted({name for r in runs for name in r.steady.lags})
    for name in names:
        pooled = {
            config: [lag for r in chosen for lag in r.steady.lags.get(name, [])]
            for config, chosen in by_config.items()
        }
        cells = ""
        for config in (ALONE, EVERY):
            values = pooled[config]
            width = (11, 9) if config == ALONE else (12, 9)
            if values:
                cells += f"{_ms(pct(values, 0.5)):>{width[0]}}{_ms(pct(values, 0.99)):>{width[1]}}"
            else:
                cells += f"{'':>{width[0]}}{'':>{width[1]}}"
        every = pooled[EVERY]
        cells += f"{_ms(max(every)) if every else '':>9}"
        target = lag_target(name, args.segment_seconds)
        if target is None:
            goal = "none: reads no records, its position is the head (the method's floor)"
        else:
            p99 = pct(every, 0.99) if every else float("inf")
            goal = f"p99 <= {target:g} s: {verdict(p99 <= target)}"
        say(f"  {name:<32}{cells}   {goal}")
        lost = sum(r.steady.missing.get(name, 0) for r in runs)
        if lost:
            say(f"    {lost} batch(es) never reached by {name} while polled")
    for r in runs:
        if r.config == EVERY:
            sent = WARMUP + args.events + r.steady.events
            say(
                f"  GELF input: {r.gelf_messages:,} messages received; {sent:,} events sent, "
                f"{r.recorded:,} records in the ledger (incidents' own records included)"
            )
        if r.steady.poll_errors:
            say(f"  {r.steady.poll_errors} position reads failed in a {r.config} run")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("VIGIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test"),
        help="server to run against (env VIGIL_BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--events", type=int, default=50_000, help="batch ingest size")
    parser.add_argument("--clients", type=int, default=4, help="connections for batch ingest")
    parser.add_argument("--rate", type=int, default=2000, help="events/s of the steady load")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady load duration")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration")
    parser.add_argument(
        "--segment-seconds", type=float, default=5.0, help="archive segment interval"
    )
    parser.add_argument("--poll", type=float, default=0.02, help="position poll interval (s)")
    args = parser.parse_args(argv)
    if min(args.events, args.rate, args.rounds, args.clients) < 1 or args.seconds <= 0:
        parser.error("--events, --rate, --rounds, --clients and --seconds must be positive")
    return args


@contextlib.contextmanager
def local_s3(config: dict[str, str]) -> Iterator[str]:
    """moto's S3 server on loopback, with the archive's bucket made as `vigil archive
    init` makes it."""
    process, endpoint = start_s3()
    try:
        settings = Settings(encryption_key=None, **{**config, "archive_endpoint_url": endpoint})  # type: ignore[arg-type]
        ArchiveBucket(bucket_settings(settings)).create()
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    base_env = Settings(database_url=args.postgres_url, encryption_key=None).ledger_env()
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-pipeline-"))
    key_file = workdir / "signing.key"
    Signer.generate(ORIGIN).write(key_file)
    steady_count = int(args.rate * args.seconds) + args.rate
    say(f"generating {WARMUP + args.events + steady_count:,} events ...")
    # The same stream in every run: each run has a fresh schema, where its ids are new.
    stream = activity(WARMUP + args.events + steady_count)
    warmup, bodies = (
        [b"[" + b",".join(batch) + b"]" for batch in batched(part, BATCH)]
        for part in (stream[:WARMUP], stream[WARMUP : WARMUP + args.events])
    )
    steady_stream = stream[WARMUP + args.events :]
    gelf = GelfInput()
    runs: list[Run] = []
    bucket_config = configuration(EVERY, "setup", key_file, gelf, "", args.segment_seconds)
    try:
        with local_s3(bucket_config) as endpoint, connect(base_env) as admin:
            info = machine_info(admin)
            for number in range(args.rounds):
                order = [ALONE, EVERY] if number % 2 == 0 else [EVERY, ALONE]
                say(f"round {number + 1} of {args.rounds}")
                for name in order:
                    runs.append(
                        run(
                            args,
                            admin,
                            name,
                            key_file,
                            gelf,
                            endpoint,
                            warmup,
                            bodies,
                            steady_stream,
                        )
                    )
    finally:
        gelf.close()
    report(args, info, runs)


if __name__ == "__main__":
    main()
