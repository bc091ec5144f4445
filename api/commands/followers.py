"""Commands that run and inspect the ledger's followers: ``vigil worker``, ``vigil
status``, ``vigil rebuild``, ``vigil followers resume|replay``."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import orjson
import typer

from api.cli import _progress, err, fail, load_settings, open_ledger, out
from api.followers import UnknownFollowerError, build_followers
from api.runtime import tuned_for_service
from api.settings import Settings
from audit_core import Ledger
from audit_core.followers import (
    Backoff,
    Follower,
    FollowerRunner,
    FollowerStore,
    Sink,
    Worker,
    follower_status,
    open_store,
)

log = logging.getLogger(__name__)

followers_app = typer.Typer(help="Inspect and steer the ledger's followers.")


@contextmanager
def opened_followers(
    settings: Settings, only: list[str] | None = None, *, read_only: bool = False
) -> Iterator[tuple[Ledger, FollowerStore, list[Follower]]]:
    with open_ledger(settings, read_only=read_only) as ledger:
        store = open_store(settings.ledger_env())
        try:
            try:
                followers = build_followers(settings, ledger, store, only)
            except UnknownFollowerError as error:
                fail(str(error), 3)
            try:
                yield ledger, store, followers
            finally:
                for follower in followers:
                    follower.close()
        finally:
            store.close()


def run_worker(only: list[str] | None = None, parent_pid: int | None = None) -> None:
    """Run the followers until SIGTERM or SIGINT (or, when started by ``vigil serve``,
    until that process is gone: uvicorn re-raises the signal that stopped it, so its
    own clean-up may never run)."""
    settings = load_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with opened_followers(settings, only) as (ledger, store, followers):
        runners = [
            FollowerRunner(ledger, follower, store, poll_interval=settings.readmodel_poll_seconds)
            for follower in followers
        ]
        worker = Worker(ledger, store, runners)
        err.print(f"following: {', '.join(r.name for r in runners)}")
        with tuned_for_service(collector=settings.tune_collector):
            worker.start()
            try:
                while not stop.wait(1.0):
                    if parent_pid is not None and os.getppid() != parent_pid:
                        break
            finally:
                worker.stop()


class WorkerSupervisor:
    """Keeps a follower worker process running beside ``vigil serve``: one that dies
    (killed, out of memory) is started again after a capped, growing delay."""

    def __init__(self, parent_pid: int, backoff: Backoff | None = None):
        self._parent_pid = parent_pid
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self._stopping = threading.Event()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._thread = threading.Thread(target=self._supervise, name="vigil-supervisor")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            process = multiprocessing.get_context("spawn").Process(
                target=run_worker, args=(None, self._parent_pid), name="vigil-worker"
            )
            process.daemon = True
            process.start()
            self._process = process
            started = time.monotonic()
            process.join()
            if self._stopping.is_set():
                return
            # A worker that ran a while before dying starts again at once.
            failures = 1 if time.monotonic() - started > 60 else failures + 1
            delay = self._backoff.delay(failures - 1)
            log.error(
                "follower worker exited with code %s; starting it again in %.1f s",
                process.exitcode,
                delay,
            )
            self._stopping.wait(delay)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(timeout=15)
        self._thread.join(timeout=15)


OnlyOption = Annotated[
    list[str] | None,
    typer.Option("--only", help="Run only this follower (repeatable); see `vigil status`."),
]


def worker(only: OnlyOption = None) -> None:
    """Run every enabled follower of the ledger in this process (one of several such
    processes leads each follower; the others stand by)."""
    run_worker(only)


def follow() -> None:
    """Run only the query read model's follower (`vigil worker --only readmodel`)."""
    run_worker(["readmodel"])


