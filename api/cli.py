"""The ``vigil`` command line: a thin layer over the ledger's application methods.

Exit codes: 0 done, 1 a chain failed verification, 2 bad input or usage,
3 not found, 4 refused (an event id reused with other content), 5 storage unavailable.
"""

from __future__ import annotations

import base64
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from eventsourcing.persistence import PersistenceError
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from api.settings import Settings
from audit_core import (
    DuplicateEventIdError,
    EventNotFoundError,
    InvalidEventError,
    Ledger,
    TenantNotFoundError,
    verify_tenant,
)
from audit_core.schema import TENANT_PATTERN, normalise_batch

app = typer.Typer(
    name="vigil",
    help="Vigil: hash-chained audit trails you can verify without trusting the server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

TenantOption = Annotated[
    str, typer.Option("--tenant", "-t", help=f"Tenant whose log to use ({TENANT_PATTERN}).")
]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def open_ledger() -> Iterator[Ledger]:
    """Build the ledger from ``VIGIL_*`` settings; turn its errors into exit codes."""
    try:
        settings = Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"VIGIL_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        fail(f"bad configuration: {problems}", 2)
    try:
        ledger = Ledger(settings.ledger_env(), settings.limits())
    except PersistenceError as error:
        fail(f"cannot open the database at {settings.database_url}: {error}", 5)
    try:
        yield ledger
    except InvalidEventError as error:
        fail(str(error), 2)
    except DuplicateEventIdError as error:
        fail(str(error), 4)
    except (EventNotFoundError, TenantNotFoundError) as error:
        fail(str(error), 3)
    except PersistenceError as error:
        fail(f"storage error: {error}", 5)
    finally:
        ledger.close()


def parse_events(text: str, source: str) -> list[tuple[str, Any]]:
    """(where, event) pairs from a JSON object, a JSON array, or JSON Lines."""
    stripped = text.lstrip()
    if not stripped:
        fail(f"{source}: no events", 2)
    if stripped[0] in "[{":
        try:
            whole = orjson.loads(text)
        except orjson.JSONDecodeError:
            whole = None  # more than one value: JSON Lines
        if isinstance(whole, list):
            return [(f"{source}: element {i}", event) for i, event in enumerate(whole)]
        if isinstance(whole, dict):
            return [(f"{source}: line 1", whole)]
    events: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append((f"{source}: line {number}", orjson.loads(line)))
        except orjson.JSONDecodeError as error:
            fail(f"{source}: line {number}: not valid JSON: {error}", 2)
    return events


def _located(error: InvalidEventError, where: list[str], offset: int) -> str:
    return "\n".join(
        f"{where[offset + p.index]}"
        + (f", field '{p.field}'" if p.field else "")
        + f": {p.message}"
        for p in error.problems[:20]
    ) + (f"\n... and {len(error.problems) - 20} more" if len(error.problems) > 20 else "")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


@app.command()
def record(
    path: Annotated[
        str, typer.Argument(help="File of events (JSON object, array or JSON Lines); - for stdin.")
    ] = "-",
    tenant: TenantOption = "default",
    batch_size: Annotated[int, typer.Option(min=1, help="Events per atomic batch.")] = 500,
) -> None:
    """Record audit events. The whole input is validated before anything is recorded."""
    source = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {source}: {error}", 2)
    located = parse_events(text, source)
    where = [w for w, _ in located]
    events = [e for _, e in located]
    with open_ledger() as ledger:
        batch_size = min(batch_size, ledger.limits.max_batch_events)
        for start in range(0, len(events), batch_size):
            try:
                normalise_batch(
                    events[start : start + batch_size], tenant, datetime.now(UTC), ledger.limits
                )
            except InvalidEventError as error:
                fail(f"nothing recorded:\n{_located(error, where, start)}", 2)
        before = ledger.size(tenant)
        new = 0
        last: dict[str, Any] = {}
        with _progress() as progress:
            task = progress.add_task(f"recording to {tenant}", total=len(events))
            for start in range(0, len(events), batch_size):
                try:
                    records = ledger.record(tenant, events[start : start + batch_size])
                except DuplicateEventIdError as error:
                    fail(f"{where[start + error.index]}: {error}", 4)
                new += sum(1 for r in records if r["seq"] >= before)
                last = records[-1]
                progress.advance(task, len(records))
        out.print(
            f"recorded {new} new event(s), {len(events) - new} already present; "
            f"tenant {tenant} last seq {last['seq']} hash {last['hash']}"
        )


def _print_record(record: dict[str, Any]) -> None:
    out.print(orjson.dumps(record).decode(), markup=False)


@app.command()
def tail(
    tenant: TenantOption = "default",
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, max=10_000)] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --follow.")] = 1.0,
) -> None:
    """Print the newest records of a tenant's log as JSON Lines."""
    with open_ledger() as ledger:
        records = ledger.latest(tenant, lines)
        for item in records:
            _print_record(item)
        next_seq = records[-1]["seq"] + 1 if records else 0
        while follow:
            time.sleep(interval)
            for item in ledger.read(tenant, from_seq=next_seq, limit=1000):
                _print_record(item)
                next_seq = item["seq"] + 1


@app.command()
def show(
    event_id: Annotated[str | None, typer.Argument(help="Event id.")] = None,
    tenant: TenantOption = "default",
    seq: Annotated[int | None, typer.Option(min=0, help="Show by position instead of id.")] = None,
) -> None:
    """Print one record, with its seq, prev_hash and hash."""
    if (event_id is None) == (seq is None):
        fail("give either an event id or --seq", 2)
    with open_ledger() as ledger:
        found = (
            ledger.get(tenant, event_id)
            if event_id is not None
            else ledger.get_seq(tenant, seq or 0)
        )
        out.print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode(), markup=False)


@app.command()
def tenants() -> None:
    """List tenants with their log size and head hash."""
    with open_ledger() as ledger:
        for name in ledger.tenants():
            size, head = ledger.head(name)
            out.print(f"{name}\t{size}\t{head}")


@app.command()
def verify(
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", "-t", help="Only these tenants (repeatable).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON report per tenant.")
    ] = False,
) -> None:
    """Recompute every chain from storage; report the first bad seq of each tenant."""
    with open_ledger() as ledger:
        names = tenant or ledger.tenants()
        total = sum(ledger.size(name) for name in names)
        reports = []
        with _progress() as progress:
            task = progress.add_task("verifying", total=total)
            for name in names:
                reports.append(verify_tenant(ledger, name, lambda n: progress.advance(task, n)))
    for report in reports:
        if json_output:
            problem = report.problem
            out.print(
                orjson.dumps(
                    {
                        "tenant": report.tenant,
                        "ok": report.ok,
                        "records": report.records,
                        "head_hash": report.head_hash,
                        "first_bad_seq": problem.seq if problem else None,
                        "reason": problem.reason.value if problem else None,
                        "detail": problem.detail if problem else None,
                    }
                ).decode(),
                markup=False,
            )
        elif report.problem is None:
            out.print(f"ok      {report.tenant}: {report.records} records, head {report.head_hash}")
        else:
            out.print(
                f"BROKEN  {report.tenant}: first bad seq {report.problem.seq} "
                f"({report.problem.reason.value}): {report.problem.detail}",
                markup=False,
            )
    if not reports:
        err.print("no tenant logs to verify")
    if any(not r.ok for r in reports):
        raise typer.Exit(1)


@app.command("new-encryption-key")
def new_encryption_key() -> None:
    """Print a fresh AES-256 key for VIGIL_ENCRYPTION_KEY."""
    out.print(base64.b64encode(secrets.token_bytes(32)).decode())


def main() -> None:
    app()