def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Each follower: position, lag, who leads, and the record it is stopped at."""
    settings = load_settings()
    with opened_followers(settings, read_only=True) as (ledger, store, followers):
        statuses = [follower_status(ledger, follower, store) for follower in followers]
    for s in statuses:
        if as_json:
            out.print(orjson.dumps(s.__dict__ | {"stopped": s.stopped}).decode(), markup=False)
            continue
        state = f"STOPPED at notification {s.stopped_at}: {s.stopped_reason}" if s.stopped else "ok"
        leader = {"here": "leading", "elsewhere": "led by a running process", "none": "not running"}
        out.print(
            f"{s.name:<24} {s.kind:<4}  position {s.position}/{s.head}  "
            f"lag {s.lag_events} events {s.lag_seconds or 0:.1f} s  {leader[s.leader]}  "
            f"errors {s.errors_total}  {state}",
            markup=False,
        )
    if any(s.stopped for s in statuses):
        raise typer.Exit(1)


def _leading_runner(ledger: Ledger, store: FollowerStore, follower: Follower) -> FollowerRunner:
    if not store.leadership.try_lead(follower.name):
        fail(
            f"follower {follower.name} is running (vigil serve or vigil worker); stop it, "
            "then run this again",
            4,
        )
    return FollowerRunner(ledger, follower, store)


def rebuild(
    name: Annotated[str, typer.Argument(help="The follower, as `vigil status` names it.")],
) -> None:
    """Forget a follower's output and position, and process the whole ledger again, with
    progress. Refused while the follower runs."""
    settings = load_settings()
    with opened_followers(settings, [name]) as (ledger, store, (follower,)):
        runner = _leading_runner(ledger, store, follower)
        follower.clear()
        store.states.clear_stop(name)
        total = ledger.recorder.max_notification_id() or 0
        with _progress() as progress:
            task = progress.add_task(f"rebuilding {name}", total=total)
            processed = runner.drain(lambda position: progress.update(task, completed=position))
        if runner.stopped_at is not None:
            state = store.states.state(name)
            fail(
                f"{name} stopped at notification {runner.stopped_at}: {state.stopped_reason}",
                1,
            )
        out.print(f"{name} rebuilt: {processed} records, up to notification {follower.position()}")


def rebuild_read_model() -> None:
    """Empty the query read model and rebuild it from the ledger (`vigil rebuild
    readmodel`)."""
    rebuild("readmodel")


@followers_app.command("resume")
def resume(
    name: Annotated[str, typer.Argument(help="The stopped follower.")],
    skip: Annotated[
        bool,
        typer.Option(
            "--skip",
            help="Go past the record it stopped at without processing it (it stays in "
            "the ledger; this follower's output will lack it).",
        ),
    ] = False,
) -> None:
    """Let a follower stopped at a record try it again (after fixing the cause), or go
    past it with --skip."""
    settings = load_settings()
    with opened_followers(settings, [name]) as (_, store, (follower,)):
        state = store.states.state(name)
        if state.stopped_at is None:
            fail(f"follower {name} is not stopped", 2)
        if skip:
            follower.skip_to(state.stopped_at)
        store.states.clear_stop(name)
    what = f"past notification {state.stopped_at}" if skip else f"at {state.stopped_at}"
    out.print(f"follower {name} resumes {what}")


@followers_app.command("replay")
def replay(
    name: Annotated[str, typer.Argument(help="A sink follower (e.g. graylog:main).")],
    from_position: Annotated[
        int,
        typer.Option(
            "--from", min=0, help="Deliver again every record after this notification id."
        ),
    ],
) -> None:
    """Deliver again, from a position, what a sink has delivered (its receiver lost it);
    for a view, use `vigil rebuild`."""
    settings = load_settings()
    with opened_followers(settings, [name]) as (ledger, store, (follower,)):
        if not isinstance(follower, Sink):
            fail(f"{name} is a view; rebuild it with `vigil rebuild {name}`", 2)
        _leading_runner(ledger, store, follower)
        store.states.rewind(name, min(from_position, follower.position()))
        store.leadership.resign(name)
    out.print(f"{name} will deliver again every record after notification {from_position}")


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(follow)
    app.command()(status)
    app.command()(rebuild)
    app.command("rebuild-read-model")(rebuild_read_model)
    app.add_typer(followers_app, name="followers")
